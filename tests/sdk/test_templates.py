"""SDK 1.1.1's template calls (not collected under 0.1.10): `SandboxManagerSync.create_template`,
`get_template`, `list_templates`, `delete_template` and `SandboxSync.create_from_template`,
unmodified, against sandboxd's templates. Writing a template needs the admin role (the API key);
creating a sandbox from a public one is any user's (the run's own credential)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from opensandbox import SandboxSync
from opensandbox.exceptions import SandboxApiException
from opensandbox.models.templates import CreateTemplateRequest, TemplateFilter
from opensandbox.sync.manager import SandboxManagerSync

from conftest import BUSYBOX_IMAGE, make_config
from helpers import sh


@pytest.fixture
def admin(sandboxd):
    manager = SandboxManagerSync.create(connection_config=make_config(sandboxd, "direct", api_key=sandboxd.api_key))
    yield manager
    manager.close()


def test_template_crud_through_the_sdk(admin, sandboxd):
    run = sandboxd.run_id
    made = admin.create_template(CreateTemplateRequest(
        image=BUSYBOX_IMAGE, publish="s3://bucket/publish", entrypoint=["sleep", "infinity"],
        env={"FROM_TEMPLATE": "yes"}, metadata={"sdk-run": run, "kind": "crud"},
        resource_limits={"cpu": "1", "memory": "256Mi"}))
    try:
        assert made.template_id.startswith("tpl-")
        assert made.status.phase == "Succeeded"
        assert (made.image, made.publish, made.format) == (BUSYBOX_IMAGE, "s3://bucket/publish", "native")
        got = admin.get_template(made.template_id)
        assert got.entrypoint == ["sleep", "infinity"] and got.env == {"FROM_TEMPLATE": "yes"}
        page = admin.list_templates(TemplateFilter(metadata={"sdk-run": run, "kind": "crud"}, page_size=10))
        assert [t.template_id for t in page.template_infos] == [made.template_id]
        assert page.pagination.total_items == 1
    finally:
        admin.delete_template(made.template_id)
    with pytest.raises(SandboxApiException) as gone:
        admin.get_template(made.template_id)
    assert gone.value.status_code == 404


def test_create_from_template_runs_the_template(admin, sandboxd, mode):
    made = admin.create_template(CreateTemplateRequest(
        image=BUSYBOX_IMAGE, publish="local", entrypoint=["sleep", "infinity"],
        env={"FROM_TEMPLATE": "yes"}, metadata={"sdk-run": sandboxd.run_id}))
    sb = None
    try:
        sb = SandboxSync.create_from_template(
            made.template_id, timeout=timedelta(minutes=5), metadata={"sdk-run": sandboxd.run_id},
            connection_config=make_config(sandboxd, mode))
        assert sh(sb, "echo $FROM_TEMPLATE") == "yes"
        info = sb.get_info()
        assert info.status.state == "Running"
        assert info.entrypoint == ["sleep", "infinity"]
    finally:
        if sb is not None:
            sb.kill()
            sb.close()
        admin.delete_template(made.template_id)


def test_create_from_a_missing_template_is_not_found(sandboxd):
    with pytest.raises(Exception) as refused:
        SandboxSync.create_from_template(
            "tpl-00000000-0000-0000-0000-000000000000", timeout=timedelta(minutes=5),
            connection_config=make_config(sandboxd, "direct"))
    assert "TEMPLATE::NOT_FOUND" in str(refused.value) or "404" in str(refused.value), refused.value

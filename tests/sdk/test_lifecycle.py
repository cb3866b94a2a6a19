"""Lifecycle through the SDK: create, info, renew, connect, list filters, kill, auth, and a
sandbox from an image without libc. Every test runs direct and through the server proxy."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from opensandbox import SandboxManagerSync, SandboxSync
from opensandbox.exceptions import SandboxApiException, SandboxException
from opensandbox.models.sandboxes import SandboxFilter

from conftest import BUSYBOX_IMAGE, PYTHON_IMAGE, make_config
from helpers import out, sh


def close_to(a: datetime, b: datetime, seconds: float) -> bool:
    return abs((a - b).total_seconds()) <= seconds


def test_create_reports_image_metadata_entrypoint_and_expiry(sandboxes, config, sandboxd):
    before = datetime.now(timezone.utc)
    sb = sandboxes.create(config, metadata={"role": "info"}, env={"GREETING": "hello from create"},
                          timeout=timedelta(minutes=7))
    info = sb.get_info()
    assert info.id == sb.id
    assert info.status.state == "Running"
    assert info.metadata["role"] == "info"
    assert info.metadata["sdk-run"] == sandboxd.run_id
    assert info.image is not None and info.image.image == PYTHON_IMAGE
    assert info.entrypoint == ["tail", "-f", "/dev/null"]
    assert info.expires_at is not None
    assert close_to(info.expires_at, before + timedelta(minutes=7), 60), info.expires_at
    # The create's env reaches commands, and execd really runs inside that image.
    assert sh(sb, "echo $GREETING") == "hello from create"
    assert sh(sb, ". /etc/os-release && echo $VERSION_CODENAME") == "bookworm"


def test_entrypoint_runs_in_the_sandbox(sandboxes, config):
    sb = sandboxes.create(config, entrypoint=["sh", "-c", "echo started > /tmp/entrypoint-ran; exec sleep infinity"])
    assert sb.get_info().entrypoint == ["sh", "-c", "echo started > /tmp/entrypoint-ran; exec sleep infinity"]
    assert sh(sb, "cat /tmp/entrypoint-ran") == "started"
    # The user entrypoint is alive next to execd.
    assert "sleep infinity" in sh(sb, "ps -eo args")


def test_renew_moves_the_expiry(sandboxes, config):
    sb = sandboxes.create(config, timeout=timedelta(minutes=2))
    first = sb.get_info().expires_at
    now = datetime.now(timezone.utc)
    renewed = sb.renew(timedelta(minutes=30))
    assert close_to(renewed.expires_at, now + timedelta(minutes=30), 60), renewed.expires_at
    assert renewed.expires_at > first
    info = sb.get_info()
    assert close_to(info.expires_at, renewed.expires_at, 1), (info.expires_at, renewed.expires_at)
    assert info.status.state == "Running"


def test_manual_cleanup_sandbox_has_no_expiry(sandboxes, config):
    sb = sandboxes.create(config, timeout=None)
    info = sb.get_info()
    assert info.expires_at is None
    assert info.status.state == "Running"


def test_connect_reaches_the_same_sandbox(sandboxes, config, sandboxd, mode):
    sb = sandboxes.create(config)
    sh(sb, "echo marker-$((6*7)) > /tmp/connect-marker")
    again = SandboxSync.connect(sb.id, connection_config=make_config(sandboxd, mode))
    try:
        assert again.id == sb.id
        assert sh(again, "cat /tmp/connect-marker") == "marker-42"
        assert again.get_info().id == sb.id
    finally:
        again.close()


def test_connect_to_unknown_sandbox_is_404(sandboxd, mode):
    with pytest.raises(SandboxApiException) as e:
        SandboxSync.connect("does-not-exist-0000", connection_config=make_config(sandboxd, mode))
    assert e.value.status_code == 404


def test_list_filters_by_state_and_metadata(sandboxes, config, sandboxd):
    a = sandboxes.create(config, metadata={"role": "list-a", "tier": "gold"})
    b = sandboxes.create(config, metadata={"role": "list-b", "tier": "gold"})
    manager = SandboxManagerSync.create(connection_config=config)
    try:
        run = {"sdk-run": sandboxd.run_id}

        def ids(**filt):
            page = manager.list_sandbox_infos(SandboxFilter(page_size=200, **filt))
            return {s.id for s in page.sandbox_infos}

        both = ids(metadata={**run, "tier": "gold"})
        assert {a.id, b.id} <= both
        assert ids(metadata={**run, "role": "list-a"}) == {a.id}
        assert ids(metadata={**run, "role": "list-a", "tier": "gold"}) == {a.id}
        assert ids(metadata={**run, "role": "list-a", "tier": "silver"}) == set()
        assert {a.id, b.id} <= ids(states=["Running"], metadata={**run, "tier": "gold"})
        assert ids(states=["Paused"], metadata={**run, "tier": "gold"}) == set()
        # Several states are ORed.
        assert {a.id, b.id} <= ids(states=["Paused", "Running"], metadata={**run, "tier": "gold"})

        listed = manager.list_sandbox_infos(SandboxFilter(metadata={**run, "role": "list-b"}))
        assert [s.id for s in listed.sandbox_infos] == [b.id]
        assert listed.sandbox_infos[0].metadata["tier"] == "gold"
        assert listed.sandbox_infos[0].status.state == "Running"
        assert listed.pagination.total_items == 1
        assert listed.pagination.has_next_page is False

        # Paging: one per page, two pages.
        p1 = manager.list_sandbox_infos(SandboxFilter(metadata={**run, "tier": "gold"}, page=1, page_size=1))
        p2 = manager.list_sandbox_infos(SandboxFilter(metadata={**run, "tier": "gold"}, page=2, page_size=1))
        assert p1.pagination.total_items == 2 and p1.pagination.has_next_page is True
        assert len(p1.sandbox_infos) == 1 and len(p2.sandbox_infos) == 1
        assert {p1.sandbox_infos[0].id, p2.sandbox_infos[0].id} == {a.id, b.id}
    finally:
        manager.close()


def test_kill_removes_the_sandbox(sandboxes, config, sandboxd):
    sb = sandboxes.create(config, metadata={"role": "kill"})
    assert sh(sb, "echo alive") == "alive"
    sb.kill()
    try:
        state = sb.get_info().status.state
        assert state == "Terminated", state
    except SandboxApiException as e:
        assert e.status_code == 404
    manager = SandboxManagerSync.create(connection_config=config)
    try:
        live = manager.list_sandbox_infos(SandboxFilter(states=["Running"], metadata={"sdk-run": sandboxd.run_id, "role": "kill"}))
        assert live.sandbox_infos == []
    finally:
        manager.close()
    # Its execd is gone too.
    with pytest.raises(SandboxException):
        sb.commands.run("echo still here")


def test_manager_kill_and_renew(sandboxes, config):
    sb = sandboxes.create(config)
    manager = SandboxManagerSync.create(connection_config=config)
    try:
        now = datetime.now(timezone.utc)
        manager.renew_sandbox(sb.id, timedelta(minutes=20))
        assert close_to(manager.get_sandbox_info(sb.id).expires_at, now + timedelta(minutes=20), 60)
        manager.kill_sandbox(sb.id)
        try:
            state = manager.get_sandbox_info(sb.id).status.state
            assert state == "Terminated", state  # a terminal state instead of 404 is acceptable
        except SandboxApiException as e:
            assert e.status_code == 404
    finally:
        manager.close()


def test_wrong_api_key_is_rejected(sandboxd, mode):
    cfg = make_config(sandboxd, mode, api_key="not-the-key")
    with pytest.raises(SandboxApiException) as e:
        SandboxSync.create(PYTHON_IMAGE, connection_config=cfg, metadata={"sdk-run": sandboxd.run_id})
    assert e.value.status_code == 401
    status, headers, body = sandboxd.request("GET", "/v1/sandboxes", key="not-the-key")
    assert status == 401
    assert isinstance(body, dict) and body.get("code") and "message" in body


def test_request_id_is_echoed(sandboxd):
    status, headers, body = sandboxd.request("GET", "/v1/sandboxes/no-such-sandbox")
    assert status == 404
    assert isinstance(body, dict) and body.get("code"), body
    assert any(k.lower() == "x-request-id" and v for k, v in headers.items()), headers


def test_busybox_image_without_libc(sandboxes, config):
    sb = sandboxes.create(config, image=BUSYBOX_IMAGE, entrypoint=["/bin/sleep", "infinity"])
    ex = sb.commands.run("echo hi from busybox; ls /lib /lib64 /usr/lib 2>&1; exit 0")
    assert ex.error is None
    text = out(ex)
    assert text.startswith("hi from busybox\n"), text
    # No loader or libc in that image: the listing fails for each directory.
    assert text.count("No such file or directory") == 3, text
    sb.files.write_file("/tmp/busybox.txt", "written through execd")
    assert sh(sb, "cat /tmp/busybox.txt") == "written through execd"

"""Seed 000 (the LiteBoxd SDK reference), replayed through the adapter against a live sandboxd:
the `Client(base_url, auth_token=…)` with a sandboxd user token, the template service
(create → update = a new version → versions → rollback → export), import/export with each
strategy, refused documents, and sandboxes created from a template with overrides."""

from __future__ import annotations

import json
import secrets
import urllib.request

import pytest

from conftest import serve
from liteboxd_compat import (BadRequestError, Client, ConflictError, NotFoundError, APIError)

IMAGE = "execd-test/busybox"


def admin_token(d) -> str:
    req = urllib.request.Request(d.url + "/v1/tokens", method="POST",
                                 data=json.dumps({"userId": "liteboxd-admin", "role": "admin"}).encode(),
                                 headers={"OPEN-SANDBOX-API-KEY": d.api_key, "Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())["accessToken"]


@pytest.fixture
def client(sandboxd):
    with Client(sandboxd.url + "/v1", auth_token=admin_token(sandboxd)) as c:
        yield c


def execd_env(url: str, token: str) -> set[str]:
    """The sandbox's environment, as a command run by execd sees it (the seed's `execute`
    is not in sandboxd yet, so this goes to execd's own `/command`)."""
    req = urllib.request.Request(url + "/command", method="POST", data=json.dumps({"command": "env"}).encode(),
                                 headers={"X-EXECD-ACCESS-TOKEN": token, "Content-Type": "application/json"})
    lines = set()
    with urllib.request.urlopen(req, timeout=30) as r:
        for raw in r.read().decode().splitlines():
            raw = raw.removeprefix("data:").strip()
            if raw.startswith("{"):
                event = json.loads(raw)
                if event.get("type") == "stdout":
                    lines.update(event.get("text", "").splitlines())
    return lines


def spec(**kw):
    return {"image": IMAGE, "command": ["sleep"], "args": ["infinity"], "ttl": 600, **kw}


def test_the_template_lifecycle_of_the_seed(client):
    name = "seed-ds-" + secrets.token_hex(3)
    t = client.template.create({"name": name, "displayName": "Python DS", "description": "data science",
                                "tags": ["python", "seed-000"], "spec": spec(env={"A": "1"})})
    assert (t.name, t.latest_version, t.is_public) == (name, 1, True)
    with pytest.raises(ConflictError):
        client.template.create({"name": name, "spec": spec()})
    t2 = client.template.update(name, {"spec": spec(env={"A": "2"}), "changelog": "A=2"})
    assert t2.latest_version == 2 and t2.spec["env"] == {"A": "2"}
    assert client.template.update(name, {"spec": spec(env={"A": "2"})}).latest_version == 2, "same spec: no version"
    rolled = client.template.rollback(name, 1, changelog="back to 1")
    assert (rolled["newVersion"], rolled["versionCreated"], rolled["template"]["spec"]["env"]) == (3, True, {"A": "1"})
    versions = client.template.list_versions(name)
    assert [v["version"] for v in versions["items"]] == [3, 2, 1]
    assert client.template.get_version(name, 2)["changelog"] == "A=2"
    with pytest.raises(NotFoundError):
        client.template.get_version(name, 9)
    found = client.template.list(tag="seed-000", search="DATA SCI")
    assert [x.name for x in found["items"]] == [name]
    yaml = client.template.export_yaml(name).decode()
    assert f"name: {name}" in yaml and "kind: Template" in yaml
    assert "A: '2'" not in yaml, "the latest spec (version 3 = version 1) is exported"
    v2 = client.template.export_yaml(name, version=2).decode()
    assert v2 != yaml
    client.template.delete(name)
    with pytest.raises(NotFoundError):
        client.template.get(name)


def test_export_import_into_a_fresh_server_and_each_strategy(client, sandboxd):
    names = ["seed-io-a-" + secrets.token_hex(3), "seed-io-b-" + secrets.token_hex(3)]
    for n in names:
        client.template.create({"name": n, "tags": ["seed-io"], "spec": spec()})
    exported = client.import_export.export_all(names=names)
    with serve("liteboxd-fresh", secrets.token_hex(16)) as fresh:
        with Client(fresh.url + "/v1", auth_token=admin_token(fresh)) as other:
            result = other.import_export.import_templates(exported)
            assert sorted(i["name"] for i in result["created"]) == sorted(names)
            assert other.import_export.export_all(names=names) == exported, "byte-identical round trip"
            again = other.import_export.import_templates(exported, strategy="create-only")
            assert sorted(s["reason"] for s in again["skipped"]) == ["ALREADY_EXISTS"] * 2
            changed = exported.decode().replace("infinity", "999999").encode()
            updated = other.import_export.import_templates(changed, strategy="update-only")
            assert sorted((u["name"], u["fromVersion"], u["version"]) for u in updated["updated"]) == \
                sorted((n, 1, 2) for n in names)
            same = other.import_export.import_templates(changed)
            assert len(same["unchanged"]) == 2 and not same["updated"]
    with pytest.raises(NotFoundError) as missing:
        client.import_export.export_all(names=[names[0], "no-such-template"])
    assert "no-such-template" in missing.value.message
    for n in names:
        client.template.delete(n)


@pytest.mark.parametrize("document,where", [
    ("apiVersion: sandboxd.io/v1\nkind: Template\nmetadata: {name: a}\nspec:\n  image: x\n  image: y\n", "6:"),
    ("apiVersion: sandboxd.io/v1\nkind: Template\nmetadata: {name: a}\nspec:\n  image: x\n  startup_scirpt: y\n",
     "startup_scirpt"),
    ("apiVersion: sandboxd.io/v1\nkind: Template\nmetadata:\n\tname: a\n", "4:"),
])
def test_bad_documents_are_refused_with_where(client, document, where):
    with pytest.raises(BadRequestError) as refused:
        client.import_export.import_templates(document)
    assert refused.value.code == "TEMPLATE::IMPORT_INVALID"
    assert where in refused.value.message, refused.value.message


def test_a_billion_laughs_and_an_oversized_body_are_refused(client):
    lol = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    for i in range(1, 10):
        prev = chr(ord("a") + i - 1)
        cur = chr(ord("a") + i)
        lol += f"{cur}: &{cur} [*{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}, *{prev}]\n"
    with pytest.raises(BadRequestError) as refused:
        client.import_export.import_templates(lol)
    assert refused.value.code == "TEMPLATE::IMPORT_INVALID"
    with pytest.raises(APIError) as big:
        client.import_export.import_templates(b"# " + b"x" * (5 << 20))
    assert (big.value.status_code, big.value.code) == (413, "SANDBOX::PAYLOAD_TOO_LARGE")


def test_a_sandbox_from_a_template_with_overrides(client):
    name = "seed-run-" + secrets.token_hex(3)
    client.template.create({"name": name, "spec": spec(
        env={"GREETING": "hello", "DROP": "x"}, resources={"cpu": "1", "memory": "256Mi"})})
    client.template.update(name, {"spec": spec(env={"GREETING": "v2"})})
    sb = client.sandbox.create(name, template_version=1, overrides={"memory": "128Mi", "ttl": 900,
                                                                      "env": {"EXTRA": "1"}})
    try:
        ready = client.sandbox.wait_for_ready(sb.id, poll_interval=0.2, timeout=60)
        assert (ready.status, ready.template, ready.template_version, ready.ttl) == ("running", name, 1, 900)
        assert ready.access_url and ready.access_token
        client.sandbox.upload_file(sb.id, "/tmp/seed-000.txt", b"from the seed")
        assert client.sandbox.download_file(sb.id, "/tmp/seed-000.txt") == b"from the seed"
        env = execd_env(ready.access_url, ready.access_token)
        assert {"GREETING=hello", "DROP=x", "EXTRA=1"} <= env, env
        assert sb.id in [s.id for s in client.sandbox.list()]
        logs = client.sandbox.get_logs(sb.id)
        assert any("create requested" in e for e in logs["events"]), logs
        assert any(" Ready [sandboxd] " in e for e in logs["events"]), logs
        for section in ("=== container ===", "=== lifecycle ===", "=== process ==="):
            assert section in logs["logs"], logs
        assert "sandbox running" in logs["logs"], logs
        assert "execd ready" in logs["logs"], logs
        assert logs["warnings"] == [], logs
    finally:
        client.sandbox.delete(sb.id)
    with pytest.raises(NotFoundError):
        client.sandbox.get(sb.id)
    with pytest.raises(NotFoundError):
        client.sandbox.create("no-such-template-" + secrets.token_hex(3))
    with pytest.raises(NotFoundError):
        client.sandbox.create(name, template_version=7)
    client.template.delete(name)


def test_wait_for_ready_sees_a_failing_startup_script(client):
    from liteboxd_compat import SandboxFailedError

    name = "seed-fail-" + secrets.token_hex(3)
    client.template.create({"name": name, "spec": spec(startupScript="echo boom-from-the-script; exit 3",
                                                        startupTimeout=30)})
    sb = client.sandbox.create(name)
    try:
        with pytest.raises(SandboxFailedError) as failed:
            client.sandbox.wait_for_ready(sb.id, poll_interval=0.2, timeout=60)
        assert failed.value.sandbox_id == sb.id
        assert "boom-from-the-script" in failed.value.message, failed.value.message
        got = client.sandbox.get(sb.id)
        assert (got.status, got.reason) == ("failed", "PRE_START_FAILED")
    finally:
        client.sandbox.delete(sb.id)
        client.template.delete(name)


def test_wait_for_ready_waits_for_the_startup_script(client):
    name = "seed-slow-" + secrets.token_hex(3)
    client.template.create({"name": name, "spec": spec(
        startupScript="i=0; while [ $i -lt 20 ]; do i=$((i+1)); sleep 0.05; done; echo done > /tmp/started",
        files=[{"path": "/etc/seed/config.txt", "content": "from the template\n", "mode": "0640"}])})
    sb = client.sandbox.create(name)
    try:
        ready = client.sandbox.wait_for_ready(sb.id, poll_interval=0.1, timeout=60)
        assert ready.status == "running"
        assert client.sandbox.download_file(sb.id, "/tmp/started") == b"done\n"
        assert client.sandbox.download_file(sb.id, "/etc/seed/config.txt") == b"from the template\n"
    finally:
        client.sandbox.delete(sb.id)
        client.template.delete(name)


def test_execute_runs_a_command_and_returns_its_output(client):
    # The seed's example runs `python -c "print('hello')"`; this image has `python3`.
    name = "seed-exec-" + secrets.token_hex(3)
    client.template.create({"name": name, "spec": {**spec(), "image": "execd-test/python:bookworm"}})
    sb = client.sandbox.create(name)
    try:
        client.sandbox.wait_for_ready(sb.id, poll_interval=0.2, timeout=60)
        result = client.sandbox.execute(sb.id, command=["python3", "-c", "print('hello')"], timeout=30)
        assert (result.exit_code, result.stdout, result.stderr) == (0, "hello\n", "")
        failed = client.sandbox.execute(sb.id, command=["sh", "-c", "echo oops >&2; exit 4"], timeout=30)
        assert (failed.exit_code, failed.stderr) == (4, "oops\n")
        with pytest.raises(NotFoundError):
            client.sandbox.execute("no-such-sandbox", command=["true"])
    finally:
        client.sandbox.delete(sb.id)
        client.template.delete(name)

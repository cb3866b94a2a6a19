"""Lifecycle through the SDK: create, info, renew, connect, list filters, kill, auth, and a
sandbox from an image without libc. Every test runs direct and through the server proxy."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import httpx
import pytest
from opensandbox import SandboxManagerSync, SandboxSync
from opensandbox.exceptions import SandboxApiException, SandboxException
from opensandbox.models.execd import RunCommandOpts
from opensandbox.models.sandboxes import SandboxFilter

from conftest import BUSYBOX_IMAGE, PYTHON_IMAGE, make_config
from helpers import out, sh, wait_for


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
        # States match case-insensitively, and several states are ORed.
        assert {a.id, b.id} <= ids(states=["running"], metadata={**run, "tier": "gold"})
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


def test_renew_to_the_near_future_expires_the_sandbox(sandboxes, config, sandboxd):
    """Expiry, without waiting out the 60 s minimum timeout: renew to now + 4 s."""
    sb = sandboxes.create(config, metadata={"role": "expiry"})
    now = datetime.now(timezone.utc)
    renewed = sb.renew(timedelta(seconds=4))
    assert close_to(renewed.expires_at, now + timedelta(seconds=4), 5), renewed.expires_at

    def gone():
        status, _, body = sandboxd.request("GET", f"/v1/sandboxes/{sb.id}")
        return status == 404 or (status == 200 and body["status"]["state"] == "Terminated")

    wait_for(gone, timeout=40, interval=0.5, what="the renewed-short sandbox to expire")
    with pytest.raises(SandboxException):
        sb.commands.run("echo still here")


def test_pause_and_resume_keep_the_sandbox(sandboxes, config, sandboxd, mode):
    sb = sandboxes.create(config)
    sh(sb, "echo kept > /tmp/pause-marker")
    bg = sb.commands.run("for i in $(seq 1 600); do echo tick-$i >> /tmp/ticks; sleep 0.1; done",
                         opts=RunCommandOpts(background=True))
    wait_for(lambda: "tick-3" in sh(sb, "cat /tmp/ticks 2>/dev/null || true"), what="ticks")
    sb.pause()
    assert wait_for(lambda: sb.get_info().status.state == "Paused", what="state Paused")
    resumed = SandboxSync.resume(sb.id, connection_config=make_config(sandboxd, mode))
    try:
        assert resumed.get_info().status.state == "Running"
        assert sh(resumed, "cat /tmp/pause-marker") == "kept"
        # The background process survived the pause and goes on.
        n1 = len(sh(resumed, "cat /tmp/ticks").split("\n"))
        wait_for(lambda: len(sh(resumed, "cat /tmp/ticks").split("\n")) > n1 + 3, what="ticks after resume")
        assert resumed.commands.get_command_status(bg.id).running is True
    finally:
        resumed.close()


def test_patch_metadata(sandboxes, config, sandboxd):
    sb = sandboxes.create(config, metadata={"role": "patch", "drop": "me"})
    info = sb.patch_metadata({"added": "yes", "drop": None, "role": "patched"})
    assert info.metadata == {"sdk-run": sandboxd.run_id, "added": "yes", "role": "patched"}
    assert sb.get_info().metadata == info.metadata
    manager = SandboxManagerSync.create(connection_config=config)
    try:
        found = manager.list_sandbox_infos(SandboxFilter(metadata={"sdk-run": sandboxd.run_id, "role": "patched"}))
        assert [s.id for s in found.sandbox_infos] == [sb.id]
    finally:
        manager.close()


def test_user_port_endpoint_reaches_a_server_in_the_sandbox(sandboxes, config, sandboxd, mode):
    """`get_endpoint(port)` for a user's own server; through the server proxy the API key the
    client sends must not reach the sandbox."""
    sb = sandboxes.create(config)
    sb.files.write_file("/tmp/echo_server.py", ECHO_SERVER)
    sb.commands.run("python3 /tmp/echo_server.py 8000", opts=RunCommandOpts(background=True))
    wait_for(lambda: sb.commands.run("bash -c 'exec 3<>/dev/tcp/127.0.0.1/8000'").error is None,
             what="the echo server to listen")
    ep = sb.get_endpoint(8000)
    assert "://" not in ep.endpoint and not ep.endpoint.endswith("/"), ep.endpoint
    headers = {**(ep.headers or {}), "X-Probe": "probe-value"}
    if mode == "proxy":
        headers["OPEN-SANDBOX-API-KEY"] = sandboxd.api_key
    r = httpx.get(f"http://{ep.endpoint}/some/path?q=1", headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    echoed = r.json()
    assert echoed["path"] == "/some/path?q=1"
    seen = {k.lower(): v for k, v in echoed["headers"].items()}
    assert seen["x-probe"] == "probe-value"
    assert "open-sandbox-api-key" not in seen, seen
    # Nor does execd's access token, which the endpoint's headers carry.
    assert "x-execd-access-token" not in seen, seen


def test_diagnostic_logs_show_the_entrypoint_output(sandboxes, config):
    sb = sandboxes.create(config, entrypoint=["sh", "-c", "echo diag-from-entrypoint; exec sleep infinity"])
    logs = wait_for(lambda: (c := sb.get_diagnostic_logs("container")) and "diag-from-entrypoint" in (c.content or "") and c,
                    what="the entrypoint's output in the container logs")
    assert logs.sandbox_id == sb.id
    assert logs.kind == "logs"
    assert logs.delivery == "inline"


def test_request_id_is_echoed_when_sent(sandboxd):
    status, headers, _ = sandboxd.request("GET", "/v1/sandboxes/no-such-sandbox", headers={"X-Request-ID": "sdk-suite-req-1"})
    assert status == 404
    assert {k.lower(): v for k, v in headers.items()}.get("x-request-id") == "sdk-suite-req-1"


ECHO_SERVER = '''
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"path": self.path, "headers": dict(self.headers)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

HTTPServer(("0.0.0.0", int(sys.argv[1])), H).serve_forever()
'''


def test_resource_limits_apply(sandboxes, config):
    sb = sandboxes.create(config, resource={"cpu": "500m", "memory": "256Mi"})
    m = sb.get_metrics()
    assert abs(m.memory_total_in_mib - 256) < 1, m
    limit = sh(sb, "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes")
    assert limit == str(256 * 1024 * 1024), limit

"""sandboxd as a server: the async SDK, refused creates, big transfers through the proxy, and a
restart of sandboxd under live sandboxes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import time
from datetime import timedelta

import pytest
from opensandbox import Sandbox, SandboxSync
from opensandbox.config import ConnectionConfig
from opensandbox.exceptions import SandboxApiException
from opensandbox.models.execd import RunCommandOpts

from conftest import PYTHON_IMAGE, make_config, new_server, _delete_leftovers
from helpers import sh, wait_for


def test_async_sdk_end_to_end(sandboxd, mode):
    async def main():
        cfg = ConnectionConfig(domain=sandboxd.domain, api_key=sandboxd.api_key,
                               use_server_proxy=(mode == "proxy"), request_timeout=timedelta(seconds=60))
        sb = await Sandbox.create(PYTHON_IMAGE, connection_config=cfg, metadata={"sdk-run": sandboxd.run_id})
        try:
            ex = await sb.commands.run("echo async-$((40+2)); echo oops >&2")
            assert [m.text for m in ex.logs.stdout] == ["async-42"]
            assert [m.text for m in ex.logs.stderr] == ["oops"]
            await sb.files.write_file("/tmp/async.txt", "async file")
            assert await sb.files.read_file("/tmp/async.txt") == "async file"
            info = await sb.get_info()
            assert info.status.state == "Running"
        finally:
            await sb.kill()
            await sb.close()
        status, _, body = sandboxd.request("GET", f"/v1/sandboxes/{sb.id}")
        assert status == 404 or body["status"]["state"] == "Terminated"

    asyncio.run(main())


def test_create_with_a_missing_image_fails_fast_and_leaves_nothing(sandboxd, mode):
    start = time.monotonic()
    with pytest.raises(SandboxApiException) as e:
        SandboxSync.create("execd-test/does-not-exist:1", connection_config=make_config(sandboxd, mode),
                           metadata={"sdk-run": sandboxd.run_id, "role": "missing-image"})
    assert time.monotonic() - start < 60
    assert e.value.status_code is not None and 400 <= e.value.status_code < 600
    assert "does-not-exist" in str(e.value), str(e.value)
    status, _, body = sandboxd.request("GET", f"/v1/sandboxes?metadata=sdk-run%3D{sandboxd.run_id}%26role%3Dmissing-image")
    assert status == 200 and body["items"] == [], body


def test_create_with_a_missing_entrypoint_fails_with_the_reason(sandboxd, mode):
    with pytest.raises(SandboxApiException) as e:
        SandboxSync.create(PYTHON_IMAGE, entrypoint=["/no/such/program"], connection_config=make_config(sandboxd, mode),
                           metadata={"sdk-run": sandboxd.run_id, "role": "bad-entrypoint"})
    assert "/no/such/program" in str(e.value), str(e.value)
    status, _, body = sandboxd.request("GET", f"/v1/sandboxes?metadata=sdk-run%3D{sandboxd.run_id}%26role%3Dbad-entrypoint")
    assert status == 200 and body["items"] == [], body


def test_create_with_a_too_short_timeout_is_a_400(sandboxd, mode):
    with pytest.raises(SandboxApiException) as e:
        SandboxSync.create(PYTHON_IMAGE, connection_config=make_config(sandboxd, mode), timeout=timedelta(seconds=10),
                           metadata={"sdk-run": sandboxd.run_id})
    assert e.value.status_code == 400
    assert e.value.error is not None and e.value.error.code, e.value


def test_big_file_and_long_output_through_the_endpoints(shared):
    blob = os.urandom(24 * 1024 * 1024)
    shared.files.write_file("/tmp/big.bin", blob)
    assert sh(shared, "sha256sum /tmp/big.bin | cut -d' ' -f1") == hashlib.sha256(blob).hexdigest()
    assert hashlib.sha256(shared.files.read_bytes("/tmp/big.bin")).digest() == hashlib.sha256(blob).digest()
    shared.files.delete_files(["/tmp/big.bin"])
    ex = shared.commands.run("seq 1 100000")
    assert ex.error is None
    lines = [m.text for m in ex.logs.stdout]
    assert len(lines) == 100000 and lines[0] == "1" and lines[-1] == "100000"


def test_sandboxes_survive_a_sandboxd_restart(mode):
    server = new_server("restart")
    d = server.start()
    try:
        cfg = make_config(d, mode)
        sb = SandboxSync.create(PYTHON_IMAGE, connection_config=cfg, metadata={"sdk-run": d.run_id, "role": "restart"},
                                timeout=timedelta(minutes=20))
        sh(sb, "echo before-restart > /tmp/restart-marker")
        bg = sb.commands.run("sleep 300", opts=RunCommandOpts(background=True))
        expires = sb.get_info().expires_at
        sb.close()

        assert server.stop() is not None
        d = server.start()

        again = SandboxSync.connect(sb.id, connection_config=make_config(d, mode))
        try:
            info = again.get_info()
            assert info.status.state == "Running"
            assert info.metadata["role"] == "restart"
            assert abs((info.expires_at - expires).total_seconds()) < 1
            assert sh(again, "cat /tmp/restart-marker") == "before-restart"
            assert again.commands.get_command_status(bg.id).running is True
            status, _, body = d.request("GET", f"/v1/sandboxes?metadata=sdk-run%3D{d.run_id}")
            assert [s["id"] for s in body["items"]] == [sb.id]
            again.kill()
        finally:
            again.close()
    finally:
        _delete_leftovers(d)
        server.stop()
        shutil.rmtree(server.data_dir, ignore_errors=True)

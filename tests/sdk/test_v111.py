"""SDK 1.1 features (this file is not collected under 0.1.10): argv commands, set_env,
directory listing."""

from __future__ import annotations

from opensandbox.models.filesystem import DirectoryListEntry, WriteEntry

from helpers import out, sh


def test_argv_command_is_not_shell_expanded(shared):
    ex = shared.commands.run(["printf", "%s|", "a b", "$HOME", "c"])
    assert ex.error is None
    assert out(ex) == "a b|$HOME|c|"


def test_set_env_reaches_later_commands(shared):
    shared.commands.set_env("SDK_SET_ENV", "set via set_env")
    assert sh(shared, "echo $SDK_SET_ENV") == "set via set_env"


def test_list_directory(shared):
    shared.files.create_directories([WriteEntry(path="/tmp/v111-list/sub", mode=755)])
    shared.files.write_file("/tmp/v111-list/a.txt", "a")
    entries = shared.files.list_directory(DirectoryListEntry(path="/tmp/v111-list"))
    names = sorted(e.path.rstrip("/").rsplit("/", 1)[-1] for e in entries)
    assert names == ["a.txt", "sub"], [e.path for e in entries]
    by_name = {e.path.rstrip("/").rsplit("/", 1)[-1]: e for e in entries}
    assert by_name["a.txt"].size == 1


def test_read_lines_with_offset_and_limit(shared):
    """`offset`/`limit` select lines (1-based start line), not bytes."""
    shared.files.write_file("/tmp/v111-lines.txt", "l1\nl2\nl3\nl4\nl5\n")
    assert shared.files.read_file("/tmp/v111-lines.txt", offset=2, limit=2) == "l2\nl3\n"
    assert shared.files.read_bytes("/tmp/v111-lines.txt", offset=4) == b"l4\nl5\n"


def test_rate_limits_reach_the_sdk_as_upstream_means_them():
    """POST is never retried by the SDK: a create over the limit surfaces
    `SandboxRateLimitException` with the server's `Retry-After`; GETs over the limit are
    retried by the SDK until they succeed."""
    from datetime import timedelta

    import pytest
    from opensandbox import SandboxSync
    from opensandbox.exceptions import SandboxRateLimitException

    from conftest import BUSYBOX_IMAGE, make_config, new_server

    server = new_server("limited", extra=("--rate-create", "0.1", "--burst-create", "1", "--rate-read", "2", "--burst-read", "2"))
    d = server.start()
    created = []
    try:
        cfg = make_config(d, "direct")
        sb = SandboxSync.create(BUSYBOX_IMAGE, entrypoint=["sleep", "infinity"], connection_config=cfg,
                                metadata={"sdk-run": d.run_id}, timeout=timedelta(minutes=5))
        created.append(sb)
        with pytest.raises(SandboxRateLimitException) as refused:
            created.append(SandboxSync.create(BUSYBOX_IMAGE, entrypoint=["sleep", "infinity"], connection_config=cfg,
                                              metadata={"sdk-run": d.run_id}, timeout=timedelta(minutes=5)))
        assert refused.value.retry_after is not None and refused.value.retry_after >= timedelta(seconds=1)
        # Twice the burst of reads: the SDK retries the refused ones and every call succeeds.
        for _ in range(4):
            assert sb.get_info().status.state == "Running"
    finally:
        for sb in created:
            try:
                sb.kill()
            except Exception:
                pass
        server.stop()


def test_snapshot_create_restore_list_and_delete(sandboxd, sandboxes, config):
    """The 1.1.1 SDK's snapshot calls: `Sandbox.create_snapshot`, the manager's
    get/list/delete, and `Sandbox.create(snapshot_id=...)`; a snapshot in use is not deleted."""
    import pytest
    from opensandbox import SandboxManagerSync, SandboxSync
    from opensandbox.exceptions import SandboxApiException
    from opensandbox.models.sandboxes import SnapshotFilter

    from conftest import BUSYBOX_IMAGE
    from helpers import wait_for

    src = sandboxes.create(config, BUSYBOX_IMAGE, entrypoint=["sleep", "infinity"])
    sh(src, "echo 'from the source' > /tmp/snap.txt")
    snap = src.create_snapshot(name="sdk-snap")
    assert snap.sandbox_id == src.id
    assert snap.name == "sdk-snap"
    assert snap.status.state == "Creating"
    manager = SandboxManagerSync.create(connection_config=config)
    wait_for(lambda: manager.get_snapshot(snap.id).status.state == "Ready", timeout=120, what="a Ready snapshot")
    listed = manager.list_snapshots(SnapshotFilter(sandbox_id=src.id, states=["Ready"]))
    assert [s.id for s in listed.snapshot_infos] == [snap.id]
    assert listed.pagination.total_items == 1
    named = manager.list_snapshots(SnapshotFilter(name="sdk-snap", sandbox_id=src.id))
    assert [s.id for s in named.snapshot_infos] == [snap.id]

    child = SandboxSync.create(snapshot_id=snap.id, metadata={"sdk-run": sandboxd.run_id},
                               connection_config=config, entrypoint=["sleep", "infinity"])
    sandboxes.created.append(child)
    assert sh(child, "cat /tmp/snap.txt") == "from the source"
    assert child.get_info().snapshot_id == snap.id

    with pytest.raises(SandboxApiException) as refused:
        manager.delete_snapshot(snap.id)
    assert refused.value.status_code == 409
    child.kill()
    manager.delete_snapshot(snap.id)
    with pytest.raises(SandboxApiException) as gone:
        manager.get_snapshot(snap.id)
    assert gone.value.status_code == 404

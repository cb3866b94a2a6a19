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

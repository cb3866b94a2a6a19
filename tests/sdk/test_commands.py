"""Commands and bash sessions through the SDK (direct and through the server proxy)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from opensandbox.models.execd import RunCommandOpts
from opensandbox.models.execd_sync import ExecutionHandlersSync

from helpers import err, out, sh, wait_for


def test_foreground_output_and_exit_code(shared):
    ex = shared.commands.run("echo out-line; echo err-line >&2; echo second")
    assert ex.error is None
    assert ex.exit_code == 0
    assert out(ex) == "out-line\nsecond"
    assert err(ex) == "err-line"
    assert ex.id, "the init event carries the execution id"

    failed = shared.commands.run("echo before; exit 3")
    assert out(failed) == "before"
    assert failed.error is not None
    assert failed.error.value == "3"
    assert failed.exit_code == 3


def test_streaming_handlers_see_every_line_in_order(shared):
    seen = []
    handlers = ExecutionHandlersSync(on_stdout=lambda m: seen.append(m.text))
    ex = shared.commands.run("for i in 1 2 3 4 5; do echo line-$i; done", handlers=handlers)
    assert ex.error is None
    assert seen == [f"line-{i}" for i in range(1, 6)]


def test_envs_and_working_directory(shared):
    ex = shared.commands.run(
        'echo "$FOO|$BAR|$SDK_SUITE_ENV"; pwd',
        opts=RunCommandOpts(envs={"FOO": "foo value", "BAR": "b=2"}, working_directory="/tmp"),
    )
    assert ex.error is None
    assert out(ex) == "foo value|b=2|from-create\n/tmp"


def test_command_timeout_kills_it(shared):
    start = time.monotonic()
    ex = shared.commands.run("echo begin; sleep 30; echo never", opts=RunCommandOpts(timeout=timedelta(seconds=2)))
    elapsed = time.monotonic() - start
    assert out(ex) == "begin"
    assert elapsed < 20, elapsed
    assert ex.error is not None, "a command killed by its timeout must end with an error event"
    assert ex.exit_code != 0
    assert any("timed out" in line for line in ex.error.traceback), ex.error


def test_background_status_and_logs(shared):
    ex = shared.commands.run(
        "echo started; sleep 1; echo finished; exit 4",
        opts=RunCommandOpts(background=True),
    )
    assert ex.id
    first = shared.commands.get_command_status(ex.id)
    assert first.id == ex.id

    status = wait_for(lambda: (s := shared.commands.get_command_status(ex.id)) and not s.running and s,
                      what="background command to finish")
    assert status.exit_code == 4
    assert status.finished_at is not None

    logs = shared.commands.get_background_command_logs(ex.id)
    assert "started" in logs.content and "finished" in logs.content, logs.content
    assert logs.content.index("started") < logs.content.index("finished")
    # Reading again from the returned cursor yields nothing new.
    if logs.cursor is not None:
        again = shared.commands.get_background_command_logs(ex.id, cursor=logs.cursor)
        assert "started" not in again.content


def test_interrupt_background_command(shared):
    ex = shared.commands.run("echo up; sleep 60; echo never", opts=RunCommandOpts(background=True))
    wait_for(lambda: "up" in shared.commands.get_background_command_logs(ex.id).content, what="output")
    assert shared.commands.get_command_status(ex.id).running is True
    shared.commands.interrupt(ex.id)
    status = wait_for(lambda: (s := shared.commands.get_command_status(ex.id)) and not s.running and s,
                      timeout=15, what="interrupted command to stop")
    assert status.exit_code != 0
    assert "never" not in shared.commands.get_background_command_logs(ex.id).content


def test_interrupt_foreground_stream(shared):
    """The init event must arrive while the command runs (streamed, not buffered by a proxy)."""
    ids = []
    got_init = threading.Event()

    def on_init(msg):
        ids.append(msg.id)
        got_init.set()

    result = {}

    def run():
        result["ex"] = shared.commands.run("echo waiting; sleep 60; echo never", handlers=ExecutionHandlersSync(on_init=on_init))

    t = threading.Thread(target=run, daemon=True)
    start = time.monotonic()
    t.start()
    assert got_init.wait(15), "no init event while the command was running"
    exec_id = ids[0]
    assert isinstance(exec_id, str) and exec_id
    time.sleep(0.5)
    shared.commands.interrupt(exec_id)
    t.join(20)
    assert not t.is_alive(), "the foreground stream did not end after interrupt"
    assert time.monotonic() - start < 30
    ex = result["ex"]
    assert out(ex) == "waiting"
    assert ex.exit_code != 0


def test_bash_session_keeps_state(shared):
    sid = shared.commands.create_session(working_directory="/tmp")
    try:
        first = shared.commands.run_in_session(sid, "pwd; export KEPT=kept-value; cd /etc; X=5")
        assert first.error is None
        assert out(first) == "/tmp"
        second = shared.commands.run_in_session(sid, 'echo "$KEPT $X"; pwd')
        assert out(second) == "kept-value 5\n/etc"
        failing = shared.commands.run_in_session(sid, "false")
        assert failing.error is not None and failing.error.value == "1"
        # The session survives a failing run.
        assert out(shared.commands.run_in_session(sid, "echo $X")) == "5"
        elsewhere = shared.commands.run_in_session(sid, "pwd", working_directory="/usr")
        assert out(elsewhere) == "/usr"
    finally:
        shared.commands.delete_session(sid)
    with pytest.raises(Exception):
        shared.commands.run_in_session(sid, "echo gone")



def test_run_as_another_user(shared):
    ex = shared.commands.run("id -u; id -g; echo $HOME", opts=RunCommandOpts(uid=65534, gid=65534))
    assert ex.error is None, ex.error
    assert out(ex).split("\n")[:2] == ["65534", "65534"]
    shared.files.write_file("/tmp/owned-by-nobody.txt", "mine", owner="nobody", group="nogroup", mode=640)
    assert sh(shared, "stat -c '%U:%G %a' /tmp/owned-by-nobody.txt") == "nobody:nogroup 640"
    # That user can read it; another (uid 1234) cannot.
    assert out(shared.commands.run("cat /tmp/owned-by-nobody.txt", opts=RunCommandOpts(uid=65534, gid=65534))) == "mine"
    denied = shared.commands.run("cat /tmp/owned-by-nobody.txt", opts=RunCommandOpts(uid=1234, gid=1234))
    assert denied.exit_code == 1 and "Permission denied" in err(denied)

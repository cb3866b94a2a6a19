"""Code contexts through opensandbox-code-interpreter (python, on the image's ipykernel) and
metrics. Direct and through the server proxy."""

from __future__ import annotations

import threading
import time

from code_interpreter import CodeInterpreterSync, SupportedLanguage
from opensandbox.models.execd_sync import ExecutionHandlersSync



def out(execution) -> str:
    """Code output is Jupyter's stream text, passed through as is (newlines included), unlike
    commands, whose output comes one line per event."""
    return "".join(m.text for m in execution.logs.stdout)


def interpreter(sandbox) -> CodeInterpreterSync:
    # Default readiness check, as a user would call it (1.1.1 also probes the Jupyter port).
    return CodeInterpreterSync.create(sandbox)


def test_context_keeps_state_and_returns_results(shared):
    ci = interpreter(shared)
    ctx = ci.codes.create_context(SupportedLanguage.PYTHON)
    assert ctx.id
    assert ctx.language == "python"
    try:
        first = ci.codes.run("x = 6 * 7\nprint('set', x)", context=ctx)
        assert first.error is None
        assert out(first) == "set 42\n"
        second = ci.codes.run("x + 1", context=ctx)
        assert second.error is None
        assert [r.text for r in second.result] == ["43"]
        assert second.execution_count is not None and second.execution_count >= 2

        ids = [c.id for c in ci.codes.list_contexts(SupportedLanguage.PYTHON)]
        assert ctx.id in ids
        assert ci.codes.get_context(ctx.id).language == "python"
    finally:
        ci.codes.delete_context(ctx.id)
    ids = [c.id for c in ci.codes.list_contexts(SupportedLanguage.PYTHON)]
    assert ctx.id not in ids


def test_contexts_are_isolated(shared):
    ci = interpreter(shared)
    a = ci.codes.create_context(SupportedLanguage.PYTHON)
    b = ci.codes.create_context(SupportedLanguage.PYTHON)
    try:
        ci.codes.run("only_in_a = 'A'", context=a)
        seen = ci.codes.run("print(only_in_a)", context=b)
        assert seen.error is not None and seen.error.name == "NameError"
        assert out(ci.codes.run("print(only_in_a)", context=a)) == "A\n"
    finally:
        ci.codes.delete_context(a.id)
        ci.codes.delete_context(b.id)


def test_python_error_reports_name_value_traceback(shared):
    ci = interpreter(shared)
    ex = ci.codes.run("print('before')\n1/0", language=SupportedLanguage.PYTHON)
    assert out(ex) == "before\n"
    assert ex.error is not None
    assert ex.error.name == "ZeroDivisionError"
    assert "division by zero" in ex.error.value
    assert any("ZeroDivisionError" in line for line in ex.error.traceback)


def test_default_python_context_runs_code(shared):
    ci = interpreter(shared)
    ex = ci.codes.run("import sys; print(sys.version_info[0])")
    assert ex.error is None
    assert out(ex) == "3\n"


def test_interrupt_running_code(shared):
    ci = interpreter(shared)
    ctx = ci.codes.create_context(SupportedLanguage.PYTHON)
    got_init = threading.Event()
    ids = []
    result = {}

    def on_init(msg):
        ids.append(msg.id)
        got_init.set()

    def run():
        result["ex"] = ci.codes.run("import time\nprint('looping', flush=True)\nwhile True: time.sleep(0.1)",
                                    context=ctx, handlers=ExecutionHandlersSync(on_init=on_init))

    try:
        t = threading.Thread(target=run, daemon=True)
        t.start()
        assert got_init.wait(30), "no init event while the code was running"
        time.sleep(1)
        ci.codes.interrupt(ids[0])
        t.join(30)
        assert not t.is_alive(), "the code stream did not end after interrupt"
        ex = result["ex"]
        assert out(ex) == "looping\n"
        assert ex.error is not None and ex.error.name == "KeyboardInterrupt"
        # The context survives the interrupt.
        assert out(ci.codes.run("print('after')", context=ctx)) == "after\n"
    finally:
        ci.codes.delete_context(ctx.id)


def test_metrics(shared):
    m = shared.get_metrics()
    assert m.cpu_count >= 1
    assert m.memory_total_in_mib > 0
    assert 0 < m.memory_used_in_mib <= m.memory_total_in_mib
    assert 0 <= m.cpu_used_percentage <= 100 * m.cpu_count
    assert abs(m.timestamp / 1000 - time.time()) < 300, m.timestamp

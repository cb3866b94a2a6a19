"""Small helpers shared by the SDK suites."""

from __future__ import annotations

import time


def out(execution) -> str:
    """An Execution's stdout lines joined by newlines (execd sends one event per line, without
    its line terminator, as upstream does)."""
    return "\n".join(m.text for m in execution.logs.stdout)


def err(execution) -> str:
    return "\n".join(m.text for m in execution.logs.stderr)


def sh(sandbox, command: str) -> str:
    """Runs a command that must succeed and returns its stdout lines joined by newlines."""
    ex = sandbox.commands.run(command)
    assert ex.error is None, f"{command!r} failed: {ex.error} (stderr {err(ex)!r})"
    return out(ex)


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.2, what: str = "condition"):
    """Polls predicate() until it returns a truthy value, which is returned."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value {last!r}")

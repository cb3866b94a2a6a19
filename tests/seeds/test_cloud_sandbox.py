"""Seed 001's own examples, replayed against a live sandboxd: the "Low-Level Client" (001-08/09/11:
tokens per user and role, a user sees only its own sessions; 001-16 `execute`; 001-13/14/15 the
pool's `acquire_sandbox`, `release_sandbox`, `get_sandbox_stats`), "Session Management" (001-05/06:
`x = 42` survives `pause()` and `Sandbox.resume`, a Freeze pause) and "Basic Usage"'s code and
command lines."""

from __future__ import annotations

import pytest

import time

import cloud_sandbox_compat
from cloud_sandbox_compat import AuthError, NotFoundError, Sandbox, SandboxClient, SandboxError

# The seed's public image, as this offline machine has it.
IMAGES = {"python:3.11-slim": "execd-test/python:bookworm"}


def test_the_low_level_client_example(sandboxd_dev):
    # As the seed writes it.
    client = SandboxClient(base_url=sandboxd_dev.url, images=IMAGES)

    # Get authentication token
    token_response = client.get_token(user_id="my-user", role="user")
    client.set_token(token_response["access_token"])
    assert token_response["user_id"] == "my-user" and token_response["role"] == "user"

    # Create a session
    session = client.create_session(image="python:3.11-slim", cpu_count=2, memory_mb=2048, ttl_hours=24)
    assert session.status == "running"
    assert [s.id for s in client.list_sessions()] == [session.id]
    assert client.get_session(session.id).image == IMAGES["python:3.11-slim"]

    # Another user sees none of it: not listed, not found, not deletable.
    other = SandboxClient(base_url=sandboxd_dev.url, images=IMAGES)
    other.set_token(other.get_token(user_id="someone-else")["access_token"])
    assert other.list_sessions() == []
    with pytest.raises(NotFoundError):
        other.get_session(session.id)
    with pytest.raises(NotFoundError):
        other.delete_session(session.id)

    # Pause and resume by id (001-12), then delete the session when done.
    client.pause_session(session.id)
    assert client.get_session(session.id).status == "paused"
    client.resume_session(session.id)
    assert client.get_session(session.id).status == "running"
    client.delete_session(session.id)
    assert client.list_sessions() == []
    with pytest.raises(NotFoundError):
        client.get_session(session.id)


def test_roles_limit_what_a_token_may_do(sandboxd_dev):
    viewer = SandboxClient(base_url=sandboxd_dev.url, images=IMAGES)
    viewer.set_token(viewer.get_token(user_id="reader", role="viewer")["access_token"])
    assert viewer.list_sessions() == []
    with pytest.raises(SandboxError) as refused:
        viewer.create_session(image="python:3.11-slim")
    assert refused.value.status == 403 and refused.value.code == "AUTH::FORBIDDEN"
    # A user cannot mint an admin token for itself.
    user = SandboxClient(base_url=sandboxd_dev.url)
    user.set_token(user.get_token(user_id="u1")["access_token"])
    with pytest.raises(SandboxError) as refused:
        user.get_token(user_id="u1", role="admin")
    assert refused.value.status == 403


def test_a_bad_token_is_an_auth_error(sandboxd_dev):
    client = SandboxClient(base_url=sandboxd_dev.url)
    client.set_token("not-a-token")
    with pytest.raises(AuthError) as e:
        client.list_sessions()
    assert e.value.code == "AUTH::INVALID_TOKEN"


def test_the_examples_execute(sandboxd_dev):
    client = SandboxClient(base_url=sandboxd_dev.url, images=IMAGES)
    client.set_token(client.get_token(user_id="executor")["access_token"])
    session = client.create_session(image="python:3.11-slim")
    try:
        # As the seed writes it (on the session's sandbox: pools come later).
        result = client.execute(sandbox_id=session.id, code="print('Hello!')", language="python", timeout=30)
        assert result.exit_code == 0
        assert result.stdout == "Hello!\n"
        assert result.duration_ms >= 0
        # A command with a working directory and environment.
        result = client.execute(sandbox_id=session.id, command="echo $GREETING from $(pwd)", work_dir="/tmp",
                                env={"GREETING": "hi"}, timeout=30)
        assert (result.exit_code, result.stdout) == (0, "hi from /tmp\n")
        failed = client.execute(sandbox_id=session.id, code="1/0", language="python")
        assert failed.exit_code == 1 and failed.raw["error"]["name"] == "ZeroDivisionError"
        # Someone else's sandbox is not found.
        other = SandboxClient(base_url=sandboxd_dev.url)
        other.set_token(other.get_token(user_id="not-the-owner")["access_token"])
        with pytest.raises(NotFoundError):
            other.execute(sandbox_id=session.id, command="true")
    finally:
        client.delete_session(session.id)


def _default_pool(url: str):
    """The pool the seed's `acquire_sandbox()` takes from (`default`), made by the dev mode's
    token-less admin, once it has a member ready; the admin client."""
    admin = SandboxClient(base_url=url)
    admin._call("POST", "/v1/pools", {
        "name": "default",
        "template": {"spec": {"containers": [{
            "name": "sandbox",
            "image": IMAGES["python:3.11-slim"],
            "command": ["tail", "-f", "/dev/null"],
            "resources": {"limits": {"cpu": "1", "memory": "512Mi"}},
        }]}},
        "capacitySpec": {"bufferMin": 1, "bufferMax": 1, "poolMin": 0, "poolMax": 2},
    })
    deadline = time.monotonic() + 120
    while admin.get_sandbox_stats()["available"] < 1:
        assert time.monotonic() < deadline, admin.get_sandbox_stats()
        time.sleep(0.2)
    return admin


def test_the_low_level_client_pool_lines(sandboxd_dev):
    admin = _default_pool(sandboxd_dev.url)
    try:
        # As the seed writes it.
        client = SandboxClient(base_url=sandboxd_dev.url)

        # Get authentication token
        token_response = client.get_token(user_id="my-user", role="user")
        client.set_token(token_response["access_token"])

        # Acquire sandbox from pool
        sandbox_info = client.acquire_sandbox()
        assert sandbox_info.status == "running"
        assert len(sandbox_info.container_id) == 64 and sandbox_info.ip
        stats = client.get_sandbox_stats()
        assert (stats["pool"], stats["allocated"]) == ("default", 1)

        # Execute code
        result = client.execute(
            sandbox_id=sandbox_info.sandbox_id,
            code="print('Hello!')",
            language="python",
            timeout=30
        )
        print(f"Exit code: {result.exit_code}")
        print(f"Output: {result.stdout}")
        assert (result.exit_code, result.stdout) == (0, "Hello!\n")

        # Release sandbox back to pool
        client.release_sandbox(sandbox_info.sandbox_id)
        assert client.get_sandbox_stats()["allocated"] == 0
        with pytest.raises(SandboxError) as twice:
            client.release_sandbox(sandbox_info.sandbox_id)
        assert (twice.value.status, twice.value.code) == (409, "POOL::NOT_ALLOCATED")
        # Another pool's name is not found.
        with pytest.raises(NotFoundError):
            SandboxClient(base_url=sandboxd_dev.url, pool="no-such-pool").acquire_sandbox()
    finally:
        admin._call("DELETE", "/v1/pools/default")


def test_the_session_management_example(sandboxd_dev):
    cloud_sandbox_compat.DEFAULT_IMAGES.update(IMAGES)
    # As the seed writes it.
    # Create and pause session for later
    sandbox = Sandbox.create(base_url=sandboxd_dev.url, user_id="user123")
    sandbox.run_code("x = 42")  # Set up state

    # Pause session (saves workspace state)
    session_id = sandbox.pause()
    print(f"Session paused: {session_id}")
    assert session_id == sandbox.id
    assert sandbox.client.get_session(session_id).status == "paused"

    # Later: Resume the session
    sandbox = Sandbox.resume(
        session_id=session_id,
        base_url=sandboxd_dev.url,
        user_id="user123"
    )
    result = sandbox.run_code("print(x)")  # State restored
    print(result.stdout)  # Output: 42
    assert result.stdout == "42\n"

    # Clean up when done
    sandbox.destroy()
    with pytest.raises(NotFoundError):
        sandbox.client.get_session(session_id)
    # Someone else cannot resume it.
    mine = Sandbox.create(base_url=sandboxd_dev.url, user_id="user123")
    try:
        mine.pause()
        with pytest.raises(NotFoundError):
            Sandbox.resume(session_id=mine.id, base_url=sandboxd_dev.url, user_id="someone-else")
    finally:
        mine.destroy()


def test_the_basic_usage_code_and_command_lines(sandboxd_dev):
    cloud_sandbox_compat.DEFAULT_IMAGES.update(IMAGES)
    # As the seed writes it (its file lines are not mapped).
    with Sandbox.create(
        base_url=sandboxd_dev.url,
        user_id="my-user-id",
        image="python:3.11-slim",
    ) as sandbox:
        # Execute Python code
        result = sandbox.run_code("""
import sys
print(f"Python version: {sys.version}")
print("Hello from sandbox!")
""")
        print(result.stdout)
        assert result.stdout.startswith("Python version: 3.") and result.stdout.endswith("Hello from sandbox!\n")

        # Run shell commands
        result = sandbox.run_command("ls -la /tmp")
        print(result.stdout)
        assert result.exit_code == 0 and result.stdout.startswith("total ")
        session_id = sandbox.id
    # The context manager destroyed it.
    with pytest.raises(NotFoundError):
        sandbox.client.get_session(session_id)

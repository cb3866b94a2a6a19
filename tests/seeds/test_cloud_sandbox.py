"""Seed 001's own "Low-Level Client" example, replayed against a live sandboxd for the rows
this part closes (001-08/09/11: tokens per user and role, a user sees only its own sessions),
and its `execute` line (001-16). The pool (`acquire_sandbox`) lines come with pools."""

from __future__ import annotations

import pytest

from cloud_sandbox_compat import AuthError, NotFoundError, SandboxClient, SandboxError

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

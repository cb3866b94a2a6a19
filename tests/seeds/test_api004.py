"""Seed 004's error body, replayed against a live sandboxd through the adapter: the seed's own
example (an out-of-range `timeout` on the seed's create-session call) and its other documented
control-plane errors come back with every field the seed documents."""

from __future__ import annotations

import pytest

from api004_compat import Api004Client, Api004Error
from conftest import DOCS_BASE

SEED_FIELDS = ("error_code", "description", "error_detail", "error_link", "solution")


@pytest.fixture
def client(sandboxd) -> Api004Client:
    return Api004Client(sandboxd.url, api_key=sandboxd.api_key,
                        templates={"python-datascience": "execd-test/python:bookworm"},
                        business_domain="seed-004")


def assert_seed_shape(err: Api004Error, client: Api004Client):
    for name in SEED_FIELDS:
        value = err.raw.get(name)
        assert isinstance(value, str) and value, f"{name} missing in {err.raw}"
    # The superset: sandboxd's own {code, message} is still there for parsers of that shape.
    assert err.raw["code"] and err.raw["message"] == err.error_detail
    assert err.error_link == f"{DOCS_BASE}/errors#{err.code}"
    assert err.request_id == client.last_request_id


@pytest.mark.parametrize("timeout", [0, 3601])
def test_the_seeds_invalid_timeout_example(client, timeout):
    # The seed's curl example for creating a session, with the timeout out of its 1–3600 range.
    with pytest.raises(Api004Error) as info:
        client.create_session(
            template_id="python-datascience",
            mode="ephemeral",
            timeout=timeout,
            resources={"cpu": "2", "memory": "2Gi", "disk": "5Gi"},
        )
    err = info.value
    assert err.status == 400
    assert err.error_code == "Sandbox.InvalidParameter"
    assert err.description == "Invalid parameter"
    assert "timeout" in err.error_detail
    assert_seed_shape(err, client)


def test_an_unknown_session_is_session_not_found(client):
    with pytest.raises(Api004Error) as info:
        client.get_session("sess_abc123def4567890")
    assert info.value.status == 404
    assert info.value.error_code == "Sandbox.SessionNotFound"
    assert "sess_abc123def4567890" in info.value.error_detail
    assert_seed_shape(info.value, client)


def test_a_bad_credential_is_unauthorized(sandboxd):
    client = Api004Client(sandboxd.url, api_key="not-the-key")
    with pytest.raises(Api004Error) as info:
        client.list_sessions()
    assert info.value.status == 401
    assert info.value.error_code == "Sandbox.Unauthorized"
    assert_seed_shape(info.value, client)


def test_without_the_header_the_body_stays_code_and_message(sandboxd):
    import json
    import urllib.error
    import urllib.request

    req = urllib.request.Request(sandboxd.url + "/v1/sandboxes/nope",
                                 headers={"OPEN-SANDBOX-API-KEY": sandboxd.api_key})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)
    assert info.value.code == 404
    assert sorted(json.loads(info.value.read())) == ["code", "message"]


def test_the_seeds_execute_status_result_example(client):
    # The seed's curl examples: create a session, submit the handler with its event, then read
    # the execution's status and result by id.
    session = client.create_session(template_id="python-datascience", timeout=300)
    try:
        execution = client.execute(
            session.id,
            code="def handler(event):\n    return {\"status\": \"ok\", \"data\": event}",
            language="python",
            timeout=30,
            event={"name": "Alice"},
        )
        assert execution.id.startswith("exec-")
        assert execution.status in ("pending", "running", "completed")
        result = client.get_execution_result(execution.id, wait=30)
        assert result["result"] == {"status": "ok", "data": {"name": "Alice"}}
        assert client.get_execution_status(execution.id).status == "completed"
    finally:
        client.delete_session(session.id)


def test_a_handler_exception_is_the_seeds_exec_exception(client):
    session = client.create_session(template_id="python-datascience", timeout=300)
    try:
        execution = client.execute(session.id, code="def handler(event):\n    raise ValueError('no')\n",
                                   event={})
        result = client.get_execution_result(execution.id, wait=30)
        assert client.get_execution_status(execution.id).status == "failed"
        assert result["error"]["code"] == "EXECUTION::HANDLER_ERROR"
        assert (result["error"]["name"], result["error"]["value"]) == ("ValueError", "no")
    finally:
        client.delete_session(session.id)


def test_an_unknown_execution_is_execution_not_found(client):
    with pytest.raises(Api004Error) as info:
        client.get_execution_status("exec_20240115_abc12345")
    assert info.value.status == 404
    assert info.value.error_code == "Sandbox.ExecutionNotFound"
    assert_seed_shape(info.value, client)

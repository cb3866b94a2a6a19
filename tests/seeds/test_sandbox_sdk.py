"""Seed 002's own examples for the rows this part closes (002-01/12/13): the Quick Start with
`get_metrics()`, and the rate-limit example (`time.sleep(e.retry_after / 1000)`, then the call
again), against a live sandboxd whose `read` class is tight enough to hit."""

from __future__ import annotations

import secrets
import time

import pytest

from conftest import serve
from sandbox_sdk_compat import RateLimitError, SandboxSDK

TEMPLATES = {"python-3.11": "execd-test/python:bookworm"}


@pytest.fixture(scope="module")
def limited():
    # `read`: one request a second, a burst of four.
    with serve("sandboxd-limited", secrets.token_hex(16), "--rate-read", "1", "--burst-read", "4") as d:
        yield d


def test_quick_start_and_get_metrics(limited):
    sdk = SandboxSDK({"api_key": limited.api_key, "server_url": limited.url, "enable_logging": True}, TEMPLATES)
    try:
        sandbox = sdk.create_sandbox({"template_id": "python-3.11", "name": "My Sandbox"})
        sandbox_id = sandbox["sandbox"]["id"]
        result = sdk.run_code(sandbox_id, "print('Hello, World!')\n6 * 7")
        assert "".join(result["logs"].stdout).strip() == "Hello, World!"
        assert result["execution"].text == "42"

        metrics = sdk.get_metrics()
        assert set(metrics) == {
            "total_requests", "successful_requests", "failed_requests", "average_response_time",
            "total_execution_time", "active_sandboxes", "last_updated",
        }
        assert metrics["total_requests"] >= 1
        assert metrics["active_sandboxes"] == 1
        sdk.delete_sandbox(sandbox_id)
    finally:
        sdk.disconnect()


def test_rate_limit_example(limited):
    sdk = SandboxSDK({"api_key": limited.api_key, "server_url": limited.url})
    caught = None
    for _ in range(20):
        try:
            sdk.list_sandboxes()
        except RateLimitError as e:
            caught = e
            break
    assert caught is not None, "a burst of reads was never limited"
    assert caught.retry_after >= 1000 and caught.code == "RATE_LIMIT::EXCEEDED"
    # As the seed writes it.
    time.sleep(caught.retry_after / 1000)  # Convert to seconds
    assert isinstance(sdk.list_sandboxes(), list)

"""Seed 002's own examples: the Quick Start (a sandbox from the template `python-3.11`, named)
with `get_metrics()`; the rate-limit example (`time.sleep(e.retry_after / 1000)`, then the call
again) against a live sandboxd whose `read` class is tight enough to hit; and Template
Management (`get_templates`, `get_template`, `create_template` with an `install_command` that is
built once and baked into the sandboxes made from it)."""

from __future__ import annotations

import json
import secrets
import time
import urllib.request

import pytest

from conftest import serve
from sandbox_sdk_compat import RateLimitError, SandboxSDK

# The seed's template id → the sandboxd template the fixture makes for it (`python-3.11` is not
# a valid template name: names are DNS labels).
TEMPLATES = {"python-3.11": "python-3-11"}
PYTHON_IMAGE = "execd-test/python:bookworm"


def make_python_template(d):
    """What an operator does once: the template the seed's examples name."""
    req = urllib.request.Request(
        d.url + "/v1/templates",
        data=json.dumps({"name": "python-3-11", "spec": {"image": PYTHON_IMAGE, "language": "python"}}).encode(),
        headers={"OPEN-SANDBOX-API-KEY": d.api_key, "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 201


@pytest.fixture(scope="module")
def limited():
    # `read`: one request a second, a burst of four.
    with serve("sandboxd-limited", secrets.token_hex(16), "--rate-read", "1", "--burst-read", "4") as d:
        make_python_template(d)
        yield d


@pytest.fixture(scope="module")
def plain():
    with serve("sandboxd-sdk002", secrets.token_hex(16)) as d:
        make_python_template(d)
        yield d


def test_quick_start_and_get_metrics(limited):
    sdk = SandboxSDK({"api_key": limited.api_key, "server_url": limited.url, "enable_logging": True}, TEMPLATES)
    try:
        sandbox = sdk.create_sandbox({"template_id": "python-3.11", "name": "My Sandbox"})
        sandbox_id = sandbox["sandbox"]["id"]
        assert sandbox["sandbox"]["name"] == "My Sandbox"
        assert sandbox["sandbox"]["status"] == "running"
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


def test_create_sandbox_options_and_status(plain):
    sdk = SandboxSDK({"api_key": plain.api_key, "server_url": plain.url}, TEMPLATES)
    response = sdk.create_sandbox({
        "template_id": "python-3.11",  # Required
        "name": "My Sandbox",          # Optional
        "expiry_time": 3600000,        # Optional: in milliseconds
        "initial_env_vars": {"GREETING": "hi"},
        "metadata": {"team": "seed-002"},
    })
    sandbox_id = response["sandbox"]["id"]
    try:
        assert sdk.get_sandbox_status(sandbox_id) == "running"
        mine = [s for s in sdk.list_sandboxes() if s["id"] == sandbox_id]
        assert len(mine) == 1
        listed = mine[0]
        assert listed["name"] == "My Sandbox" and listed["templateName"] == "python-3-11"
        assert listed["timeout"] == 3600 and listed["env"] == {"GREETING": "hi"}
        assert listed["metadata"]["team"] == "seed-002"
        result = sdk.run_code(sandbox_id, "import os\nos.environ['GREETING']")
        assert result["execution"].text == "'hi'"
    finally:
        sdk.delete_sandbox(sandbox_id)
    assert sandbox_id not in [s["id"] for s in sdk.list_sandboxes()]


def test_template_management(plain):
    sdk = SandboxSDK({"api_key": plain.api_key, "server_url": plain.url}, TEMPLATES)
    # As the seed writes it, but with an image this machine has (no registry is reachable) and
    # an install command that needs no network.
    template = sdk.create_template({
        "name": "Custom Python",
        "language": "python",
        "version": "3.11",
        "docker_image": PYTHON_IMAGE,
        "install_command": "mkdir -p /opt/app && echo baked > /opt/app/marker && echo installing",
    })
    template_id = template["templateId"]
    assert template["name"] == "custom-python" and template["displayName"] == "Custom Python"
    assert template["status"]["phase"] in ("Pending", "Building", "Succeeded")

    deadline = time.monotonic() + 300
    while (template := sdk.get_template(template_id))["status"]["phase"] in ("Pending", "Building"):
        assert time.monotonic() < deadline, f"the build never finished: {template}"
        time.sleep(0.5)
    assert template["status"]["phase"] == "Succeeded", template

    response = sdk.get_templates(page=1, page_size=10)
    assert set(response) == {"templates", "total", "page", "pageSize"}
    assert response["total"] == 2 and (response["page"], response["pageSize"]) == (1, 10)
    assert {t["name"] for t in response["templates"]} == {"python-3-11", "custom-python"}
    one = sdk.get_templates(page=2, page_size=1)
    assert len(one["templates"]) == 1 and one["total"] == 2

    sandbox_id = sdk.create_sandbox({"template_id": template_id, "name": "built"})["sandbox"]["id"]
    try:
        result = sdk.run_code(sandbox_id, "open('/opt/app/marker').read().strip()")
        assert result["execution"].text == "'baked'", result
    finally:
        sdk.delete_sandbox(sandbox_id)
        # Not the seed's: deleting the template removes the image its build committed, which
        # would otherwise outlive this sandboxd on the machine's engine.
        sdk._call("DELETE", f"/v1/templates/{template_id}")


def test_batch_execution_example(plain):
    sdk = SandboxSDK({"api_key": plain.api_key, "server_url": plain.url}, TEMPLATES)
    sandbox_id = sdk.create_sandbox({"template_id": "python-3.11"})["sandbox"]["id"]
    try:
        # As the seed writes it.
        jobs = [
            {"id": "job-1", "code": "2+2", "timeout": 5000},
            {"id": "job-2", "code": "3*3", "timeout": 5000},
        ]
        results = sdk.execute_batch(sandbox_id, jobs)
        assert [(r["job_id"], r["success"]) for r in results] == [("job-1", True), ("job-2", True)]
        assert [r["execution"].text for r in results] == ["4", "9"]
        # stop_on_error: the job after a failing one is never run.
        results = sdk.execute_batch(sandbox_id, [
            {"id": "a", "command": "true"}, {"id": "b", "command": "exit 1"}, {"id": "c", "command": "echo c"},
        ], {"stop_on_error": True})
        assert [r["success"] for r in results] == [True, False, False]
        assert results[2]["error"]["code"] == "EXECUTION::CANCELLED"
    finally:
        sdk.delete_sandbox(sandbox_id)

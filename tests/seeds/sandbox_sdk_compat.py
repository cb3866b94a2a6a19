"""Seed 002 (the Sandbox SDK, a Python port of a TypeScript SDK) as a client, mapped onto
sandboxd's /v1.

`SandboxSDK({api_key, server_url, ...})` creates sandboxes, runs code, reads `get_metrics()` and
raises `RateLimitError` with `retry_after` in **milliseconds**. This adapter keeps the seed's
names and shapes and maps them:

- `api_key` → `OPEN-SANDBOX-API-KEY`;
- `create_sandbox({template_id, name, expiry_time, initial_env_vars, metadata})` →
  `POST /v1/sandboxes` with `templateId` (a sandboxd template id or name; the caller's table
  maps the seed's ids such as `python-3.11`, which is not a valid template name here, onto
  one), `name`, `timeout` = `expiry_time` / 1000, `env`, `metadata`; the template gives image
  and entrypoint;
- `get_sandbox_status(id)` → the seed's words for sandboxd's states (Pending → creating,
  Running → running, Paused → stopped, Failed → error, Terminated → terminated);
- `get_templates(page, page_size)` → `GET /v1/templates?page=&pageSize=`, reshaped to
  `{templates, total, page, pageSize}`; `get_template(id)` → `GET /v1/templates/{id}`;
- `create_template({name, language, version, docker_image, install_command})` →
  `POST /v1/templates`: the seed's free-form `name` becomes `displayName` and, lowercased to a
  DNS label, the template's `name`; `install_command` is built into an image once (design
  §7.6), so the template answers `Pending`/`Building` until `Succeeded`;
- `run_code(id, code)` → execd's `POST /code` through sandboxd's server proxy, the SSE read to
  its end; `execution.text` is the last expression's `text/plain`, `logs.stdout` the lines;
- `execute_batch(id, jobs)` → `POST /v1/sandboxes/{id}/executions/batch?wait=300` with each
  job's `timeout` converted from the seed's milliseconds to seconds (rounded up); a batch
  still running after the wait (202) is polled at `GET /v1/executions/batches/{id}`. One result
  per job, in order: `{job_id, success, execution (text), logs (stdout/stderr lines), error,
  duration_ms}`;
- `get_metrics()` → `GET /v1/metrics/summary` (this caller's), in the seed's snake_case keys;
- a 429 → `RateLimitError.retry_after` = `Retry-After` seconds × 1000 (what the seed's example
  sleeps `retry_after / 1000` on).
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field


class SandboxSDKError(Exception):
    """Base exception: status, sandboxd's code and message."""

    def __init__(self, status: int, code: str | None, message: str):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class SandboxError(SandboxSDKError):
    """Any other failed call."""


class RateLimitError(SandboxSDKError):
    """429; `retry_after` in milliseconds."""

    def __init__(self, status: int, code: str | None, message: str, retry_after: int):
        super().__init__(status, code, message)
        self.retry_after = retry_after


@dataclass
class Execution:
    text: str | None = None


@dataclass
class Logs:
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)


# sandboxd's states → the seed's `get_sandbox_status` words.
STATES = {"Pending": "creating", "Running": "running", "Paused": "stopped", "Stopping": "stopped",
          "Failed": "error", "Terminated": "terminated"}


def slug(name: str) -> str:
    """A free-form name as a template name: lowercase, runs of other characters as `-`."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:63].strip("-")


class SandboxSDK:
    """The seed's SDK object."""

    def __init__(self, config: dict, templates: dict[str, str] | None = None):
        self.api_key = config["api_key"]
        self.server_url = config["server_url"].rstrip("/")
        self.timeout = config.get("timeout", 120_000) / 1000
        self.templates = templates or {}

    def create_sandbox(self, options: dict) -> dict:
        body = {
            "templateId": self.templates.get(options["template_id"], options["template_id"]),
            "name": options.get("name"),
            "env": options.get("initial_env_vars") or {},
            "metadata": options.get("metadata") or {},
        }
        if "expiry_time" in options:
            body["timeout"] = int(options["expiry_time"] / 1000)
        created = self._call("POST", "/v1/sandboxes", body)
        return {"sandbox": {"id": created["id"], "name": created.get("name"), "status": STATES[created["status"]["state"]]}}

    def get_sandbox_status(self, sandbox_id: str) -> str:
        return STATES[self._call("GET", f"/v1/sandboxes/{sandbox_id}")["status"]["state"]]

    def get_templates(self, page: int = 1, page_size: int = 10) -> dict:
        listed = self._call("GET", f"/v1/templates?page={page}&pageSize={page_size}")
        p = listed["pagination"]
        return {"templates": listed["items"], "total": p["totalItems"], "page": p["page"], "pageSize": p["pageSize"]}

    def get_template(self, template_id: str) -> dict:
        return self._call("GET", f"/v1/templates/{template_id}")

    def create_template(self, options: dict) -> dict:
        spec = {"image": options["docker_image"], "language": options.get("language")}
        if options.get("version"):
            spec["languageVersion"] = options["version"]
        if options.get("install_command"):
            spec["installCommand"] = options["install_command"]
        body = {"name": slug(options["name"]), "displayName": options["name"], "spec": spec}
        return self._call("POST", "/v1/templates", body)

    def list_sandboxes(self) -> list[dict]:
        return self._call("GET", "/v1/sandboxes?pageSize=200")["items"]

    def delete_sandbox(self, sandbox_id: str) -> None:
        self._call("DELETE", f"/v1/sandboxes/{sandbox_id}")

    def run_code(self, sandbox_id: str, code: str) -> dict:
        execution, logs, error = Execution(), Logs(), None
        for event in self._sse(f"/v1/sandboxes/{sandbox_id}/proxy/44772/code", {"code": code, "context": {"language": "python"}}):
            kind = event.get("type")
            if kind == "stdout":
                logs.stdout.append(event.get("text", ""))
            elif kind == "stderr":
                logs.stderr.append(event.get("text", ""))
            elif kind == "result":
                execution.text = (event.get("results") or {}).get("text", event.get("text"))
            elif kind == "error":
                error = event.get("error")
        return {"execution": execution, "logs": logs, "error": error}

    def execute_batch(self, sandbox_id: str, jobs: list[dict], options: dict | None = None) -> list[dict]:
        converted = []
        for job in jobs:
            job = dict(job)
            if "timeout" in job:
                job["timeout"] = max(1, -(-int(job["timeout"]) // 1000))
            converted.append(job)
        body: dict = {"jobs": converted}
        for seed, ours in (("concurrency", "concurrency"), ("stop_on_error", "stopOnError")):
            if options and seed in options:
                body[ours] = options[seed]
        summary = self._call("POST", f"/v1/sandboxes/{sandbox_id}/executions/batch?wait=300", body)
        while summary["pending"]:
            time.sleep(0.2)
            summary = self._call("GET", f"/v1/executions/batches/{summary['batchId']}")
        results = []
        for r in summary["results"]:
            results.append({
                "job_id": r["jobId"],
                "success": r["success"],
                "execution": Execution(text=r.get("text")),
                "logs": Logs(stdout=r.get("stdout", "").splitlines(), stderr=r.get("stderr", "").splitlines()),
                "error": r.get("error"),
                "duration_ms": r.get("durationMs"),
            })
        return results

    def get_metrics(self) -> dict:
        m = self._call("GET", "/v1/metrics/summary")
        return {
            "total_requests": m["totalRequests"],
            "successful_requests": m["successfulRequests"],
            "failed_requests": m["failedRequests"],
            "average_response_time": m["averageResponseTimeMs"],
            "total_execution_time": m["totalExecutionTimeMs"],
            "active_sandboxes": m["activeSandboxes"],
            "last_updated": m["lastUpdated"],
        }

    def disconnect(self) -> None:
        pass

    # Transport

    def _request(self, method: str, path: str, body: dict | None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server_url + path, data=data, method=method)
        req.add_header("OPEN-SANDBOX-API-KEY", self.api_key)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            return urllib.request.urlopen(req, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = {}
            code, message = parsed.get("code"), parsed.get("message", raw.decode(errors="replace"))
            if e.code == 429:
                seconds = float(e.headers.get("Retry-After") or 1)
                raise RateLimitError(e.code, code, message, int(seconds * 1000)) from None
            raise SandboxError(e.code, code, message) from None

    def _call(self, method: str, path: str, body: dict | None = None):
        with self._request(method, path, body) as r:
            raw = r.read()
            return json.loads(raw) if raw else None

    def _sse(self, path: str, body: dict):
        with self._request("POST", path, body) as r:
            for line in r:
                line = line.decode().rstrip("\n")
                if line.startswith("data:"):
                    yield json.loads(line[5:].strip())

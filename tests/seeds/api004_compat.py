"""Seed 004 (the Sandbox API docs) as a client, mapped onto sandboxd's /v1.

The seed's control plane is `/api/v1/sessions…` with `Authorization: Bearer`, the headers
`x-request-id` and `x-business-domain`, and one error body:

    {"error_code": "Sandbox.InvalidParameter", "description": "Invalid parameter",
     "error_detail": "Field 'timeout' must be between 1 and 3600",
     "error_link": "https://docs.example.com/errors/invalid-parameter",
     "solution": "Please check your request parameters"}

This adapter exposes the seed's session calls and raises `Api004Error` carrying exactly those
fields. What it maps:

- sessions are sandboxes (`/v1/sandboxes`); `template_id` → an image, through the table the
  caller gives (sandboxd's templates come later, design §7–8); `resources.cpu/memory` →
  `resourceLimits`; `resources.disk` and `mode` are not sent yet (design §8, §12.4).
- every request carries `X-Error-Format: detailed`, so sandboxd answers errors with the seed's
  fields (a superset of `{code, message}`), and an `x-request-id` (echoed in the body's
  `request_id`).
- the credential: `Authorization: Bearer <token>`; with `api_key`, sandboxd's
  `OPEN-SANDBOX-API-KEY` instead (the bootstrap admin), until tokens land.
- `execute(session_id, code, language, timeout, event)` is the seed's
  `POST /sessions/{id}/execute` → `POST /v1/sandboxes/{id}/executions` (a handler when the
  event is given); `get_execution_status` and `get_execution_result` are the seed's
  `GET /executions/{id}/status` and `/result` → the same paths under `/v1`. sandboxd's states
  map onto the seed's (`Queued` → pending, `Running` → running, `Succeeded` → completed,
  `Failed`/`Lost` → failed, `TimedOut` → timeout, `Cancelled` → cancelled), and a result
  asked for too early is the seed's 409.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field


@dataclass
class Api004Error(Exception):
    """An error response in the seed's shape."""

    status: int
    error_code: str
    description: str
    error_detail: str
    solution: str
    error_link: str | None = None
    request_id: str | None = None
    # sandboxd's own code, e.g. SANDBOX::INVALID_PARAMETER.
    code: str | None = None
    raw: dict = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status} {self.error_code}: {self.error_detail}"


@dataclass
class Session:
    """The seed's session: id, status and the timeout it was made with."""

    id: str
    status: str
    timeout: int | None
    raw: dict


# sandboxd's states → the seed's session statuses.
_STATUS = {
    "Pending": "creating",
    "Running": "running",
    "Pausing": "running",
    "Paused": "paused",
    "Resuming": "running",
    "Stopping": "terminating",
    "Terminated": "terminated",
    "Failed": "failed",
}


@dataclass
class Execution:
    """The seed's execution: id and status."""

    id: str
    status: str
    raw: dict


# sandboxd's execution states → the seed's.
_EXEC_STATUS = {
    "Acquiring": "pending",
    "Queued": "pending",
    "Running": "running",
    "Succeeded": "completed",
    "Failed": "failed",
    "Lost": "failed",
    "TimedOut": "timeout",
    "Cancelled": "cancelled",
}


class Api004Client:
    def __init__(self, base_url: str, token: str | None = None, api_key: str | None = None,
                 templates: dict[str, str] | None = None, business_domain: str | None = None):
        self.base_url = base_url.rstrip("/")
        self.token, self.api_key = token, api_key
        self.templates = templates or {}
        self.business_domain = business_domain

    # The seed's session calls.

    def create_session(self, template_id: str, mode: str = "persistent", timeout: int | None = None,
                       resources: dict | None = None) -> Session:
        body: dict = {
            "image": {"uri": self.templates.get(template_id, template_id)},
            "entrypoint": ["sleep", "infinity"],
            "metadata": {"template_id": template_id},
        }
        if timeout is not None:
            body["timeout"] = timeout
        limits = {k: v for k, v in (resources or {}).items() if k in ("cpu", "memory")}
        if limits:
            body["resourceLimits"] = limits
        return self._session(self._call("POST", "/v1/sandboxes", body))

    def get_session(self, session_id: str) -> Session:
        return self._session(self._call("GET", f"/v1/sandboxes/{session_id}"))

    def delete_session(self, session_id: str) -> None:
        self._call("DELETE", f"/v1/sandboxes/{session_id}")

    def list_sessions(self) -> list[Session]:
        return [self._session(s) for s in self._call("GET", "/v1/sandboxes")["items"]]

    # The seed's execution calls.

    def execute(self, session_id: str, code: str, language: str = "python", timeout: int = 30,
                event=None) -> Execution:
        body: dict = {"code": code, "language": language, "timeout": timeout}
        if event is not None:
            body["event"] = event
        return self._execution(self._call("POST", f"/v1/sandboxes/{session_id}/executions", body))

    def get_execution_status(self, execution_id: str) -> Execution:
        return self._execution(self._call("GET", f"/v1/executions/{execution_id}/status"))

    def get_execution_result(self, execution_id: str, wait: float | None = None) -> dict:
        query = "" if wait is None else f"?wait={wait}"
        return self._call("GET", f"/v1/executions/{execution_id}/result{query}")

    @staticmethod
    def _execution(e: dict) -> Execution:
        state = e.get("status", {}).get("state", "")
        return Execution(id=e["id"], status=_EXEC_STATUS.get(state, state.lower()), raw=e)

    # The wire.

    last_request_id: str | None = None

    def _call(self, method: str, path: str, body=None):
        data = None if body is None else json.dumps(body).encode()
        self.last_request_id = uuid.uuid4().hex
        headers = {"X-Error-Format": "detailed", "x-request-id": self.last_request_id}
        if self.business_domain:
            headers["x-business-domain"] = self.business_domain
        if self.api_key is not None:
            headers["OPEN-SANDBOX-API-KEY"] = self.api_key
        elif self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        if data is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                raw = r.read()
                return json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raise _error(e.code, e.read()) from None

    @staticmethod
    def _session(s: dict) -> Session:
        state = s.get("status", {}).get("state", "")
        return Session(id=s["id"], status=_STATUS.get(state, state.lower()), timeout=s.get("timeout"), raw=s)


def _error(status: int, raw: bytes) -> Api004Error:
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict) or "error_code" not in body:
        # Not the seed's shape: say so rather than invent the fields.
        text = raw.decode("utf-8", "replace")
        return Api004Error(status, "Sandbox.InternalError", "Unexpected error body", text, "", raw={"text": text})
    return Api004Error(
        status=status,
        error_code=body["error_code"],
        description=body["description"],
        error_detail=body["error_detail"],
        solution=body["solution"],
        error_link=body.get("error_link"),
        request_id=body.get("request_id"),
        code=body.get("code"),
        raw=body,
    )

"""Seed 000 (the LiteBoxd Python SDK reference) as a client, mapped onto sandboxd's /v1.

The seed's `Client(base_url, timeout, auth_token, headers)` has four services: `sandbox`,
`template`, `prepull` and `import_export`, typed errors by status (`NotFoundError` 404,
`ConflictError` 409, `BadRequestError` 400, `UnauthorizedError` 401, `InternalServerError`
500), and lowercase states. What this adapter maps:

- templates are sandboxd's templates by name (`/v1/templates/{name}`), their versions,
  rollback, and YAML export/import (`/v1/templates/export`, `/v1/templates/import`);
- `sandbox.create(template, template_version, overrides{cpu, memory, ttl, env})` is
  `POST /v1/sandboxes` with `templateId` (a name), `templateVersion`, and the overrides as
  `resourceLimits`, `timeout` and `env`;
- a sandbox's `access_url`/`access_token` come from `GET …/endpoints/44772`, and files go
  through execd's `/files/upload` and `/files/download` there;
- `get_logs` is `diagnostics/logs?scope=all` (the container's output, sandboxd's lifecycle lines,
  execd's own log) and `diagnostics/events?scope=all` (the event journal), as text;
- prepulls are `/v1/prepulls`; states map to the seed's lowercase names.

- `sandbox.execute(id, command=[…], timeout=30)` is a synchronous execution (design §13.1):
  `POST /v1/sandboxes/{id}/executions?wait=<timeout+5>` with `argv` (no shell, as the seed's
  list); should the run outlive the wait (202), the result is polled. `ExecResult` carries
  `exit_code`, `stdout`, `stderr`.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field


class LiteBoxdError(Exception):
    """The SDK's base error."""


@dataclass
class APIError(LiteBoxdError):
    status_code: int
    message: str
    code: str = ""
    raw: dict = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status_code} {self.code}: {self.message}"


class NotFoundError(APIError):
    pass


class ConflictError(APIError):
    pass


class BadRequestError(APIError):
    pass


class UnauthorizedError(APIError):
    pass


class InternalServerError(APIError):
    pass


class SandboxFailedError(LiteBoxdError):
    def __init__(self, sandbox_id: str, message: str):
        super().__init__(f"sandbox {sandbox_id} failed: {message}")
        self.sandbox_id, self.message = sandbox_id, message


class PrepullFailedError(LiteBoxdError):
    def __init__(self, task_id: str, error: str):
        super().__init__(f"prepull {task_id} failed: {error}")
        self.task_id, self.error = task_id, error


_BY_STATUS = {400: BadRequestError, 401: UnauthorizedError, 404: NotFoundError, 409: ConflictError,
              500: InternalServerError}

# sandboxd's states → the seed's SandboxStatus.
_SANDBOX_STATUS = {"Pending": "pending", "Running": "running", "Paused": "running", "Stopping": "terminating",
                   "Terminated": "succeeded", "Failed": "failed"}
# sandboxd's prepull states → the seed's PrepullStatus (Cancelled has no seed name: failed).
_PREPULL_STATUS = {"Pending": "pending", "Pulling": "pulling", "Completed": "completed", "Failed": "failed",
                   "Cancelled": "failed"}


@dataclass
class Sandbox:
    id: str
    image: str
    cpu: str | None
    memory: str | None
    ttl: int | None
    env: dict | None
    status: str
    template: str | None
    template_version: int | None
    created_at: str
    expires_at: str | None
    access_token: str | None
    access_url: str | None
    reason: str | None = None
    message: str | None = None


@dataclass
class Template:
    id: str
    name: str
    display_name: str | None
    description: str | None
    tags: list
    author: str | None
    is_public: bool
    latest_version: int
    created_at: str
    updated_at: str
    spec: dict


@dataclass
class PrepullTask:
    id: str
    image: str
    status: str
    progress: dict | None
    template: str | None
    error: str | None
    started_at: str | None
    completed_at: str | None


def _template(t: dict) -> Template:
    return Template(t["templateId"], t["name"], t.get("displayName"), t.get("description"), t.get("tags", []),
                    t.get("author"), t["isPublic"], t["latestVersion"], t["createdAt"], t["updatedAt"], t["spec"])


class _Http:
    def __init__(self, base_url: str, timeout: float, auth_token: str | None, headers: dict | None):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.headers = dict(headers or {})
        if auth_token:
            self.headers["Authorization"] = f"Bearer {auth_token}"

    def call(self, method: str, path: str, body=None, *, raw: bytes | None = None, content_type: str | None = None,
             query: dict | None = None, base: str | None = None, extra_headers: dict | None = None):
        url = (base or self.base_url) + path
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        headers = {**self.headers, "X-Request-ID": uuid.uuid4().hex, **(extra_headers or {})}
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif content_type:
            headers["Content-Type"] = content_type
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                payload = resp.read()
                kind = resp.headers.get("Content-Type", "")
                return json.loads(payload) if payload and "json" in kind else payload
        except urllib.error.HTTPError as e:
            payload = e.read()
            try:
                body = json.loads(payload)
            except ValueError:
                body = {"message": payload.decode(errors="replace")}
            cls = _BY_STATUS.get(e.code, APIError)
            raise cls(e.code, body.get("message", ""), body.get("code", ""), body) from None


@dataclass
class ExecResult:
    """The seed's `execute` answer."""

    exit_code: int
    stdout: str
    stderr: str
    raw: dict = field(repr=False, default_factory=dict)


class SandboxService:
    def __init__(self, http: _Http):
        self._http = http

    def execute(self, sandbox_id: str, command: list[str], *, timeout: int = 30) -> ExecResult:
        wait = min(timeout + 5, 300)
        e = self._http.call("POST", f"/sandboxes/{sandbox_id}/executions", {"argv": command, "timeout": timeout},
                            query={"wait": wait})
        while e["status"]["state"] in ("Acquiring", "Queued", "Running"):
            try:
                e = self._http.call("GET", f"/executions/{e['id']}/result", query={"wait": 30})
            except ConflictError:
                continue
        return ExecResult(exit_code=e.get("exitCode", -1), stdout=e.get("stdout", ""), stderr=e.get("stderr", ""),
                          raw=e)

    def create(self, template: str, *, template_version: int | None = None, overrides: dict | None = None) -> Sandbox:
        body: dict = {"templateId": template}
        if template_version is not None:
            body["templateVersion"] = template_version
        o = overrides or {}
        limits = {k: o[k] for k in ("cpu", "memory") if o.get(k) is not None}
        if limits:
            body["resourceLimits"] = limits
        if o.get("ttl") is not None:
            body["timeout"] = o["ttl"]
        if o.get("env"):
            body["env"] = o["env"]
        created = self._http.call("POST", "/sandboxes", body)
        return self.get(created["id"])

    def list(self) -> list[Sandbox]:
        page = self._http.call("GET", "/sandboxes", query={"pageSize": 200})
        return [self._sandbox(s) for s in page["items"]]

    def get(self, sandbox_id: str) -> Sandbox:
        return self._sandbox(self._http.call("GET", f"/sandboxes/{sandbox_id}"))

    def delete(self, sandbox_id: str) -> None:
        self._http.call("DELETE", f"/sandboxes/{sandbox_id}")

    def get_logs(self, sandbox_id: str) -> dict:
        """The seed's `LogsResult`: `logs` is every log scope (the container's output, sandboxd's
        lifecycle lines and execd's own log, each under a `=== scope ===` header), `events` every
        event of the journal, one line each (design §14.1: `logs?scope=all` + `events?scope=all`)."""
        logs = self._http.call("GET", f"/sandboxes/{sandbox_id}/diagnostics/logs", query={"scope": "all"})
        events = self._http.call("GET", f"/sandboxes/{sandbox_id}/diagnostics/events", query={"scope": "all"})
        return {"logs": logs["content"], "events": [e for e in events["content"].splitlines() if e],
                "warnings": logs.get("warnings", []) + events.get("warnings", [])}

    def _execd(self, sandbox_id: str) -> tuple[str, str]:
        ep = self._http.call("GET", f"/sandboxes/{sandbox_id}/endpoints/44772")
        headers = {k.lower(): v for k, v in (ep.get("headers") or {}).items()}
        return "http://" + ep["endpoint"], headers.get("x-execd-access-token", "")

    def upload_file(self, sandbox_id: str, path: str, content: bytes, *,
                    content_type: str = "application/octet-stream") -> None:
        url, token = self._execd(sandbox_id)
        boundary = uuid.uuid4().hex
        meta = json.dumps({"path": path})
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"metadata\"\r\n"
                f"Content-Type: application/json\r\n\r\n{meta}\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n"
                f"Content-Type: {content_type}\r\n\r\n").encode() + content + f"\r\n--{boundary}--\r\n".encode()
        self._http.call("POST", "/files/upload", raw=body, content_type=f"multipart/form-data; boundary={boundary}",
                        base=url, extra_headers={"X-EXECD-ACCESS-TOKEN": token})

    def download_file(self, sandbox_id: str, path: str) -> bytes:
        url, token = self._execd(sandbox_id)
        return self._http.call("GET", "/files/download", query={"path": path}, base=url,
                               extra_headers={"X-EXECD-ACCESS-TOKEN": token})

    def wait_for_ready(self, sandbox_id: str, *, poll_interval: float = 2.0, timeout: float = 300.0) -> Sandbox:
        deadline = time.monotonic() + timeout
        while True:
            sb = self.get(sandbox_id)
            if sb.status == "running":
                return sb
            if sb.status == "failed":
                raise SandboxFailedError(sandbox_id, sb.message or sb.reason or "failed")
            if time.monotonic() > deadline:
                raise TimeoutError(f"sandbox {sandbox_id} is still {sb.status}")
            time.sleep(poll_interval)

    def _sandbox(self, s: dict) -> Sandbox:
        limits = s.get("resourceLimits") or {}
        token = url = None
        if s["status"]["state"] == "Running":
            url, token = self._execd(s["id"])
        ttl = None
        if s.get("expiresAt"):
            from datetime import datetime
            parse = lambda t: datetime.fromisoformat(t.replace("Z", "+00:00"))
            ttl = round((parse(s["expiresAt"]) - parse(s["createdAt"])).total_seconds())
        return Sandbox(s["id"], (s.get("image") or {}).get("uri", ""), limits.get("cpu"), limits.get("memory"), ttl,
                       s.get("env"), _SANDBOX_STATUS.get(s["status"]["state"], "unknown"), s.get("templateName"),
                       s.get("templateVersion"), s["createdAt"], s.get("expiresAt"), token, url,
                       s["status"].get("reason"), s["status"].get("message"))


class TemplateService:
    def __init__(self, http: _Http):
        self._http = http

    def create(self, request: dict) -> Template:
        return _template(self._http.call("POST", "/templates", request))

    def list(self, *, tag: str | None = None, search: str | None = None, page: int = 1, page_size: int = 20) -> dict:
        r = self._http.call("GET", "/templates", query={"tag": tag, "search": search, "page": page,
                                                        "pageSize": page_size})
        return {"items": [_template(t) for t in r["items"]], "total": r["pagination"]["totalItems"],
                "page": r["pagination"]["page"], "page_size": r["pagination"]["pageSize"]}

    def get(self, name: str) -> Template:
        return _template(self._http.call("GET", f"/templates/{name}"))

    def update(self, name: str, request: dict) -> Template:
        return _template(self._http.call("PUT", f"/templates/{name}", request))

    def delete(self, name: str) -> None:
        self._http.call("DELETE", f"/templates/{name}")

    def list_versions(self, name: str) -> dict:
        r = self._http.call("GET", f"/templates/{name}/versions", query={"pageSize": 200})
        return {"items": r["items"], "total": r["pagination"]["totalItems"]}

    def get_version(self, name: str, version: int) -> dict:
        return self._http.call("GET", f"/templates/{name}/versions/{version}")

    def rollback(self, name: str, target_version: int, *, changelog: str | None = None) -> dict:
        body = {"targetVersion": target_version}
        if changelog is not None:
            body["changelog"] = changelog
        return self._http.call("POST", f"/templates/{name}/rollback", body)

    def export_yaml(self, name: str, *, version: int | None = None) -> bytes:
        return self._http.call("GET", f"/templates/{name}/export", query={"version": version})


class PrepullService:
    def __init__(self, http: _Http):
        self._http = http

    def create(self, image: str, *, timeout: int = 600) -> PrepullTask:
        return self._task(self._http.call("POST", "/prepulls", {"image": image, "timeout": timeout}))

    def create_for_template(self, template_name: str) -> PrepullTask:
        return self._task(self._http.call("POST", f"/templates/{template_name}/prepull", {}))

    def list(self, *, image: str | None = None, status: str | None = None) -> list[PrepullTask]:
        state = {v: k for k, v in _PREPULL_STATUS.items() if k != "Cancelled"}.get(status) if status else None
        r = self._http.call("GET", "/prepulls", query={"image": image, "state": state, "pageSize": 200})
        return [self._task(t) for t in r["items"]]

    def get(self, task_id: str) -> PrepullTask:
        return self._task(self._http.call("GET", f"/prepulls/{task_id}"))

    def delete(self, task_id: str) -> None:
        self._http.call("DELETE", f"/prepulls/{task_id}")

    def wait_for_completion(self, task_id: str, *, poll_interval: float = 5.0, timeout: float = 1800.0) -> PrepullTask:
        deadline = time.monotonic() + timeout
        while True:
            task = self.get(task_id)
            if task.status == "completed":
                return task
            if task.status == "failed":
                raise PrepullFailedError(task_id, task.error or "failed")
            if time.monotonic() > deadline:
                raise TimeoutError(f"prepull {task_id} is still {task.status}")
            time.sleep(poll_interval)

    @staticmethod
    def _task(t: dict) -> PrepullTask:
        status = t["status"]
        error = None
        if status["state"] in ("Failed", "Cancelled"):
            error = f"{status.get('reason') or status['state']}: {status.get('message') or ''}".strip(": ")
        return PrepullTask(t["id"], t["image"], _PREPULL_STATUS.get(status["state"], "failed"), t.get("progress"),
                           t.get("templateId"), error, t.get("startedAt"), t.get("completedAt"))


class ImportExportService:
    def __init__(self, http: _Http):
        self._http = http

    def import_templates(self, yaml_content: bytes | str, *, strategy: str = "create-or-update",
                         auto_prepull: bool = False) -> dict:
        data = yaml_content.encode() if isinstance(yaml_content, str) else yaml_content
        return self._http.call("POST", "/templates/import", raw=data, content_type="application/yaml",
                               query={"strategy": strategy, "autoPrepull": str(auto_prepull).lower()})

    def export_all(self, *, tag: str | None = None, names: list[str] | None = None) -> bytes:
        return self._http.call("GET", "/templates/export",
                               query={"tag": tag, "names": ",".join(names) if names else None})


class Client:
    """`Client(base_url, timeout, auth_token, headers)`; `base_url` is sandboxd's `/v1`."""

    def __init__(self, base_url: str, *, timeout: float = 30.0, auth_token: str | None = None,
                 headers: dict | None = None):
        http = _Http(base_url, timeout, auth_token, headers)
        self.sandbox = SandboxService(http)
        self.template = TemplateService(http)
        self.prepull = PrepullService(http)
        self.import_export = ImportExportService(http)

    def close(self) -> None:
        pass

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *args) -> None:
        self.close()

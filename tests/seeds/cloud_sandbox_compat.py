"""Seed 001 (the Cloud Sandbox SDK) as a client, mapped onto sandboxd's /v1.

The seed's `SandboxClient(base_url)` mints a per-user token (`get_token(user_id, role)`), sets it
(`set_token`), and then sees only that user's sessions. This adapter keeps the seed's method
names and return shapes and maps them:

- `get_token` → `POST /v1/tokens` (camelCase answer turned into the seed's snake_case dict);
  `set_token` → `Authorization: Bearer` on every later call;
- a session is a sandbox: `create_session(image, cpu_count, memory_mb, ttl_hours)` →
  `POST /v1/sandboxes` with `resourceLimits` and `timeout = ttl_hours * 3600`; the image goes
  through the table the caller gives (the seed's public images are not on this offline
  machine), and the entrypoint is an idle process (the seed's sessions have none);
- `get_session`, `list_sessions` (the user's own: sandboxd filters by owner),
  `delete_session`, `pause_session`, `resume_session`;
- errors → the seed's exceptions by status: 401 `AuthError`, 404 `NotFoundError`, 429
  `RateLimitError` (with `retry_after`, seconds, from `Retry-After`), 503
  `ServiceUnavailableError`, others `SandboxError`.

- `execute(sandbox_id, code, language, command, work_dir, env, timeout)` is a synchronous
  execution (design §13.1): `POST /v1/sandboxes/{id}/executions?wait=<timeout+5>` with
  `{code, language}` (run in the language's code context) or `{command}`, `cwd` = `work_dir`,
  `envs` = `env`; a run that outlives the wait (202) is polled. `ExecuteResult` carries
  `exit_code` (a command's; code: 0 on success, 1 otherwise), `stdout`, `stderr`,
  `duration_ms`.

- pools (design §10): `acquire_sandbox()` → `POST /v1/pools/{pool}/acquire` (`pool` the
  client's, `default` unless given: the seed names none), answered as the seed's `SandboxInfo`
  with `container_id` and `ip` from the containers view (`GET /v1/containers/{sandbox_id}`);
  `release_sandbox(id)` → `POST /v1/sandboxes/{id}/release`; `get_sandbox_stats()` →
  `GET /v1/pools/{pool}`'s `status` (`total`, `allocated`, `available`, `warming`, `failed`);
- the high-level `Sandbox` (`create`, `resume`, `run_code`, `run_command`, `pause`, `destroy`,
  a context manager): a token for `user_id`, then the client's calls. `pause()` is a Freeze
  pause (the default `pausePolicy`: memory and processes kept, so the seed's `x = 42` survives)
  and returns the sandbox id as the session id; `Sandbox.resume` resumes it and waits until it
  runs. `run_code` runs in the language's default code context, so state carries from one call
  to the next.

The seed's public images are mapped through `images` (per client) or `DEFAULT_IMAGES` (for the
`Sandbox` class, whose examples pass none). File calls are not mapped.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field


class SandboxError(Exception):
    """Base exception: status, sandboxd's code and message."""

    def __init__(self, status: int, code: str | None, message: str):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class AuthError(SandboxError):
    """401."""


class NotFoundError(SandboxError):
    """404."""


class RateLimitError(SandboxError):
    """429; `retry_after` is the server's `Retry-After`, in seconds."""

    def __init__(self, status: int, code: str | None, message: str, retry_after: float | None):
        super().__init__(status, code, message)
        self.retry_after = retry_after


class ServiceUnavailableError(SandboxError):
    """503."""


@dataclass
class Session:
    """The seed's session model: id, status, image, resources, timestamps."""

    id: str
    status: str
    image: str
    resources: dict
    created_at: str
    expires_at: str | None
    raw: dict = field(repr=False, default_factory=dict)


# sandboxd's states → the seed's session statuses (lower-case, as its examples print them).
_STATUS = {
    "Pending": "pending",
    "Running": "running",
    "Paused": "paused",
    "Stopping": "terminating",
    "Terminated": "terminated",
    "Failed": "failed",
}


@dataclass
class ExecuteResult:
    """The seed's `execute` answer."""

    exit_code: int
    stdout: str
    stderr: str
    duration_ms: int
    raw: dict = field(repr=False, default_factory=dict)


@dataclass
class SandboxInfo:
    """The seed's pool answer: sandbox id, container id, status, ip."""

    sandbox_id: str
    container_id: str | None
    status: str
    ip: str | None
    raw: dict = field(repr=False, default_factory=dict)


# The seed's public images as this machine has them, for clients made without `images`.
DEFAULT_IMAGES: dict[str, str] = {}
# The image `Sandbox.create` uses when given none (the seed's examples' image).
DEFAULT_IMAGE = "python:3.11-slim"


class SandboxClient:
    """The seed's low-level client."""

    def __init__(self, base_url: str, images: dict[str, str] | None = None, timeout: float = 120,
                 pool: str = "default"):
        self.base_url = base_url.rstrip("/")
        self.images = images if images is not None else dict(DEFAULT_IMAGES)
        self.timeout = timeout
        self.pool = pool
        self._token: str | None = None

    # Authentication

    def get_token(self, user_id: str, role: str = "user") -> dict:
        body = self._call("POST", "/v1/tokens", {"userId": user_id, "role": role})
        return {
            "access_token": body["accessToken"],
            "token_type": body["tokenType"].lower(),
            "expires_at": body["expiresAt"],
            "user_id": body["userId"],
            "role": body["role"],
        }

    def set_token(self, token: str) -> None:
        self._token = token

    # Session management

    def create_session(self, image: str, cpu_count: int = 1, memory_mb: int = 512, ttl_hours: int = 1) -> Session:
        body = self._call(
            "POST",
            "/v1/sandboxes",
            {
                "image": {"uri": self.images.get(image, image)},
                "entrypoint": ["tail", "-f", "/dev/null"],
                "timeout": int(ttl_hours * 3600),
                "resourceLimits": {"cpu": str(cpu_count), "memory": f"{memory_mb}Mi"},
                "metadata": {"seed": "001"},
            },
        )
        return self.get_session(body["id"])

    def get_session(self, session_id: str) -> Session:
        return _session(self._call("GET", f"/v1/sandboxes/{session_id}"))

    def list_sessions(self) -> list[Session]:
        body = self._call("GET", "/v1/sandboxes?pageSize=200")
        return [_session(s) for s in body["items"]]

    def delete_session(self, session_id: str) -> None:
        self._call("DELETE", f"/v1/sandboxes/{session_id}")

    def pause_session(self, session_id: str) -> None:
        self._call("POST", f"/v1/sandboxes/{session_id}/pause")

    def resume_session(self, session_id: str) -> None:
        self._call("POST", f"/v1/sandboxes/{session_id}/resume")

    # Sandbox operations (pools)

    def acquire_sandbox(self) -> SandboxInfo:
        s = self._call("POST", f"/v1/pools/{self.pool}/acquire", {})
        container = self._call("GET", f"/v1/containers/{s['id']}")
        return SandboxInfo(
            sandbox_id=s["id"],
            container_id=container.get("id"),
            status=_STATUS.get(s["status"]["state"], "unknown"),
            ip=container.get("ip"),
            raw=s,
        )

    def release_sandbox(self, sandbox_id: str) -> None:
        self._call("POST", f"/v1/sandboxes/{sandbox_id}/release")

    def get_sandbox_stats(self) -> dict:
        pool = self._call("GET", f"/v1/pools/{self.pool}")
        stats = dict(pool["status"])
        stats["pool"] = pool["name"]
        stats["capacity"] = pool["capacitySpec"]
        return stats

    # Execution

    def execute(self, sandbox_id: str, code: str | None = None, language: str = "python",
                command: str | None = None, work_dir: str | None = None, env: dict | None = None,
                timeout: int = 30) -> ExecuteResult:
        body: dict = {"timeout": timeout}
        if command is not None:
            body["command"] = command
            if work_dir is not None:
                body["cwd"] = work_dir
            if env:
                body["envs"] = env
        else:
            body.update({"type": "code", "code": code, "language": language})
        e = self._call("POST", f"/v1/sandboxes/{sandbox_id}/executions?wait={min(timeout + 5, 300)}", body)
        while e["status"]["state"] in ("Acquiring", "Queued", "Running"):
            try:
                e = self._call("GET", f"/v1/executions/{e['id']}/result?wait=30")
            except SandboxError as busy:
                if busy.status != 409:
                    raise
        exit_code = e.get("exitCode")
        if exit_code is None:
            exit_code = 0 if e["status"]["state"] == "Succeeded" else 1
        return ExecuteResult(exit_code=exit_code, stdout=e.get("stdout", ""), stderr=e.get("stderr", ""),
                             duration_ms=e.get("durationMs", 0), raw=e)

    # Transport

    def _call(self, method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self._token:
            req.add_header("Authorization", f"Bearer {self._token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                raw = r.read()
                return json.loads(raw) if raw else None
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = {}
            code, message = parsed.get("code"), parsed.get("message", raw.decode(errors="replace"))
            if e.code == 401:
                raise AuthError(e.code, code, message) from None
            if e.code == 404:
                raise NotFoundError(e.code, code, message) from None
            if e.code == 429:
                after = e.headers.get("Retry-After")
                raise RateLimitError(e.code, code, message, float(after) if after else None) from None
            if e.code == 503:
                raise ServiceUnavailableError(e.code, code, message) from None
            raise SandboxError(e.code, code, message) from None


def _session(s: dict) -> Session:
    limits = s.get("resourceLimits") or {}
    return Session(
        id=s["id"],
        status=_STATUS.get(s["status"]["state"], "unknown"),
        image=(s.get("image") or {}).get("uri", ""),
        resources=limits,
        created_at=s["createdAt"],
        expires_at=s.get("expiresAt"),
        raw=s,
    )


@dataclass
class RunResult:
    """What `Sandbox.run_code` and `run_command` answer (the client's `ExecuteResult`)."""

    exit_code: int
    stdout: str
    stderr: str
    duration_ms: int


class Sandbox:
    """The seed's high-level class: one sandbox (session) of one user."""

    def __init__(self, client: SandboxClient, sandbox_id: str):
        self.client = client
        self.id = sandbox_id

    @staticmethod
    def _client(base_url: str, user_id: str, **kwargs) -> SandboxClient:
        client = SandboxClient(base_url=base_url, **kwargs)
        client.set_token(client.get_token(user_id=user_id)["access_token"])
        return client

    @classmethod
    def create(cls, base_url: str, user_id: str, image: str | None = None, cpu_count: int | None = None,
               memory_mb: int | None = None, **kwargs) -> "Sandbox":
        client = cls._client(base_url, user_id, **kwargs)
        session = client.create_session(image=image or DEFAULT_IMAGE, cpu_count=cpu_count or 1,
                                        memory_mb=memory_mb or 512)
        return cls(client, session.id)

    @classmethod
    def resume(cls, session_id: str, base_url: str, user_id: str = "anonymous", wait: float = 60,
               **kwargs) -> "Sandbox":
        client = cls._client(base_url, user_id, **kwargs)
        client.resume_session(session_id)
        deadline = time.monotonic() + wait
        while (status := client.get_session(session_id).status) != "running":
            if time.monotonic() > deadline:
                raise SandboxError(0, None, f"session {session_id} is {status} after resume")
            time.sleep(0.1)
        return cls(client, session_id)

    def run_code(self, code: str, language: str = "python", timeout: int = 300) -> RunResult:
        r = self.client.execute(sandbox_id=self.id, code=code, language=language, timeout=timeout)
        return RunResult(r.exit_code, r.stdout, r.stderr, r.duration_ms)

    def run_command(self, command: str, timeout: int = 300) -> RunResult:
        r = self.client.execute(sandbox_id=self.id, command=command, timeout=timeout)
        return RunResult(r.exit_code, r.stdout, r.stderr, r.duration_ms)

    def pause(self) -> str:
        self.client.pause_session(self.id)
        return self.id

    def destroy(self) -> None:
        self.client.delete_session(self.id)

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.destroy()
        except NotFoundError:
            pass

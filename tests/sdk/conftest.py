"""Fixtures for the SDK suites: a real sandboxd (with the static execd as its agent) on a free
loopback port, and connection configs for the official OpenSandbox SDK installed in the running
venv (0.1.10 or 1.1.1).

Docker, the test images and the binaries are preconditions. Without them the suite skips,
unless EXECD_TEST_REQUIRE_DOCKER=1 (CI), where they are failures.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import timedelta
from importlib.metadata import version
from pathlib import Path

import shlex

import pytest

from opensandbox.config.connection_sync import ConnectionConfigSync

REPO = Path(__file__).resolve().parents[2]
SANDBOXD = Path(os.environ.get("EXECD_TEST_SANDBOXD", REPO / "target/debug/sandboxd"))
AGENT = Path(os.environ.get("EXECD_TEST_AGENT", REPO / "target/x86_64-unknown-linux-musl/release/execd"))
PYTHON_IMAGE = "execd-test/python:bookworm"
BUSYBOX_IMAGE = "execd-test/busybox"
LOG_DIR = REPO / "target/sdk-tests"

SDK_VERSION = tuple(int(p) for p in version("opensandbox").split(".")[:3])
REQUIRED = os.environ.get("EXECD_TEST_REQUIRE_DOCKER") == "1"
# Extra `serve` flags for every sandboxd the suite starts (scripts/test-sdk.sh k8s passes
# `--runtime kubernetes ...` with KUBECONFIG naming the fake API server).
EXTRA_ARGS = tuple(shlex.split(os.environ.get("EXECD_TEST_SANDBOXD_ARGS", "")))
# A file of `<test node id substring> | <reason>` lines: tests that cannot pass on the runtime
# under test by design. Each is marked xfail(strict=True), so it must still fail (an xpass
# fails the run) and shows up as xfailed with its reason, never as a pass or a skip.
UNSUPPORTED = os.environ.get("EXECD_TEST_UNSUPPORTED")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    if not UNSUPPORTED:
        return
    rules = []
    for line in Path(UNSUPPORTED).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            test, _, reason = line.partition("|")
            rules.append((test.strip(), reason.strip()))
    unmatched = {test for test, _ in rules}
    for item in items:
        for test, reason in rules:
            if test in item.nodeid:
                item.add_marker(pytest.mark.xfail(strict=True, reason=f"expected-unsupported: {reason}"))
                unmatched.discard(test)
    if unmatched and not config.getoption("keyword") and not config.args[1:]:
        raise pytest.UsageError(f"{UNSUPPORTED} names tests that do not exist: {sorted(unmatched)}")

# Features only one SDK version has live in their own files, which the other version does not
# collect (not skipped: scripts/test-sdk.sh treats a skip as a failure).
collect_ignore = ["test_v111.py", "test_templates.py"] if SDK_VERSION < (1, 1, 0) else []


def unavailable(reason: str):
    """Fails (CI) or skips (a dev machine without Docker) the whole session."""
    if REQUIRED:
        pytest.fail(f"EXECD_TEST_REQUIRE_DOCKER=1 but {reason}", pytrace=False)
    pytest.skip(f"{reason} (set EXECD_TEST_REQUIRE_DOCKER=1 to make this fail)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Sandboxd:
    url: str  # http://127.0.0.1:<port>
    domain: str  # 127.0.0.1:<port>, what the SDK's ConnectionConfig takes
    api_key: str
    run_id: str  # metadata value that marks this run's sandboxes
    log: Path

    def request(self, method: str, path: str, body=None, key: str | None = None, headers=None):
        """A raw lifecycle request (status, headers, parsed JSON or None)."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers or {})
        req.add_header("OPEN-SANDBOX-API-KEY", self.api_key if key is None else key)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                raw = r.read()
                return r.status, dict(r.headers), (json.loads(raw) if raw else None)
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                parsed = json.loads(raw) if raw else None
            except ValueError:
                parsed = raw.decode("utf-8", "replace")
            return e.code, dict(e.headers), parsed

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _preconditions():
    if shutil.which("docker") is None:
        unavailable("the docker CLI is not installed")
    if subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True).returncode:
        unavailable("the Docker engine does not answer")
    for image in (PYTHON_IMAGE, BUSYBOX_IMAGE):
        if subprocess.run(["docker", "image", "inspect", image], capture_output=True).returncode:
            unavailable(f"image {image} is missing (scripts/build-test-image.sh all)")
    if not SANDBOXD.exists():
        unavailable(f"{SANDBOXD} is missing (cargo build -j2 --bin sandboxd)")
    if not AGENT.exists():
        unavailable(f"{AGENT} is missing (scripts/build-agent.sh)")


class Server:
    """A running sandboxd process (stop() and start() again on the same port and data dir)."""

    def __init__(self, data_dir: Path, log: Path, port: int, api_key: str, run_id: str, extra: tuple[str, ...] = ()):
        self.data_dir, self.log, self.port, self.extra = data_dir, log, port, extra
        self.d = Sandboxd(f"http://127.0.0.1:{port}", f"127.0.0.1:{port}", api_key, run_id, log)
        self.proc = None
        self.logf = None

    def start(self):
        self.logf = open(self.log, "ab")
        cmd = [
            str(SANDBOXD), "serve",
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--api-key", self.d.api_key,
            "--agent", str(AGENT),
            "--data-dir", str(self.data_dir),
            "--public-host", "127.0.0.1",
            *EXTRA_ARGS,
            *self.extra,
        ]
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "info")}
        self.proc = subprocess.Popen(cmd, stdout=self.logf, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                self.logf.close()
                pytest.fail(f"sandboxd exited with {self.proc.returncode} before /health answered:\n{self.d.log_tail()}", pytrace=False)
            try:
                with urllib.request.urlopen(self.d.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return self.d
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"sandboxd did not answer GET /health within 30 s:\n{self.d.log_tail()}", pytrace=False)
            time.sleep(0.1)

    def stop(self) -> int | None:
        """SIGTERM (then SIGKILL after 20 s); returns the exit status."""
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.logf.close()
        rc, self.proc = self.proc.returncode, None
        return rc


def new_server(name: str, run_id: str | None = None, extra: tuple[str, ...] = ()) -> Server:
    _preconditions()
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / f"{name}-sdk{SDK_VERSION[0]}{SDK_VERSION[1]}{SDK_VERSION[2]}.log"
    log.write_bytes(b"")
    data_dir = Path(tempfile.mkdtemp(prefix="sdk-sandboxd-"))
    return Server(data_dir, log, free_port(), secrets.token_hex(16), run_id or uuid.uuid4().hex[:12], extra)


@pytest.fixture(scope="session")
def sandboxd():
    server = new_server("sandboxd")
    d = server.start()
    try:
        yield d
    finally:
        _delete_leftovers(d)
        server.stop()
        shutil.rmtree(server.data_dir, ignore_errors=True)


def _delete_leftovers(d: Sandboxd):
    """Deletes every sandbox this run created (all pages), then reports what could not go."""
    left = []
    for _ in range(20):
        status, _, body = d.request("GET", f"/v1/sandboxes?metadata=sdk-run%3D{d.run_id}&pageSize=200")
        if status != 200 or not body or not body.get("items"):
            break
        ids = [s["id"] for s in body["items"]]
        for sid in ids:
            d.request("DELETE", f"/v1/sandboxes/{sid}")
        if ids == left:
            break
        left = ids
    if left:
        print(f"sdk suite: sandboxes still listed after teardown: {left}", file=sys.stderr)


@pytest.fixture(params=["direct", "proxy"])
def mode(request) -> str:
    return request.param


# SDK_AUTH=bearer runs the suite as a user: a token minted with the API key, sent through the
# SDK's custom headers as `Authorization: Bearer` (no API key), so every sandbox the suite makes
# is that user's own. Tests that pass their own api_key keep it.
SDK_AUTH = os.environ.get("SDK_AUTH", "apikey")
_tokens: dict[str, str] = {}


def user_token(d: Sandboxd) -> str:
    """A user token for `sdk-user` on this sandboxd (minted once per server)."""
    if d.url not in _tokens:
        status, _, body = d.request("POST", "/v1/tokens", {"userId": "sdk-user", "role": "user", "ttlSeconds": 7200})
        assert status == 201, f"cannot mint a user token: {status} {body}"
        _tokens[d.url] = body["accessToken"]
    return _tokens[d.url]


def make_config(d: Sandboxd, mode: str, **kw) -> ConnectionConfigSync:
    if SDK_AUTH == "bearer" and "api_key" not in kw:
        kw["api_key"] = None
        kw["headers"] = {**kw.get("headers", {}), "Authorization": f"Bearer {user_token(d)}"}
    return ConnectionConfigSync(
        domain=d.domain,
        api_key=kw.pop("api_key", d.api_key),
        use_server_proxy=(mode == "proxy"),
        request_timeout=timedelta(seconds=60),
        **kw,
    )


@pytest.fixture
def config(sandboxd, mode) -> ConnectionConfigSync:
    return make_config(sandboxd, mode)


class Sandboxes:
    """Creates sandboxes marked with this run's id and kills whatever a test leaves behind."""

    def __init__(self, d: Sandboxd):
        self.d = d
        self.created = []

    def create(self, config: ConnectionConfigSync, image: str = PYTHON_IMAGE, metadata=None, **kw):
        from opensandbox import SandboxSync

        md = {"sdk-run": self.d.run_id, **(metadata or {})}
        sb = SandboxSync.create(image, metadata=md, connection_config=config, **kw)
        self.created.append(sb)
        return sb

    def cleanup(self):
        for sb in self.created:
            try:
                sb.kill()
            except Exception:
                pass
            sb.close()


@pytest.fixture
def sandboxes(sandboxd):
    s = Sandboxes(sandboxd)
    yield s
    s.cleanup()


@pytest.fixture(scope="module", params=["direct", "proxy"])
def shared(request, sandboxd):
    """One python sandbox per module and mode, for tests that do not change its lifecycle."""
    cfg = make_config(sandboxd, request.param)
    s = Sandboxes(sandboxd)
    sb = s.create(cfg, env={"SDK_SUITE_ENV": "from-create"})
    yield sb
    s.cleanup()

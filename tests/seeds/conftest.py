"""Fixtures for the seed tests (tests/seeds, run with the project's .venv): a real sandboxd on a
free loopback port, started as tests/sdk/conftest.py starts it (that file imports the official
SDK, which .venv does not have), with the settings the seed documents assume.

Docker and the binaries are preconditions. Without them the suite skips, unless
EXECD_TEST_REQUIRE_DOCKER=1 (CI), where they are failures.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SANDBOXD = Path(os.environ.get("EXECD_TEST_SANDBOXD", REPO / "target/debug/sandboxd"))
AGENT = Path(os.environ.get("EXECD_TEST_AGENT", REPO / "target/x86_64-unknown-linux-musl/release/execd"))
LOG_DIR = REPO / "target/seed-tests"
REQUIRED = os.environ.get("EXECD_TEST_REQUIRE_DOCKER") == "1"
# error_link is on: sandboxd serves it as <base>/errors#<code>.
DOCS_BASE = "https://docs.example.com/sandboxd"
# Seed 004's range for `timeout` is 1–3600 s.
MAX_TIMEOUT = 3600


def unavailable(reason: str):
    if REQUIRED:
        pytest.fail(f"EXECD_TEST_REQUIRE_DOCKER=1 but {reason}", pytrace=False)
    pytest.skip(f"{reason} (set EXECD_TEST_REQUIRE_DOCKER=1 to make this fail)")


@dataclass
class Sandboxd:
    url: str  # http://127.0.0.1:<port>
    api_key: str
    log: Path

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@pytest.fixture(scope="session")
def sandboxd():
    if shutil.which("docker") is None:
        unavailable("the docker CLI is not installed")
    if subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True).returncode:
        unavailable("the Docker engine does not answer")
    if not SANDBOXD.exists():
        unavailable(f"{SANDBOXD} is missing (cargo build -j2 --bin sandboxd)")
    if not AGENT.exists():
        unavailable(f"{AGENT} is missing (scripts/build-agent.sh)")
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log = LOG_DIR / "sandboxd.log"
    data_dir = Path(tempfile.mkdtemp(prefix="seed-sandboxd-"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    d = Sandboxd(f"http://127.0.0.1:{port}", secrets.token_hex(16), log)
    cmd = [
        str(SANDBOXD), "serve",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--api-key", d.api_key,
        "--agent", str(AGENT),
        "--data-dir", str(data_dir),
        "--public-host", "127.0.0.1",
        "--max-timeout", str(MAX_TIMEOUT),
        "--errors-docs-base-url", DOCS_BASE,
    ]
    with open(log, "wb") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"sandboxd exited with {proc.returncode}:\n{d.log_tail()}", pytrace=False)
                try:
                    with urllib.request.urlopen(d.url + "/health", timeout=2) as r:
                        if r.status == 200:
                            break
                except (urllib.error.URLError, OSError):
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"sandboxd did not answer GET /health within 30 s:\n{d.log_tail()}", pytrace=False)
                time.sleep(0.1)
            yield d
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            shutil.rmtree(data_dir, ignore_errors=True)

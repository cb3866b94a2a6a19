"""Schemathesis hooks for scripts/api-fuzz.sh (loaded through SCHEMATHESIS_HOOKS).

- `application/x-tar` bodies (POST /files/archive) are sent as raw bytes, like octet-stream.
- `server_error_outside_contract` replaces schemathesis' `not_a_server_error`: a 5xx fails the
  run unless it is one the contract itself prescribes, listed in CONTRACT below with the exact
  operation, status and error code, so any other 5xx (a panic, an unmapped error) still fails.
"""

import re

import schemathesis

schemathesis.serializer.alias("application/x-tar", "application/octet-stream")

# (method, path template, status, error code, message pattern): the 5xx answers upstream's
# contract prescribes. Each is asserted by an integration test as well (named beside it).
CONTRACT = [
    # An unknown bash session or code context on run or interrupt is a 500 upstream
    # (tests/it/session.rs, tests/it/command.rs, tests/it/code.rs).
    ("POST", "/session/{id}/run", 500, "RUNTIME_ERROR", r"session .* not found"),
    ("DELETE", "/command", 500, "RUNTIME_ERROR", r"no such session"),
    ("DELETE", "/code", 500, "RUNTIME_ERROR", r"no such (session|context)"),
    ("POST", "/code", 500, "RUNTIME_ERROR", r"context .* not found|no such context"),
    # mv never replaces an existing dest: a 500 naming it, upstream's answer (tests/it/files.rs).
    ("POST", "/files/mv", 500, "RUNTIME_ERROR", r"already exists"),
    ("POST", "/v1/filesystem/{uid}/{gid}/files/mv", 500, "RUNTIME_ERROR", r"already exists"),
    # The port proxy's target port has nothing listening: 502, as any gateway.
    ("*", "/proxy/{port}/{path}", 502, "*", r""),
    # sandboxd's server proxy likewise, once the sandbox exists.
    ("*", "/sandboxes/{id}/proxy/{port}/{path}", 502, "*", r""),
]


def _contract_allows(case, response) -> bool:
    try:
        body = response.json()
    except Exception:
        body = None
    code = body.get("code") if isinstance(body, dict) else None
    message = body.get("message", "") if isinstance(body, dict) else ""
    for method, path, status, want_code, pattern in CONTRACT:
        if method not in ("*", case.method.upper()) or path != case.operation.path:
            continue
        if status != response.status_code or want_code not in ("*", code):
            continue
        if re.search(pattern, message or ""):
            return True
    return False


@schemathesis.check
def server_error_outside_contract(ctx, response, case):
    """A 5xx answer that the contract does not prescribe."""
    if response.status_code < 500 or _contract_allows(case, response):
        return None
    raise AssertionError(
        f"server error {response.status_code} on {case.method.upper()} {case.operation.path}: "
        f"{response.text[:300]}"
    )


# sandboxd: the first API_FUZZ_CREATES well-formed creates run a real sandbox of the offline
# busybox image (so the stateful phase reaches existing sandboxes); the rest keep their random
# image, which fails at once (no registry is reachable, nothing is pulled).
_creates_left = int(__import__("os").environ.get("API_FUZZ_CREATES", "0"))


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    global _creates_left
    if case.method.upper() != "POST" or case.operation.path != "/sandboxes":
        return
    if _creates_left <= 0 or not isinstance(case.body, dict):
        return
    _creates_left -= 1
    case.body = {"image": {"uri": "execd-test/busybox"}, "entrypoint": ["sleep", "600"], "timeout": 120}
    if case.headers:
        case.headers.pop("X-Business-Domain", None)

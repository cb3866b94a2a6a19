#!/usr/bin/env bash
# Installs everything the build, the tests and the benchmarks need. Idempotent: a second run
# only checks. Needs root for apt-get (CI and the dev machines run as root).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'setup: %s\n' "$*"; }

# Debian packages: `file` (build-agent's static check), util-linux (`unshare` for the PID 1
# test), procps, debootstrap and busybox-static (the offline test images, see
# scripts/build-test-image.sh); the Docker CLI/engine are expected on the machine image.
packages=(file util-linux procps ca-certificates debootstrap busybox-static)
# Isolated sessions: bubblewrap is the benchmark anchor, python3 (Debian's, /usr/bin) makes the
# raw-syscall escape attempts.
packages+=(bubblewrap python3)
# Image prepull tests and benchmark: local registries (scripts/registry.sh): the CNCF
# distribution, htpasswd for the one with auth, curl to probe them.
packages+=(docker-registry apache2-utils curl)
# The web console's browser tests (scripts/test-console.sh): a real headless Chromium and its
# WebDriver; node-xterm is where the console's vendored xterm.js comes from
# (scripts/vendor-xterm.py, only needed to re-vendor it).
packages+=(chromium chromium-driver node-xterm)
# The slow tier of the Kubernetes runtime (tests/it/podman_kube.rs): `podman kube play` runs the
# builders' injection pod as an independent pod runtime; catatonit is the pods' init, netavark
# the network stack it was tested with (Debian 12: podman 4.3.1).
packages+=(podman catatonit netavark)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Rust: the musl target for the static agent, fmt and clippy for CI, nextest as the runner.
rustup target list --installed | grep -qx x86_64-unknown-linux-musl || rustup target add x86_64-unknown-linux-musl
for c in rustfmt clippy; do
  rustup component list --installed | grep -q "^$c" || rustup component add "$c"
done
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest
# The coverage-guided fuzzers (scripts/fuzz.sh).
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz

# Python venv for the tests: real ipykernel (whose kernelspec lands in .venv/share/jupyter),
# jupyter_client for the benchmark anchor, matplotlib for figure capture, selenium for the
# console's browser tests, kubernetes-validate for the Kubernetes objects' schema check.
venv=.venv
if [ ! -x "$venv/bin/python" ]; then
  log "creating $venv"
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python" -c 'import pytest, ipykernel, jupyter_client, matplotlib, jwt, prometheus_client, schemathesis, selenium, kubernetes_validate' 2>/dev/null; then
  "$venv/bin/pip" install -q --disable-pip-version-check -r tests/requirements.txt
fi

# The official OpenSandbox SDKs, one venv per supported version, for tests/sdk.
for v in 010 111; do
  venv=.venv-sdk$v
  req=tests/sdk/requirements-$v.txt
  if [ ! -x "$venv/bin/python" ]; then
    log "creating $venv"
    python3 -m venv "$venv"
  fi
  # Reinstall only when the pins changed (the stamp is the requirements file as installed).
  if ! cmp -s "$req" "$venv/.requirements"; then
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$req"
    cp "$req" "$venv/.requirements"
  fi
done

# The offline images the SDK suites run sandboxes from (a no-op when they exist).
scripts/build-test-image.sh all

# Dependencies, so the test run itself does not stall on the network.
cargo fetch --locked >/dev/null
log "ok"

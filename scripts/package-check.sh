#!/usr/bin/env bash
# The packages people install, as they would get them:
# - the published Rust crates, switchboard-wire (protocol/) and switchboard-client (client/),
#   with `cargo package`: each crate's tarball is unpacked and built on its own, the client
#   against the packaged switchboard-wire (not the path) — a file left out, a feature only the
#   workspace enabled or a bad manifest fails here (network: the crates.io index);
# - the npm package @switchboard/client (web/): `npm pack`, installed from the tarball into a
#   scratch project, imported by an ES module script and type-checked with tsc
#   (web/package-test/).
# Installs Node.js (apt) and web/'s npm packages (`npm ci`) if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "==> installing Node.js and npm (apt)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq nodejs npm >/dev/null
fi

echo "==> cargo package: switchboard-wire, switchboard-client"
# --allow-dirty: a working tree with uncommitted changes is packaged as it is.
cargo package -p switchboard-wire -p switchboard-client --locked --allow-dirty

echo "==> npm pack: @switchboard/client, installed into a scratch project"
(cd web && npm ci --no-audit --no-fund --loglevel=error && npm run --silent test:package)

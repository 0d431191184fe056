#!/usr/bin/env bash
# libFuzzer runs (cargo fuzz) of everything that parses client input: client frames,
# WebTransport stream framing, WebSocket frame headers, JWT verification, id/subject validation.
#
#   scripts/fuzz.sh [seconds per target, default 60] [target ...]
#
# Not part of the test command (that runs the proptest properties in protocol/tests/fuzz.rs
# and relay/tests/props.rs, bounded). cargo fuzz wants nightly; on the stable toolchain the
# instrumented build works with RUSTC_BOOTSTRAP=1, without a sanitizer (`-s none`: the code
# under test is safe Rust; what we look for are panics, failed assertions, hangs and
# runaway memory). Crashes are kept in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(client_frame record_stream ws_frames subject jwt)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
cargo fuzz build -s none
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    log="$(mktemp)"
    if cargo fuzz run -s none "$t" -- -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 >"$log" 2>&1; then
        runs="$(grep -Eo 'Done [0-9]+ runs in [0-9]+ second' "$log" | tail -1)"
        cov="$(grep -Eo 'cov: [0-9]+ ft: [0-9]+' "$log" | tail -1)"
        echo "fuzz $t: ok, ${runs:-?}s, $cov, corpus $(ls "corpus/$t" | wc -l) inputs"
    else
        echo "fuzz $t: FAILED (log below; the input is in fuzz/artifacts/$t/)"
        tail -40 "$log"
        exit 1
    fi
    rm -f "$log"
done

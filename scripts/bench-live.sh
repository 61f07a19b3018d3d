#!/usr/bin/env bash
# Live-engine benchmark on a release build (issue 4):
#   1. baseline: the spine's HTTP ingest of the same events with no segment;
#   2. live: 50 segments (attribute, windowed, recency, mixed) built over every
#      user, then ingest as fast as acknowledged: events/s, acknowledgement ->
#      change on the stream (p50/p99), and the PING deadlines (one per user,
#      30 s after it) firing: pending peak and lateness after their instants;
#   3. the same at fixed offered loads (20k and 50k events/s of mixed app
#      events, 20 s each).
#
#   scripts/bench-live.sh [USERS] [EVENTS]     (default 1000000 2000000)
#
# Every event is durable before it is acknowledged; every change is committed
# to the change log before it is streamed. Fresh temp data dirs each run.
set -euo pipefail
cd "$(dirname "$0")/.."
USERS=${1:-1000000}
EVENTS=${2:-2000000}
cargo build --release -q -p stratify -p stratify-bench
BIN=target/release/stratify
BENCH=target/release/stratify-bench
WORK=$(mktemp -d)
trap 'kill "${PID:-}" 2>/dev/null || true; rm -rf "$WORK"' EXIT

echo "== $USERS users (generated, imported)"
$BIN generate --users "$USERS" --events 1 --orders 1 --seed 4 --out "$WORK/gen" >/dev/null

serve() {
    PORT=$((20000 + RANDOM % 20000))
    STRATIFY_ADMIN_KEY=bench-key RUST_LOG=warn $BIN serve --addr "127.0.0.1:$PORT" --data-dir "$1" >/dev/null &
    PID=$!
    for _ in $(seq 600); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && return; sleep 0.2; done
    echo "server did not start" >&2; exit 1
}

for run in baseline live; do
    RUST_LOG=warn $BIN import --users "$WORK/gen/user_attributes.csv" --data-dir "$WORK/$run" >/dev/null
    serve "$WORK/$run"
    if [ "$run" = baseline ]; then
        echo "== baseline: no segments"
        $BENCH live --url "http://127.0.0.1:$PORT" --key bench-key --users "$USERS" --events "$EVENTS" --drain-seconds 0 | grep "live ingest" | sed 's/^live ingest/baseline ingest/'
    else
        echo "== live: 50 segments, as fast as acknowledged"
        $BENCH live --url "http://127.0.0.1:$PORT" --key bench-key --users "$USERS" --events "$EVENTS" --setup
        for RATE in 20000 50000; do
            echo "== live: offered $RATE events/s, batches of 1000"
            $BENCH live --url "http://127.0.0.1:$PORT" --key bench-key --users "$USERS" --events "$((RATE * 20))" \
                --batch 1000 --rate "$RATE" --pings 0 --drain-seconds 0 | grep -v "^deadlines:"
        done
        echo "server RSS: $(($(awk '/VmRSS/ {print $2}' /proc/$PID/status) / 1024)) MiB"
    fi
    kill "$PID"; wait "$PID" 2>/dev/null || true
done

#!/usr/bin/env bash
# Ingest benchmark: events/s through HTTP batches and through `stratify import`,
# on a release build, every event durable (fsynced) before it is acknowledged.
#
#   scripts/bench-ingest.sh [EVENTS]      (default 1000000)
#
# Prints one line per measurement. Uses a fresh temp data dir each run.
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${1:-1000000}
cargo build --release -q -p stratify -p stratify-bench
BIN=target/release/stratify
BENCH=target/release/stratify-bench
WORK=$(mktemp -d)
trap 'kill "${PID:-}" 2>/dev/null || true; rm -rf "$WORK"' EXIT

echo "== import: generating $EVENTS events"
$BIN generate --users 100000 --events "$EVENTS" --orders 100000 --seed 1 --out "$WORK/gen" >/dev/null
$BIN import --users "$WORK/gen/user_attributes.csv" --data-dir "$WORK/import" >/dev/null
$BIN import --events "$WORK/gen/user_events.csv" --data-dir "$WORK/import" | sed 's/^/import events: /'
echo "== re-import (idempotency check: nothing written)"
$BIN import --events "$WORK/gen/user_events.csv" --data-dir "$WORK/import" | sed 's/^/re-import events: /'

echo "== HTTP: $EVENTS events"
PORT=$((20000 + RANDOM % 20000))
STRATIFY_ADMIN_KEY=bench-key RUST_LOG=warn $BIN serve --addr "127.0.0.1:$PORT" --data-dir "$WORK/http" >/dev/null &
PID=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.1; done
$BENCH ingest --url "http://127.0.0.1:$PORT" --key bench-key --events "$EVENTS" --batch 5000 --concurrency 8
$BENCH ingest --url "http://127.0.0.1:$PORT" --key bench-key --events "$EVENTS" --batch 5000 --concurrency 8 --ndjson

#!/usr/bin/env bash
# Population-query benchmark: 1 000 000 users, 10 000 000 events (+ 1 000 000
# orders), a mix of 13 rules through the real server (POST /v1/segments/query,
# first page of 100 + total count), and the same queries in DuckDB (Python
# `duckdb`) over the same CSV files, in the same run, printed as a ratio.
#
#   scripts/bench-segments.sh [USERS] [EVENTS]      (default 1000000 10000000)
#
# Data and the imported store are cached in target/bench-segments/ (delete it
# to regenerate). Needs python3; installs the `duckdb` package if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
USERS=${1:-1000000}
EVENTS=${2:-10000000}
NOW=2026-06-01T00:00:00Z
DIR=target/bench-segments/$USERS-$EVENTS
python3 -c "import duckdb" 2>/dev/null || python3 -m pip install --quiet duckdb
cargo build --release -q -p stratify
BIN=target/release/stratify
if [ ! -f "$DIR/imported" ]; then
  rm -rf "$DIR" && mkdir -p "$DIR"
  echo "== generating $USERS users, $EVENTS events, $USERS orders"
  $BIN generate --users "$USERS" --events "$EVENTS" --orders "$USERS" --seed 7 --now "$NOW" --out "$DIR/csv"
  echo "== importing"
  $BIN import --users "$DIR/csv/user_attributes.csv" --events "$DIR/csv/user_events.csv" \
    --orders "$DIR/csv/orders.csv" --data-dir "$DIR/data"
  touch "$DIR/imported"
fi
PORT=$((20000 + RANDOM % 20000))
STRATIFY_ADMIN_KEY=bench-key RUST_LOG=warn $BIN serve --addr "127.0.0.1:$PORT" --data-dir "$DIR/data" >/dev/null &
PID=$!
trap 'kill $PID 2>/dev/null || true' EXIT
START=$(date +%s)
until curl -sf "http://127.0.0.1:$PORT/health" >/dev/null; do
  kill -0 $PID 2>/dev/null || { echo "server died"; exit 1; }
  sleep 0.5
done
echo "== server up (index loaded) in $(( $(date +%s) - START ))s; RSS $(ps -o rss= -p $PID | awk '{printf "%.0f MiB", $1/1024}')"
python3 scripts/bench_segments.py "http://127.0.0.1:$PORT" bench-key "$DIR/csv" "$NOW"

#!/usr/bin/env bash
# Serving benchmark on a release build (issue 5): GET /v1/users/{id}/experiments
# over HTTP with 100 running experiments targeting 50 live segments and
# 1 000 000 users, next to a trivial endpoint of the same server (/health) in
# the same run, both driven by wrk with the same connections and threads.
#
#   scripts/bench-experiments.sh [USERS] [SECONDS] [CONNECTIONS]   (default 1000000 20 8)
#
# With BENCH_POSTGRES=1 the server runs on a throwaway PostgreSQL
# (scripts/services.sh) instead of the embedded store (issue 8).
#
# Users are picked at random per request (a wrk Lua script). The first pass
# ("cold") computes and stores most users' assignments for the first time
# (sticky assignments written behind). Then every user is served once in id
# order (priming), and the "warm" pass, again random, finds every answer in
# the per-user cache. Prints the throughputs, the ratios to the trivial
# endpoint and p50/p99.
set -euo pipefail
cd "$(dirname "$0")/.."
USERS=${1:-1000000}
SECONDS_EACH=${2:-20}
CONNS=${3:-8}
command -v wrk >/dev/null || apt-get install -y wrk >/dev/null
cargo build --release -q -p stratify -p stratify-bench
BIN=target/release/stratify
BENCH=target/release/stratify-bench
WORK=$(mktemp -d)
STORE_ARGS=(--data-dir "$WORK/data")
if [ -n "${BENCH_POSTGRES:-}" ]; then
    source scripts/services.sh
    start_postgres "$WORK/pg" $((20000 + RANDOM % 20000))
    STORE_ARGS=(--postgres-url "$STRATIFY_TEST_POSTGRES_URL")
fi
trap 'kill "${PID:-}" 2>/dev/null || true; [ -z "${BENCH_POSTGRES:-}" ] || stop_services; rm -rf "$WORK"' EXIT

echo "== $USERS users (generated, imported)"
$BIN generate --users "$USERS" --events 1 --orders 1 --seed 4 --out "$WORK/gen" >/dev/null
RUST_LOG=warn $BIN import --users "$WORK/gen/user_attributes.csv" "${STORE_ARGS[@]}" >/dev/null
PORT=$((20000 + RANDOM % 20000))
STRATIFY_ADMIN_KEY=bench-key RUST_LOG=warn $BIN serve --addr "127.0.0.1:$PORT" "${STORE_ARGS[@]}" >/dev/null &
PID=$!
for _ in $(seq 600); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.2; done
URL="http://127.0.0.1:$PORT"
$BENCH experiments-setup --url "$URL" --key bench-key --experiments 100

source scripts/wrk-serving.sh
serving_lua "$WORK" "$USERS" bench-key

curl -sf -H "Authorization: Bearer bench-key" "$URL/v1/users/1/experiments" | head -c 600; echo
echo "== $CONNS connections, 2 wrk threads, ${SECONDS_EACH}s each"
read -r H_RPS H_P50 H_P99 < <(wrk_run /health "$WORK/health.lua")
echo "trivial  GET /health:                     $H_RPS req/s  p50 ${H_P50} ms  p99 ${H_P99} ms"
read -r C_RPS C_P50 C_P99 < <(wrk_run /v1/users/1/experiments "$WORK/users.lua")
echo "cold     GET /v1/users/{id}/experiments:  $C_RPS req/s  p50 ${C_P50} ms  p99 ${C_P99} ms  ratio $(awk -v a="$C_RPS" -v b="$H_RPS" 'BEGIN {printf "%.2f", a / b}')"
# Prime: serve every user once (in id order), so that the warm pass meets
# only users whose answer is cached (the cache keeps about a million).
echo "primed:  every user served once in $(serve_everyone "$WORK/prime.lua" "$USERS")s"
read -r W_RPS W_P50 W_P99 < <(wrk_run /v1/users/1/experiments "$WORK/users.lua")
echo "warm     GET /v1/users/{id}/experiments:  $W_RPS req/s  p50 ${W_P50} ms  p99 ${W_P99} ms  ratio $(awk -v a="$W_RPS" -v b="$H_RPS" 'BEGIN {printf "%.2f", a / b}')"
read -r H2_RPS H2_P50 H2_P99 < <(wrk_run /health "$WORK/health.lua")
echo "trivial  GET /health (again):             $H2_RPS req/s  p50 ${H2_P50} ms  p99 ${H2_P99} ms"
curl -s "$URL/metrics" | grep -E "^stratify_live_users " || true
echo "server RSS: $(($(awk '/VmRSS/ {print $2}' /proc/$PID/status) / 1024)) MiB"

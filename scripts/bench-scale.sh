#!/usr/bin/env bash
# The scale benchmark of issue 18, every figure from one run on a release
# build: a generated data set of USERS users, EVENTS events and ORDERS orders
# is imported, 50 live segments and 100 running experiments are created over
# the API, every user is served, two metrics' results are computed, and the
# server is restarted. Prints, in order:
#   import rows/s; segment builds (50 created and built); serving vs /health
#   (first servings and repeats, p99); results of two metrics (cold, warm,
#   after 20 000 new events at once and once the live engine took them);
#   restart to the first experiments answer, and to the first results;
#   RSS after each stage, with bytes
#   per user and per event.
# Live ingest at 20 000 events/s is scripts/bench-live.sh (its own set-up).
#
#   scripts/bench-scale.sh [USERS] [EVENTS] [ORDERS] [SECONDS]
#                          (default 1000000 10000000 1000000 20)
#
# BENCH_LOG sets the server's RUST_LOG (default warn); KEEP_LOG=FILE keeps
# the server's log there once the run ends.
set -euo pipefail
cd "$(dirname "$0")/.."
USERS=${1:-1000000}
EVENTS=${2:-10000000}
ORDERS=${3:-1000000}
SECONDS_EACH=${4:-20}
CONNS=8
command -v wrk >/dev/null || apt-get install -y wrk >/dev/null
cargo build --release -q -p stratify -p stratify-bench
BIN=$PWD/target/release/stratify
BENCH=$PWD/target/release/stratify-bench
WORK=$(mktemp -d)
DATA=$WORK/data
trap 'kill "${PID:-}" 2>/dev/null || true; [ -n "${KEEP_LOG:-}" ] && cp "$WORK/server.log" "$KEEP_LOG"; rm -rf "$WORK"' EXIT
KEY=bench-key
H=(-H "Authorization: Bearer $KEY")

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.1f", b - a}'; }
rss_mib() { awk '/VmRSS/ {printf "%d", $2 / 1024}' "/proc/$PID/status"; }
rss() {
    local kib
    kib=$(awk '/VmRSS/ {print $2}' "/proc/$PID/status")
    printf "RSS %-28s %6d MiB  (%d bytes/user, %d bytes/event)\n" "$1" $((kib / 1024)) \
        $((kib * 1024 / USERS)) $((kib * 1024 / (EVENTS + ORDERS)))
}

serve() {
    PORT=$((20000 + RANDOM % 20000))
    URL="http://127.0.0.1:$PORT"
    STRATIFY_ADMIN_KEY=$KEY RUST_LOG=${BENCH_LOG:-warn} $BIN serve --addr "127.0.0.1:$PORT" --data-dir "$DATA" >>"$WORK/server.log" 2>&1 &
    PID=$!
}
wait_health() {
    for _ in $(seq 3000); do curl -sf "$URL/health" >/dev/null && return; sleep 0.1; done
    echo "server did not start" >&2; exit 1
}
wait_caught_up() {
    for _ in $(seq 6000); do
        lag=$(curl -sf "$URL/metrics" | awk '/^stratify_live_lag_events / {print $2}')
        [ "${lag:-1}" = "0" ] && return
        sleep 0.2
    done
}

echo "== generate $USERS users, $EVENTS events, $ORDERS orders"
$BIN generate --users "$USERS" --events "$EVENTS" --orders "$ORDERS" --seed 18 --out "$WORK/gen" >/dev/null
ROWS=$((USERS + EVENTS + ORDERS))
T=$(now)
# One import of the three files, as an operator loads a data set: derived
# state is read and saved once, and the event log's indexes are built once
# after the events and orders (a bulk append, see the README).
RUST_LOG=warn $BIN import --users "$WORK/gen/user_attributes.csv" --events "$WORK/gen/user_events.csv" \
    --orders "$WORK/gen/orders.csv" --data-dir "$DATA" | sed 's/^/import: /'
IMPORT_S=$(since "$T")
echo "import: $ROWS rows in ${IMPORT_S}s ($(awk -v r=$ROWS -v s="$IMPORT_S" 'BEGIN {printf "%.0f", r / s}') rows/s)"

serve
wait_health
wait_caught_up
rss "after start"

echo "== 50 segments and 100 experiments over the API"
$BENCH experiments-setup --url "$URL" --key "$KEY" --experiments 100
rss "after segment builds"

source scripts/wrk-serving.sh
serving_lua "$WORK" "$USERS" "$KEY"
echo "== serving ($CONNS connections, ${SECONDS_EACH}s each)"
read -r H_RPS _ H_P99 < <(wrk_run /health "$WORK/health.lua")
echo "GET /health:                        $H_RPS req/s  p99 $H_P99 ms"
read -r C_RPS _ C_P99 < <(wrk_run /v1/users/1/experiments "$WORK/users.lua")
echo "first servings (random users):      $C_RPS req/s  p99 $C_P99 ms  ratio $(awk -v a="$C_RPS" -v b="$H_RPS" 'BEGIN {printf "%.2f", a / b}')"
echo "every user served once in $(serve_everyone "$WORK/prime.lua" "$USERS")s"
read -r W_RPS _ W_P99 < <(wrk_run /v1/users/1/experiments "$WORK/users.lua")
echo "repeats (random users):             $W_RPS req/s  p99 $W_P99 ms  ratio $(awk -v a="$W_RPS" -v b="$H_RPS" 'BEGIN {printf "%.2f", a / b}')"
rss "after serving every user"

echo "== results: two metrics"
for m in '{"key": "purchased", "kind": "conversion", "event": "PURCHASE_MADE", "window": "14d"}' \
         '{"key": "revenue", "kind": "sum", "event": "order_placed", "property": "amount"}'; do
    curl -sf "${H[@]}" -H 'Content-Type: application/json' -d "$m" "$URL/v1/metrics" >/dev/null
done
# bench-exp-10 targets everyone at full coverage outside any namespace:
# every user served is exposed to it.
EXP=$(curl -sf "${H[@]}" "$URL/v1/experiments" | python3 -c 'import json,sys; print(next(e["id"] for e in json.load(sys.stdin)["experiments"] if e["key"] == "bench-exp-10"))')
Q="$URL/v1/experiments/$EXP/results?metric=purchased,revenue"
time_get() { curl -sSf -o "$WORK/results.json" -w '%{time_total}' "${H[@]}" "$1" || echo " (failed)"; }
echo "cold (first call): $(time_get "$Q")s"
WARM=$(for _ in 1 2 3; do time_get "$Q"; echo; done | sort -n | sed -n 2p)
echo "warm (median of 3): ${WARM}s"
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("exposed users:", r["exposed_users"])' "$WORK/results.json"
# Live traffic between two calls: 10 000 more orders of exposed users.
python3 - "$USERS" > "$WORK/orders.json" <<'PY'
import json, random, sys
random.seed(18)
users = int(sys.argv[1])
print(json.dumps({"events": [{"user_id": str(random.randrange(1, users + 1)), "name": "order_placed",
    "properties": {"amount": random.randrange(100, 20000) / 100}} for _ in range(10000)]}))
PY
post_orders() {
    for part in 1 2; do
        curl -sf "${H[@]}" -H 'Content-Type: application/json' --data-binary @"$WORK/orders.json" "$URL/v1/events" >/dev/null
    done
}
post_orders
echo "warm after 20 000 new events: $(time_get "$Q")s"
# The same once the live engine has taken them: what the fold costs alone,
# without the ingest of those events competing for the two cores.
post_orders
wait_caught_up
echo "warm after 20 000 new events, live engine caught up: $(time_get "$Q")s"
rss "after results"

echo "== restart"
T=$(now)
kill "$PID"; wait "$PID" 2>/dev/null || true
echo "shutdown (derived state saved): $(since "$T")s"
du -sh "$DATA/checkpoints/derived" 2>/dev/null | awk '{print "saved derived state: " $1}'
T=$(now)
serve
for _ in $(seq 6000); do
    curl -sf "${H[@]}" "$URL/v1/users/1/experiments" >/dev/null && break
    sleep 0.1
done
echo "restart to the first experiments answer: $(since "$T")s"
Q="$URL/v1/experiments/$EXP/results?metric=purchased,revenue"
echo "results after restart (first call): $(time_get "$Q")s"
wait_caught_up
rss "after restart"

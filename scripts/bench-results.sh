#!/usr/bin/env bash
# Results benchmark on a release build (issue 6): one experiment with
# USERS exposed users and EVENTS purchase events (default 1 000 000 and
# 10 000 000), the results of two metrics (a conversion within 14 days and
# the revenue sum) in one GET, over HTTP on the real server.
#
#   scripts/bench-results.sh [USERS] [EVENTS] [RUNS]   (default 1000000 10000000 5)
#
# The data set is written straight into the data directory
# (`stratify-bench results-setup`), the server started on it, and the
# request timed RUNS times with curl (wall time of the whole answer);
# prints each run and the median. Also one run per metric alone.
set -euo pipefail
cd "$(dirname "$0")/.."
USERS=${1:-1000000}
EVENTS=${2:-10000000}
RUNS=${3:-5}
cargo build --release -q -p stratify -p stratify-bench
BIN=target/release/stratify
BENCH=target/release/stratify-bench
WORK=$(mktemp -d)
trap 'kill "${PID:-}" 2>/dev/null || true; rm -rf "$WORK"' EXIT

# BENCH_DATA=DIR keeps the data set in DIR and reuses it on the next run.
DATA=${BENCH_DATA:-$WORK/data}
if [ -f "$DATA/bench-results-id" ]; then
    echo "== reusing $DATA"
else
    echo "== writing $USERS exposures and $EVENTS events"
    RUST_LOG=warn $BENCH results-setup --data-dir "$DATA" --users "$USERS" --events "$EVENTS" > "$DATA.id"
    mv "$DATA.id" "$DATA/bench-results-id"
fi
ID=$(cat "$DATA/bench-results-id")
PORT=$((20000 + RANDOM % 20000))
STRATIFY_ADMIN_KEY=bench-key RUST_LOG=${RUST_LOG:-warn} $BIN serve --addr "127.0.0.1:$PORT" --data-dir "$DATA" >"$WORK/server.log" 2>&1 &
PID=$!
URL="http://127.0.0.1:$PORT"
for _ in $(seq 600); do curl -sf "$URL/health" >/dev/null && break; sleep 0.2; done
# The live engine replays the log it has not seen yet; wait until it is idle
# so it does not share the two cores with the measured requests.
for _ in $(seq 3000); do
    lag=$(curl -sf "$URL/metrics" | awk '/^stratify_live_lag_events / {print $2}')
    [ "${lag:-1}" = "0" ] && break
    sleep 0.2
done
echo "== server up, live engine caught up; RSS $(ps -o rss= -p "$PID" | awk '{printf "%.0f MB", $1/1024}')"

time_get() {
    curl -sSf -o "$WORK/out.json" -w '%{time_total}' -H "Authorization: Bearer bench-key" "$URL$1" || echo " (failed)"
}
Q="/v1/experiments/$ID/results?metric=purchased,revenue"
times=()
for i in $(seq "$RUNS"); do
    t=$(time_get "$Q")
    times+=("$t")
    echo "run $i: ${t}s"
done
python3 - "$WORK/out.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"exposed {r['exposed_users']}, srm p {r['srm']['p_value']:.3g}, winner {r['winner'] and r['winner']['key']}")
for m in r["metrics"]:
    vs = ", ".join(f"{v['key']} n={v['n']} mean={v['mean']:.5g} [{v['ci_low']:.5g}, {v['ci_high']:.5g}]" for v in m["variants"])
    print(f"  {m['metric']['key']}: {vs}; {len(m['timeseries'])} daily points")
PY
printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "median of %d runs: %.0f ms\n", NR, a[int((NR+1)/2)]*1000}'
echo "conversion alone: $(time_get "/v1/experiments/$ID/results?metric=purchased")s; revenue alone: $(time_get "/v1/experiments/$ID/results?metric=revenue")s"
# CUPED (issue 20): the revenue metric adjusted by each user's revenue over
# the 14 days before their first exposure: one more pass over its events.
curl -sf -o /dev/null -H "Authorization: Bearer bench-key" -H 'Content-Type: application/json' "$URL/v1/metrics" \
    -d '{"key": "revenue_cuped", "kind": "sum", "event": "purchase", "property": "amount", "cuped": {"lookback": "14d"}}' || true
for metric in revenue revenue_cuped; do
    times=()
    for i in $(seq "$RUNS"); do times+=("$(time_get "/v1/experiments/$ID/results?metric=purchased,$metric")"); done
    printf '%s\n' "${times[@]}" | sort -n | awk -v m="$metric" '{a[NR]=$1} END {printf "purchased,%s: median of %d runs %.0f ms\n", m, NR, a[int((NR+1)/2)]*1000}'
done
python3 - "$WORK/out.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
for v in r["metrics"][1]["variants"]:
    if v.get("cuped"):
        c = v["cuped"]
        print(f"  revenue_cuped {v['key']}: theta {c['theta']:.4g}, variance reduction {c['variance_reduction']:.3%}, balance p {c['balance_p_value']:.3g}")
PY
echo "RSS after: $(ps -o rss= -p "$PID" | awk '{printf "%.0f MB", $1/1024}')"
grep "results:" "$WORK/server.log" | tail -8 || true

# Live traffic between two calls (issue 18): 20 000 more purchases by
# exposed users, then the same two metrics.
python3 - "$USERS" > "$WORK/more.json" <<'PY'
import json, random, sys
random.seed(18)
users = int(sys.argv[1])
print(json.dumps({"events": [{"user_id": f"u{random.randrange(users)}", "name": "purchase",
    "properties": {"amount": random.randrange(100, 20000) / 100}} for _ in range(10000)]}))
PY
for _ in 1 2; do
    curl -sf -o /dev/null -H "Authorization: Bearer bench-key" -H 'Content-Type: application/json' \
        --data-binary @"$WORK/more.json" "$URL/v1/events"
done
echo "after 20 000 new events: $(time_get "$Q")s; again: $(time_get "$Q")s"
for _ in 1 2; do
    curl -sf -o /dev/null -H "Authorization: Bearer bench-key" -H 'Content-Type: application/json' \
        --data-binary @"$WORK/more.json" "$URL/v1/events"
done
for _ in $(seq 3000); do
    lag=$(curl -sf "$URL/metrics" | awk '/^stratify_live_lag_events / {print $2}')
    [ "${lag:-1}" = "0" ] && break
    sleep 0.1
done
echo "after 20 000 more, once the live engine has applied them: $(time_get "$Q")s"
# A restart (a clean stop saves the metric copies), then the first call.
kill "$PID"; wait "$PID" 2>/dev/null || true
T=$(date +%s.%N)
STRATIFY_ADMIN_KEY=bench-key RUST_LOG=${RUST_LOG:-warn} $BIN serve --addr "127.0.0.1:$PORT" --data-dir "$DATA" >>"$WORK/server.log" 2>&1 &
PID=$!
for _ in $(seq 3000); do curl -sf "$URL/health" >/dev/null && break; sleep 0.1; done
UP=$(awk -v a="$T" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
echo "after a restart (up in ${UP}s): first call $(time_get "$Q")s; then $(time_get "$Q")s"

#!/usr/bin/env bash
# Kafka ingest throughput (issues 8, 19): events/s through the consumer group
# with one node and with two, on a release build, a throwaway PostgreSQL and
# the tansu broker (scripts/services.sh), all on this machine; and, in the
# same run, the two raw limits: the broker's own rate (a plain consumer
# reading the topic, `stratify-bench kafka-read`) and PostgreSQL's binary
# COPY rate for the same rows into a copy of the events table.
#
#   scripts/bench-kafka.sh [EVENTS] [USERS]   (default 200000 20000)
#
# The events (order_placed with an amount, and LOGIN; 4 partitions keyed by
# user id) are produced first with kafka-python (target/pyenv, made by
# scripts/test.sh), so the run measures the consumers, not the producer.
# Three dynamic segments are live. For each node count, a fresh consumer
# group and a fresh database consume the whole topic; the rate is events
# stored / (last stored - first stored), read from PostgreSQL every 0.2 s
# (the Kafka row (source 3) of ingest_status, committed with the events: a count(*)
# of the events table every 0.2 s would take a good part of a core).
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${1:-200000}
USERS=${2:-20000}
PY=${STRATIFY_PYTHON:-target/pyenv/bin/python}
PRODUCE=crates/stratify/tests/cluster/produce.py
cargo build --release -q -p stratify -p stratify-bench
BIN=target/release/stratify
WORK=$(mktemp -d)
source scripts/services.sh
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true; stop_services; rm -rf "$WORK"' EXIT
start_postgres "$WORK/pg" $((20000 + RANDOM % 10000))
start_kafka "$WORK/kafka" $((30000 + RANDOM % 10000))
PG=$STRATIFY_TEST_POSTGRES_URL
BROKERS=$STRATIFY_TEST_KAFKA_BROKERS
PG_PORT=$(echo "$PG" | sed -E 's#.*:([0-9]+)/.*#\1#')
PSQL=(psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -Atq)

"$PY" "$PRODUCE" "$BROKERS" bench-events 4 - create >/dev/null
"$PY" "$PRODUCE" "$BROKERS" bench-changes 1 - create >/dev/null
"$PY" - "$EVENTS" "$USERS" "$WORK/events.jsonl" <<'PY'
import json, random, sys
n, users, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rng = random.Random(8)
with open(path, "w") as f:
    for i in range(n):
        u = "u%d" % rng.randrange(users)
        if rng.random() < 0.3:
            e = {"event_id": "e%d" % i, "user_id": u, "name": "LOGIN"}
        else:
            e = {"event_id": "e%d" % i, "user_id": u, "name": "order_placed",
                 "properties": {"amount": round(rng.uniform(5, 80), 2)}}
        f.write(json.dumps(e) + "\n")
PY
start=$(date +%s.%N)
"$PY" "$PRODUCE" "$BROKERS" bench-events 4 "$WORK/events.jsonl" >/dev/null
echo "produced $EVENTS events in $(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN {printf "%.1f", e - s}') s (kafka-python)"

run() { # NODES
    local nodes=$1 db="bench_$1" port i
    "${PSQL[@]}" -d postgres -c "CREATE DATABASE $db"
    local url="${PG%/*}/$db"
    PIDS=()
    for i in $(seq "$nodes"); do
        port=$((40000 + RANDOM % 10000))
        STRATIFY_ADMIN_KEY=bench-key RUST_LOG=warn $BIN serve --addr "127.0.0.1:$port" --postgres-url "$url" \
            --kafka-brokers "$BROKERS" --kafka-group "bench-$nodes" --kafka-events-topic bench-events \
            --kafka-changes-topic bench-changes --node-id "n$i" >"$WORK/node-$nodes-$i.log" 2>&1 &
        PIDS+=($!)
        if [ "$i" = 1 ]; then
            for _ in $(seq 300); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
            for rule in '{"event":"order_placed","op":"gte","value":5}' \
                '{"event":"order_placed","agg":"sum","property":"amount","op":"gt","value":200}' \
                '{"event":"LOGIN","within":"7d","op":"gte","value":1}'; do
                curl -sf -H "X-API-Key: bench-key" -H 'content-type: application/json' \
                    "http://127.0.0.1:$port/v1/segments" -d "{\"name\":\"s$RANDOM\",\"rules\":$rule}" >/dev/null
            done
        fi
    done
    local first="" last count seen=-1 still=0
    while :; do
        count=$("${PSQL[@]}" -d "$db" -c "SELECT COALESCE(MAX(accepted), 0) FROM ingest_status WHERE source = 3")
        now=$(date +%s.%N)
        if [ -z "$first" ] && [ "$count" -gt 0 ]; then first=$now; fi
        if [ "$count" -ge "$EVENTS" ]; then last=$now; break; fi
        # Stuck for 30 s with the partitions consumed: events were lost.
        if [ "$count" = "$seen" ]; then still=$((still + 1)); else still=0; seen=$count; fi
        if [ "$still" -ge 150 ]; then
            echo "$nodes node(s): STUCK at $count of $EVENTS events stored (logs: $WORK)" >&2
            trap - EXIT
            kill "${PIDS[@]}" 2>/dev/null || true
            exit 1
        fi
        sleep 0.2
    done
    local changes
    changes=$("${PSQL[@]}" -d "$db" -c "SELECT count(*) FROM changes")
    echo "$nodes node(s): $EVENTS events stored in $(awk -v s="$first" -v e="$last" 'BEGIN {printf "%.1f", e - s}') s" \
        "= $(awk -v n="$EVENTS" -v s="$first" -v e="$last" 'BEGIN {printf "%.0f", n / (e - s)}') events/s ($changes membership changes)"
    kill "${PIDS[@]}" 2>/dev/null || true
    wait "${PIDS[@]}" 2>/dev/null || true
}
echo "broker: $(target/release/stratify-bench kafka-read --brokers "$BROKERS" --topic bench-events --records "$EVENTS")"
run 1
# PostgreSQL's own rate for the rows node 1 stored: a binary COPY into a
# table like `events` (same columns, indexes and unique keys).
chmod 777 "$WORK"
"${PSQL[@]}" -d bench_1 -c "COPY events TO '$WORK/events.bin' (FORMAT binary)"
"${PSQL[@]}" -d bench_1 -c "CREATE TABLE events_copy (LIKE events INCLUDING ALL)"
start=$(date +%s.%N)
"${PSQL[@]}" -d bench_1 -c "COPY events_copy FROM '$WORK/events.bin' (FORMAT binary)"
echo "postgres: $EVENTS rows by binary COPY in $(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN {printf "%.2f s = %.0f rows/s", e - s, '"$EVENTS"' / (e - s)}')"
run 2

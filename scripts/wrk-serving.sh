# Sourced by the serving benchmarks (bench-experiments.sh, bench-scale.sh):
# wrk scripts for GET /v1/users/{id}/experiments and a runner. Needs URL,
# CONNS and SECONDS_EACH set by the caller.

# Writes users.lua (random users), prime.lua (every user once, in id order) and
# health.lua into DIR, for USERS users and the API key KEY.
serving_lua() {
    local dir=$1 users=$2 key=$3
    cat > "$dir/users.lua" <<LUA
math.randomseed(42)
wrk.headers["Authorization"] = "Bearer $key"
request = function()
  return wrk.format("GET", "/v1/users/" .. math.random(1, $users) .. "/experiments")
end
LUA
    # prime.lua: wrk's 2 threads split the users (thread t serves t+1,
    # t+3, ...) and each stops once its share has been answered.
    cat > "$dir/prime.lua" <<LUA
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
wrk.headers["Authorization"] = "Bearer $key"
local sent, answered = 0, 0
request = function()
  local u = (tid + sent * 2) % $users + 1
  sent = sent + 1
  return wrk.format("GET", "/v1/users/" .. u .. "/experiments")
end
response = function(status)
  answered = answered + 1
  if answered >= math.ceil(($users - tid) / 2) then wrk.thread:stop() end
end
LUA
    cat > "$dir/health.lua" <<LUA
wrk.headers["Authorization"] = "Bearer $key"
LUA
}

to_ms() { # wrk prints 512.00us / 1.20ms / 1.01s
    awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'
}

# One wrk run of PATH with LUA: prints "requests/s p50_ms p99_ms"; fails on
# any non-2xx answer.
wrk_run() {
    local out
    out=$(wrk -t2 -c"$CONNS" -d"${SECONDS_EACH}s" --latency -s "$2" "$URL$1")
    if echo "$out" | grep -q "Non-2xx"; then echo "$out" >&2; echo "non-2xx answers" >&2; exit 1; fi
    echo "$(echo "$out" | awk '/Requests\/sec/ {print $2}')" \
        "$(to_ms "$(echo "$out" | awk '$1 == "50%" {print $2}')")" \
        "$(to_ms "$(echo "$out" | awk '$1 == "99%" {print $2}')")"
}

# GET /v1/users/{id}/experiments answered so far (the server's counter).
experiments_answered() {
    curl -sf "$URL/metrics" | awk -F'} ' '/^stratify_http_requests_total\{method="GET",route="\/v1\/users\/\{id\}\/experiments"/ {n += $2} END {print n + 0}'
}

# Serves each of USERS users once (prime.lua: wrk's threads stop after
# their share, but wrk itself runs out its duration, so it is stopped when
# the server has answered them all); prints the seconds it took.
serve_everyone() {
    local lua=$1 users=$2 target start wrk_pid
    target=$(( $(experiments_answered) + users ))
    start=$(date +%s.%N)
    wrk -t2 -c"$CONNS" -d3600s -s "$lua" "$URL/" >/dev/null &
    wrk_pid=$!
    while [ "$(experiments_answered)" -lt "$target" ]; do sleep 0.1; done
    awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}'
    kill "$wrk_pid" 2>/dev/null; wait "$wrk_pid" 2>/dev/null || true
}

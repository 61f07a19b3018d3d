# Sourced by the serving benchmarks (bench-experiments.sh, bench-scale.sh):
# wrk scripts for GET /v1/users/{id}/experiments and a runner. Needs URL,
# CONNS and SECONDS_EACH set by the caller.

# Writes users.lua (random users), prime.lua (every user in id order) and
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
    cat > "$dir/prime.lua" <<LUA
wrk.headers["Authorization"] = "Bearer $key"
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/v1/users/" .. ((counter - 1) % $users + 1) .. "/experiments")
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

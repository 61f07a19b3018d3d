# Throwaway services for the tests and benchmarks, on loopback only.
# Source it, then call:
#   start_postgres DIR PORT  -> exports STRATIFY_TEST_POSTGRES_URL
#   start_kafka DIR PORT     -> exports STRATIFY_TEST_KAFKA_BROKERS
#   stop_services            -> stops both (also run on EXIT by the caller)
# PostgreSQL: the Debian server binaries (initdb/pg_ctl), run as the
# non-root `postgres` user in a temp dir. Kafka: the `tansu` broker from
# crates.io (installed once into ~/.cargo/bin, about 15 minutes), in memory.

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
_SERVICES_PG_DIR=""
_SERVICES_KAFKA_PID=""

# Runs a command as `postgres` when we are root (PostgreSQL refuses root).
_as_pg() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

start_postgres() {
    local dir=$1 port=$2
    rm -rf "$dir" && mkdir -p "$dir"
    # The postgres user must reach the directory through its parents.
    chmod 755 "$(dirname "$dir")" "$dir"
    if [ "$(id -u)" = 0 ]; then chown postgres "$dir"; fi
    _as_pg "$PG_BIN/initdb" -D "$dir/data" -A trust -U postgres >"$dir/initdb.log" 2>&1 ||
        { cat "$dir/initdb.log" >&2; return 1; }
    # fsync stays on: the tests check that acknowledged writes are durable.
    _as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=400" start >/dev/null
    _SERVICES_PG_DIR=$dir
    export STRATIFY_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$port/postgres"
}

ensure_tansu() {
    if ! command -v tansu >/dev/null 2>&1; then
        echo "installing the tansu Kafka broker from crates.io (about 15 minutes, once)" >&2
        cargo install tansu --version 0.6.0 --locked --features dynostore,libsql --quiet
    fi
}

start_kafka() {
    local dir=$1 port=$2
    ensure_tansu
    mkdir -p "$dir"
    tansu broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine memory://tansu/ >"$dir/tansu.log" 2>&1 &
    _SERVICES_KAFKA_PID=$!
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            export STRATIFY_TEST_KAFKA_BROKERS="127.0.0.1:$port"
            return 0
        fi
        sleep 0.1
    done
    echo "tansu did not start; see $dir/tansu.log" >&2
    return 1
}

stop_services() {
    if [ -n "$_SERVICES_KAFKA_PID" ]; then kill "$_SERVICES_KAFKA_PID" 2>/dev/null || true; fi
    if [ -n "$_SERVICES_PG_DIR" ]; then
        _as_pg "$PG_BIN/pg_ctl" -D "$_SERVICES_PG_DIR/data" -m fast stop >/dev/null 2>&1 || true
    fi
}

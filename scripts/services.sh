# Throwaway services for the tests and benchmarks, on loopback only.
# Source it, then call:
#   start_postgres DIR PORT  -> exports STRATIFY_TEST_POSTGRES_URL
#   start_kafka DIR PORT     -> exports STRATIFY_TEST_KAFKA_BROKERS
#   stop_services            -> stops both (also run on EXIT by the caller)
# PostgreSQL: the Debian server binaries (initdb/pg_ctl), run as the
# non-root `postgres` user in a temp dir. Kafka: the `tansu` broker from
# crates.io, patched (see ensure_tansu), storing in SQLite in DIR.

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

# tansu 0.6.0 from crates.io, built with one fix (scripts/tansu/group-expiry.patch):
# its group coordinator drops a member whose session expired without starting
# a new generation, so the survivors are never given the dead member's
# partitions. The patched binary gets its own name, so it never shadows a
# `tansu` the user installed, and is built once (about 15 minutes).
TANSU_VERSION=0.6.0
TANSU_BIN=${CARGO_HOME:-$HOME/.cargo}/bin/tansu-$TANSU_VERSION-stratify1
_SERVICES_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

ensure_tansu() {
    [ -x "$TANSU_BIN" ] && return 0
    echo "building the tansu $TANSU_VERSION Kafka broker from crates.io with Stratify's patch (about 15 minutes, once)" >&2
    local work cache
    work=$(mktemp -d)
    # cargo downloads the published sources (and every dependency) from crates.io.
    mkdir -p "$work/fetch/src" && echo 'fn main() {}' >"$work/fetch/src/main.rs"
    printf '[package]\nname = "fetch"\nversion = "0.0.0"\nedition = "2021"\n\n[dependencies]\ntansu = "=%s"\n\n[workspace]\n' \
        "$TANSU_VERSION" >"$work/fetch/Cargo.toml"
    cargo fetch --quiet --manifest-path "$work/fetch/Cargo.toml"
    cache=$(dirname "$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/tansu-broker-"$TANSU_VERSION".crate | head -1)")
    tar -xzf "$cache/tansu-$TANSU_VERSION.crate" -C "$work"
    tar -xzf "$cache/tansu-broker-$TANSU_VERSION.crate" -C "$work"
    patch --quiet -d "$work/tansu-broker-$TANSU_VERSION" -p1 <"$_SERVICES_DIR/tansu/group-expiry.patch"
    printf '\n[workspace]\n\n[patch.crates-io]\ntansu-broker = { path = "../tansu-broker-%s" }\n' \
        "$TANSU_VERSION" >>"$work/tansu-$TANSU_VERSION/Cargo.toml"
    # The published Cargo.lock pins every other dependency.
    cargo build --quiet --release --manifest-path "$work/tansu-$TANSU_VERSION/Cargo.toml" --features dynostore,libsql
    mkdir -p "$(dirname "$TANSU_BIN")"
    install -m 755 "$work/tansu-$TANSU_VERSION/target/release/tansu" "$TANSU_BIN"
    rm -rf "$work"
}

start_kafka() {
    local dir=$1 port=$2
    ensure_tansu
    mkdir -p "$dir"
    # SQLite storage, not memory://: the in-memory engine cannot serve a fetch
    # that starts inside a record batch, so a consumer that takes over a
    # partition at a committed offset mid-batch would skip the batch's rest.
    rm -f "$dir"/tansu.db*
    (cd "$dir" && exec "$TANSU_BIN" broker --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" --storage-engine sqlite://tansu.db \
        >"$dir/tansu.log" 2>&1) &
    _SERVICES_KAFKA_PID=$!
    for _ in $(seq 1 300); do
        if kill -0 "$_SERVICES_KAFKA_PID" 2>/dev/null && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            export STRATIFY_TEST_KAFKA_BROKERS="127.0.0.1:$port"
            return 0
        fi
        kill -0 "$_SERVICES_KAFKA_PID" 2>/dev/null || break
        sleep 0.1
    done
    echo "tansu did not start on port $port; its log:" >&2
    cat "$dir/tansu.log" >&2
    return 1
}

stop_services() {
    if [ -n "$_SERVICES_KAFKA_PID" ]; then
        # Waits until the port is free for the next run (5 s, then SIGKILL).
        kill "$_SERVICES_KAFKA_PID" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$_SERVICES_KAFKA_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -9 "$_SERVICES_KAFKA_PID" 2>/dev/null || true
    fi
    if [ -n "$_SERVICES_PG_DIR" ]; then
        _as_pg "$PG_BIN/pg_ctl" -D "$_SERVICES_PG_DIR/data" -m fast stop >/dev/null 2>&1 || true
    fi
}

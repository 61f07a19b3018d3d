#!/usr/bin/env bash
# Every test of the project, as CI runs it: formatting, lints, then the whole
# test suite (unit tests, the storage suite on SQLite and PostgreSQL, the
# end-to-end binary with the crash test, the two-node Kafka cluster test).
# Needs the pinned Rust toolchain (rust-toolchain.toml); installs and starts
# everything else itself, on loopback (scripts/services.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
# The OFREP test drives the official Python OpenFeature SDK, the dashboard
# test drives headless Chromium with Playwright and the cluster test produces
# with kafka-python, the webhook test verifies deliveries with standardwebhooks,
# the results test checks CUPED against GrowthBook's gbstats, the SDK test runs
# GrowthBook's Python SDK, schemathesis checks the OpenAPI document (all from
# PyPI, pinned) against the real server: a virtualenv under target/. The browser
# is Debian's chromium (Playwright never downloads one).
if [ ! -x /usr/bin/chromium ]; then
    apt-get install -y chromium >/dev/null || { apt-get update >/dev/null && apt-get install -y chromium >/dev/null; }
fi
if [ ! -x target/pyenv/bin/python ] || ! target/pyenv/bin/python -c "import openfeature.contrib.provider.ofrep, playwright.sync_api, kafka, standardwebhooks, gbstats, growthbook, schemathesis" 2>/dev/null; then
    # Debian ships venv apart from python3.
    [ -x target/pyenv/bin/python ] || python3 -m venv target/pyenv || { apt-get install -y python3-venv >/dev/null && python3 -m venv target/pyenv; }
    target/pyenv/bin/pip install --quiet --disable-pip-version-check \
        "openfeature-sdk==0.10.0" "openfeature-provider-ofrep==0.3.0" "playwright==1.65.2" "kafka-python==2.2.15" \
        "standardwebhooks==1.1.0" "gbstats==0.8.0" "growthbook==4.0.0" "schemathesis==4.32.5"
fi
# A throwaway PostgreSQL and Kafka broker for the scale-out tests.
source scripts/services.sh
services_dir=$(mktemp -d /tmp/stratify-test-services.XXXXXX)
trap 'stop_services; rm -rf "$services_dir"' EXIT
start_postgres "$services_dir/pg" "${STRATIFY_TEST_PG_PORT:-55439}"
start_kafka "$services_dir/kafka" "${STRATIFY_TEST_KAFKA_PORT:-59092}"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Crate docs are the map a newcomer reads: their links must resolve.
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet
cargo test --workspace --locked

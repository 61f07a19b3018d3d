#!/usr/bin/env bash
# Every test of the project, as CI runs it: formatting, lints, then the whole
# test suite (unit tests, the storage suite, the end-to-end binary with the
# crash test). Needs only the pinned Rust toolchain (rust-toolchain.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked

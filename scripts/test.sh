#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, the coordinator conformance suite (embedded
# and a real etcd), and the integration tests that drive real `tandem` processes, a real etcd
# and a real S3-compatible server, and ClickHouse's Python and Node.js clients against real
# nodes. Installs protoc, etcd, moto and the clients first when they are missing
# (scripts/prereqs.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
export TANDEM_TEST_VENV="${TANDEM_TEST_VENV:-$HOME/.cache/tandem-test-venv}"
./scripts/prereqs.sh --for-tests
# The object-store tests start moto with this interpreter, the client tests run
# clickhouse-connect with it and @clickhouse/client from these modules.
export TANDEM_TEST_PYTHON="${TANDEM_TEST_PYTHON:-$TANDEM_TEST_VENV/bin/python}"
export TANDEM_TEST_NODE_MODULES="${TANDEM_TEST_NODE_MODULES:-${TANDEM_TEST_NODE_DIR:-$HOME/.cache/tandem-test-node}/node_modules}"
# Release builds: the tests drive the binary optimized as it ships (its memory, its stack depth,
# its speed), and one optimized build of the workspace takes about as long here as a debug one.
# What ships (the `dist` profile) is this build with ThinLTO, optimized with a trained profile
# (scripts/pgo.sh: two builds of `tandem`, about 50 minutes): the integration tests pass against it
# too (TANDEM_BIN).
# --locked: the Dockerfile builds with the lock file as committed.
cargo build --release --locked --bin tandem
# Clippy holds the parsing and decoding modules to their `deny` of panicking shortcuts
# (unwrap, expect, indexing) on input.
if cargo clippy --version >/dev/null 2>&1; then
    cargo clippy --release --locked --workspace --all-targets -- -D warnings
else
    echo "clippy is not installed (rustup component add clippy): skipping the lint step" >&2
fi
# The layout's rules the compiler does not check: no module cycles, the engine free of the
# front end's stack, the binary free of the benchmark.
python3 scripts/check_layers.py
cargo test --release --locked --workspace "$@"

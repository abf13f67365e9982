#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, the coordinator conformance suite, and the
# integration tests that drive real `tandem` processes (they need the binary built first).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --bin tandem
cargo test --workspace "$@"

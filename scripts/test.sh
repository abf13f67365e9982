#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, the coordinator conformance suite (embedded
# and a real etcd), and the integration tests that drive real `tandem` processes. Installs
# protoc and etcd first when they are missing (scripts/prereqs.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/prereqs.sh --with-etcd
cargo build --bin tandem
cargo test --workspace "$@"

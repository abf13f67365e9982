#!/usr/bin/env bash
# Builds and runs tandem (release). With no arguments: one node with the embedded
# coordinator on 127.0.0.1:8123, data in ./tandem-data. Arguments go to `tandem`
# (default: `serve`); `./scripts/run.sh bench [options]` runs the benchmark (its own binary,
# `tandem-bench`, not part of the server).
set -euo pipefail
cd "$(dirname "$0")/.."
if (($# == 0)); then set -- serve; fi
if [[ "$1" == bench ]]; then
    shift
    ./scripts/prereqs.sh --for-bench
    # The benchmark runs the `tandem` binary as it ships, as separate processes: the `dist` build,
    # optimized with a trained profile (scripts/pgo.sh: about 50 minutes cold, nothing to do when
    # up to date). Its own client is the release build, which the tests build too.
    ./scripts/pgo.sh
    cargo build --release --locked -p tandem-bench
    target="$(realpath -m "${CARGO_TARGET_DIR:-target}")"
    TANDEM_BIN="$target/dist/tandem" exec "$target/release/tandem-bench" "$@"
fi
./scripts/prereqs.sh
exec cargo run --release --bin tandem -- "$@"

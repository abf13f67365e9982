#!/usr/bin/env bash
# Builds and runs tandem (release). With no arguments: one node with the embedded
# coordinator on 127.0.0.1:8123, data in ./tandem-data. Arguments go to `tandem`
# (default: `serve`); `./scripts/run.sh bench [options]` runs the benchmark (its own binary,
# `tandem-bench`, not part of the server).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/prereqs.sh
if (($# == 0)); then set -- serve; fi
if [[ "$1" == bench ]]; then
    shift
    # The benchmark runs the `tandem` binary as it ships (the `dist` build: release with
    # whole-program LTO) as separate processes; it finds it next to its own binary.
    cargo build --profile dist --locked --bin tandem
    exec cargo run --profile dist --locked -p tandem-bench -- "$@"
fi
exec cargo run --release --bin tandem -- "$@"

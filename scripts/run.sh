#!/usr/bin/env bash
# Builds and runs tandem (release). With no arguments: one node with the embedded
# coordinator on 127.0.0.1:8123, data in ./tandem-data. Arguments go to `tandem`
# (default: `serve`), e.g. `./scripts/run.sh bench`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/prereqs.sh
if (($# == 0)); then set -- serve; fi
exec cargo run --release --bin tandem -- "$@"

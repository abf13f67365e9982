#!/usr/bin/env bash
# Builds `tandem` as it ships, the `dist` profile, with profile-guided optimization: an
# instrumented build, a training run that drives it as users do (scripts/pgo_train.py), then the
# optimized build at <target>/dist/tandem. Cold, that is two full ThinLTO builds: about 50
# minutes on 2 cores. A second run trains again only when the instrumented binary or the training
# changed, so with nothing changed it builds nothing. Needs python3, and rustup's llvm-tools
# (added when missing) for the `llvm-profdata` of rustc's own LLVM.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
sysroot="$(rustc --print sysroot)"
host="$(rustc -vV | sed -n 's/^host: //p')"
profdata="$sysroot/lib/rustlib/$host/bin/llvm-profdata"
if [[ ! -x "$profdata" ]]; then
    rustup component add llvm-tools
fi
profiles="$(realpath -m "$target/pgo-profiles")"
# The instrumented build is `dist`'s own, with its settings (Cargo.toml): the counts are matched to
# the optimized build's functions by symbol, and the symbols change with the settings. It goes to
# its own target directory, so that its binary does not take the place of the optimized one.
RUSTFLAGS="-Cprofile-generate=$profiles/raw" \
    cargo build --profile dist --locked --bin tandem --target-dir "$target/pgo-instrumented"
instrumented="$target/pgo-instrumented/dist/tandem"
# Cargo tracks the profile file (rustc lists it among each crate's inputs): a new one rebuilds every
# crate of the optimized build. The counts differ from one training to the next, so the profile is
# only made again when what it was trained on changed: the instrumented binary or the training.
trained_on="$(cat "$instrumented" scripts/pgo_train.py scripts/local_node.py | sha256sum | cut -d' ' -f1)"
if [[ -f "$profiles/tandem.profdata" && "$(cat "$profiles/trained-on" 2>/dev/null)" == "$trained_on" ]]; then
    echo "pgo.sh: $profiles/tandem.profdata is up to date with the instrumented build and the training"
else
    rm -rf "$profiles"
    python3 scripts/pgo_train.py "$instrumented"
    "$profdata" merge -o "$profiles/tandem.profdata" "$profiles/raw"
    echo "$trained_on" >"$profiles/trained-on"
fi
RUSTFLAGS="-Cprofile-use=$profiles/tandem.profdata" cargo build --profile dist --locked --bin tandem

#!/usr/bin/env bash
# Builds `tandem` with profile-guided optimization, in a cargo profile (default `dist`): an
# instrumented build, a training run that drives it as users do (scripts/pgo_train.py), then the
# optimized build at <target>/<profile>/tandem. Takes two full builds: about 75 minutes on a cold
# 2-core machine. Needs python3, and rustup's llvm-tools (added when missing) for the
# `llvm-profdata` of rustc's own LLVM.
#
#     scripts/pgo.sh [profile]
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-dist}"
target="${CARGO_TARGET_DIR:-target}"
sysroot="$(rustc --print sysroot)"
host="$(rustc -vV | sed -n 's/^host: //p')"
profdata="$sysroot/lib/rustlib/$host/bin/llvm-profdata"
if [[ ! -x "$profdata" ]]; then
    rustup component add llvm-tools
fi
profiles="$(realpath -m "$target/pgo-profiles")"
rm -rf "$profiles"
# The instrumented build goes to its own target directory: the flags differ for every crate, and
# sharing one would rebuild the optimized build's dependencies each time.
RUSTFLAGS="-Cprofile-generate=$profiles/raw" \
    cargo build --profile "$profile" --locked --bin tandem --target-dir "$target/pgo-instrumented"
python3 scripts/pgo_train.py "$target/pgo-instrumented/$profile/tandem"
"$profdata" merge -o "$profiles/tandem.profdata" "$profiles/raw"
# The optimized build shares the target directory, so a later build of the same profile without
# these flags (or with a new profile) rebuilds every crate: cargo tracks the flags and the file.
RUSTFLAGS="-Cprofile-use=$profiles/tandem.profdata" cargo build --profile "$profile" --locked --bin tandem

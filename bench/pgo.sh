#!/usr/bin/env bash
# A profile-guided (PGO) release build of Frontdesk: builds an instrumented binary, runs bench/run.sh's
# proxy load through it (HTTP/1.1, TLS, h2c, h2 and gzip, short runs), merges the profile, and builds the
# release binary again with it. The code is the same; the compiler lays out and inlines it for the paths
# the load took. See bench/README.md ("Profile-guided build") and bench/RESULTS.md.
#
#   bench/pgo.sh                 # -> target/pgo/release/frontdesk
#   FRONTDESK_BIN=target/pgo/release/frontdesk bench/run.sh
#
# Options (environment):
#   PGO_SCENARIOS  the training load, bench/run.sh's SCENARIOS   (default "http https h2c h2 gzip")
#   PGO_DURATION   each scenario's measured run                  (default 5s)
#
# Needs what bench/run.sh needs, and llvm-profdata of the toolchain's LLVM (rustup component add
# llvm-tools). Output in target/pgo (its own target directory: the flags differ from a plain build's).
set -euo pipefail
BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH/.." && pwd)
cd "$ROOT"

SYSROOT=$(rustc --print sysroot)
HOST=$(rustc -vV | awk '/^host:/ {print $2}')
PROFDATA=$SYSROOT/lib/rustlib/$HOST/bin/llvm-profdata
if [[ ! -x $PROFDATA ]]; then
    echo "[pgo] llvm-profdata not found; installing the llvm-tools component" >&2
    rustup component add llvm-tools
fi

DATA=$ROOT/target/pgo-data
rm -rf "$DATA"
mkdir -p "$DATA"

echo "[pgo] 1/3 instrumented build (target/pgo-gen)" >&2
RUSTFLAGS="-Cprofile-generate=$DATA" CARGO_TARGET_DIR=$ROOT/target/pgo-gen \
    cargo build --release --bin frontdesk

echo "[pgo] 2/3 training load" >&2
# Build scripts ran instrumented too: their profiles are not the gateway's.
rm -f "$DATA"/*.profraw
# Frontdesk only: the profile is written when the binary exits (run.sh stops it with SIGTERM, and it
# drains and exits 0).
PROXIES=frontdesk SCENARIOS="${PGO_SCENARIOS:-http https h2c h2 gzip}" DURATION="${PGO_DURATION:-5s}" WARMUP=1s \
    IDLE_CONNS=200 FRONTDESK_BIN=$ROOT/target/pgo-gen/release/frontdesk "$BENCH/run.sh" >/dev/null
ls "$DATA"/*.profraw >/dev/null 2>&1 || { echo "[pgo] no profile was written" >&2; exit 1; }
"$PROFDATA" merge -o "$DATA/merged.profdata" "$DATA"/*.profraw

echo "[pgo] 3/3 optimised build (target/pgo)" >&2
RUSTFLAGS="-Cprofile-use=$DATA/merged.profdata" CARGO_TARGET_DIR=$ROOT/target/pgo \
    cargo build --release --bin frontdesk
echo "[pgo] built $ROOT/target/pgo/release/frontdesk" >&2

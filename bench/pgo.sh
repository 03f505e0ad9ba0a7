#!/usr/bin/env bash
# The release build of Frontdesk, profile-guided (PGO): builds an instrumented binary, runs the
# training load through it (HTTP/1.1, TLS, h2c, h2 and gzip), merges the profile, and builds the
# release binary again with it. The code is the same; the compiler lays out and inlines it for the paths
# the load took. See README.md ("Release build"), bench/README.md ("Profile-guided build") and
# bench/RESULTS.md.
#
#   bench/pgo.sh                 # -> target/pgo/release/frontdesk
#   FRONTDESK_BIN=target/pgo/release/frontdesk bench/run.sh
#
# Options (environment):
#   PGO_LOAD       train: the `pgo-train` example (bench/train/), which needs nothing but Rust (default);
#                  bench: bench/run.sh's proxy load instead (needs nginx, wrk, h2load: what run.sh needs)
#   PGO_DURATION   each row's length, in seconds (`5s` or `5`)   (default 5s)
#   PGO_SCENARIOS  with PGO_LOAD=bench, run.sh's SCENARIOS         (default "http https h2c h2 gzip")
#
# Needs llvm-profdata of the toolchain's LLVM (installed here with `rustup component add llvm-tools`
# when missing). Output in target/pgo (its own target directory: the flags differ from a plain build's).
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

echo "[pgo] 2/3 training load (${PGO_LOAD:-train})" >&2
# Build scripts ran instrumented too: their profiles are not the gateway's.
rm -f "$DATA"/*.profraw
# The profile is written when the binary exits: both loads stop it with SIGTERM, and it drains and
# exits 0.
DURATION=${PGO_DURATION:-5s}
# The codec the release binary runs by default (a config without `server.http1`), not one chosen
# for a test run.
unset FRONTDESK_HTTP1
case ${PGO_LOAD:-train} in
train)
    # The load client is a debug build in the usual target directory: not instrumented (its own
    # profile would not be the gateway's), and shared with the tests' build.
    cargo build --example pgo-train
    "$ROOT/target/debug/examples/pgo-train" "$ROOT/target/pgo-gen/release/frontdesk" "${DURATION%s}" 16 \
        2> >(grep -v '^\[frontdesk\]' >&2)
    ;;
bench)
    PROXIES=frontdesk SCENARIOS="${PGO_SCENARIOS:-http https h2c h2 gzip}" DURATION="$DURATION" WARMUP=1s \
        IDLE_CONNS=200 FRONTDESK_BIN=$ROOT/target/pgo-gen/release/frontdesk "$BENCH/run.sh" >/dev/null
    ;;
*)
    echo "[pgo] PGO_LOAD must be train or bench" >&2
    exit 2
    ;;
esac
ls "$DATA"/*.profraw >/dev/null 2>&1 || { echo "[pgo] no profile was written" >&2; exit 1; }
"$PROFDATA" merge -o "$DATA/merged.profdata" "$DATA"/*.profraw

echo "[pgo] 3/3 optimised build (target/pgo)" >&2
RUSTFLAGS="-Cprofile-use=$DATA/merged.profdata" CARGO_TARGET_DIR=$ROOT/target/pgo \
    cargo build --release --bin frontdesk
echo "[pgo] built $ROOT/target/pgo/release/frontdesk" >&2

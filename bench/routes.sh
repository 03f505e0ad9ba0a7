#!/usr/bin/env bash
# Route table scale benchmark. See bench/README.md ("Route table scale").
#
#   bench/routes.sh                    # 10, 1,000 and 10,000 routes
#   SIZES="10 10000 40000" bench/routes.sh
#
# For each size, one process (bench/routes.rs, built as the `routes` example) generates a
# config of that many routes (a third each of prefix, exact and template rules), loads and
# compiles it as `frontdesk run` does, and measures matching one request against the table.
# A process per size, so each peak RSS is its own.
#
# Options (environment):
#   SIZES        table sizes, in order                     (default "10 1000 10000")
#   ITERATIONS   lookups per timing round (15 rounds; the
#                median round is reported)                 (default 20000)
#   ROUTES_BIN   use this binary instead of building the
#                example with `cargo build --release`
#
# Columns: compile ms is load (YAML, validation) plus snapshot build (route table, plugin
# chains, metric series); peak RSS is the process's VmHWM after compiling (including the
# generated YAML text); the match columns are nanoseconds per `find` for the first and the last
# route of each kind, and for a path no route takes.
set -euo pipefail
export LC_ALL=C

SIZES=${SIZES:-10 1000 10000}
ITERATIONS=${ITERATIONS:-20000}
ROUTES_BIN=${ROUTES_BIN:-}
BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$BENCH")

if [[ -z $ROUTES_BIN ]]; then
    (cd "$ROOT" && cargo build --release --example routes >&2)
    ROUTES_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/examples/routes
fi
[[ -x $ROUTES_BIN ]] || { echo "error: $ROUTES_BIN is not executable" >&2; exit 1; }

field() { # field KEY LINE
    local kv
    for kv in $2; do
        if [[ $kv == "$1="* ]]; then
            printf '%s' "${kv#*=}"
            return
        fi
    done
    printf '-'
}

printf '# %s  %s  %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(uname -srm)" \
    "$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2 | xargs || true)"
printf '# frontdesk %s (release build); %s lookups per round, median of 15 rounds\n\n' \
    "$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo unknown)" "$ITERATIONS"
printf '%7s %9s %8s %11s %9s %10s %8s %9s %8s %8s %8s %8s\n' \
    routes "load ms" "build ms" "compile ms" "peak MiB" \
    "prefix ns" "(last)" "exact ns" "(last)" "tmpl ns" "(last)" "miss ns"
for n in $SIZES; do
    line=$("$ROUTES_BIN" "$n" "$ITERATIONS")
    printf '%7s %9s %8s %11s %9s %10s %8s %9s %8s %8s %8s %8s\n' \
        "$n" "$(field load_ms "$line")" "$(field build_ms "$line")" \
        "$(field compile_ms "$line")" "$(field peak_rss_mib "$line")" \
        "$(field prefix_first_ns "$line")" "$(field prefix_last_ns "$line")" \
        "$(field exact_first_ns "$line")" "$(field exact_last_ns "$line")" \
        "$(field template_first_ns "$line")" "$(field template_last_ns "$line")" \
        "$(field miss_ns "$line")"
done

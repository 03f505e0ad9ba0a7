#!/usr/bin/env bash
# Cost of observability: three Frontdesk processes with the same route to the same nginx upstream,
# differing only in what they record, measured interleaved in one run. See bench/README.md.
#
#   off          observability.metrics.enabled: false, no access log
#   metrics      metrics on (the default), no access log
#   metrics_log  metrics on and the JSON access log written to a file (the production setup,
#                and what bench/run.sh now runs)
#
#   FRONTDESK_BIN=target/release/frontdesk bench/observe.sh
#
# Options (environment): DURATION (10s), ROUNDS (3), CONNECTIONS (50), WARMUP (3s),
# WRK_THREADS (1), PROXY_CPU (0), LOAD_CPU (1), FRONTDESK_BIN, VARIANTS ("off metrics metrics_log";
# off is the baseline and required).
#
# Scratch files go to bench/out/observe/.
set -euo pipefail
export LC_ALL=C

VARIANTS=${VARIANTS:-off metrics metrics_log}

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH/.." && pwd)
OUT=$BENCH/out/observe
UPSTREAM_BODY="hello from upstream"
cd "$ROOT"
TAG=observe-bench
# shellcheck source=bench/lib.sh
source "$BENCH/lib.sh"

declare -A PORT PID

observability_of() {
    case $1 in
        off) echo "{ metrics: { enabled: false } }" ;;
        metrics) echo "{ metrics: { enabled: true } }" ;;
        metrics_log) echo "{ metrics: { enabled: true }, access_log: { output: \"$OUT/access-$1.log\" } }" ;;
        *) die "unknown variant $1 (off, metrics, metrics_log)" ;;
    esac
}

start_variant() {
    local v=$1
    cat >"$OUT/frontdesk-$v.yaml" <<YAML
# Frontdesk config of bench/observe.sh, variant $v.
version: 1
server:
  worker_threads: 1
listeners:
  - name: bench
    address: 127.0.0.1:${PORT[$v]}
upstreams:
  origin:
    targets:
      - url: http://127.0.0.1:$UPSTREAM_PORT
routes:
  - { name: all, match: { paths: ["/"] }, upstream: origin }
observability: $(observability_of "$v")
YAML
    taskset -c "$PROXY_CPU" "$FRONTDESK_BIN" run -c "$OUT/frontdesk-$v.yaml" >>"$OUT/frontdesk-$v.log" 2>&1 &
    PID[$v]=$!
    STARTED_PIDS+=("${PID[$v]}")
    wait_port "${PORT[$v]}" "${PID[$v]}" || die "frontdesk $v did not start, see $OUT/frontdesk-$v.log"
    local res
    res=$(util status "${PORT[$v]}" / ) || die "GET / through frontdesk $v failed"
    [[ ${res%%$'\n'*} == 200 ]] || die "frontdesk $v answered ${res%%$'\n'*}, not 200"
    log "frontdesk $v on 127.0.0.1:${PORT[$v]} (pid ${PID[$v]}, cpu $PROXY_CPU)"
}

run_wrk() {
    taskset -c "$LOAD_CPU" wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$2" --latency \
        "http://127.0.0.1:${PORT[$1]}/" >"$3" 2>&1 || die "wrk failed: $(cat "$3")"
}

label_of() {
    case $1 in off) echo "-" ;; metrics) echo "metrics" ;; metrics_log) echo "metrics+log" ;; esac
}

[[ " $VARIANTS " == *" off "* ]] || die "VARIANTS must include off (the baseline)"
preflight_common
build_frontdesk
read -r UPSTREAM_PORT PORT[off] PORT[metrics] PORT[metrics_log] <<<"$(util ports 4)"
start_upstream
for v in $VARIANTS; do
    start_variant "$v"
done
for v in $VARIANTS; do
    log "warm-up $v $WARMUP"
    run_wrk "$v" "$WARMUP" "$OUT/wrk-$v-warmup.txt"
done
: >"$OUT/rounds.tsv"
for ((rnd = 1; rnd <= ROUNDS; rnd++)); do
    for v in $VARIANTS; do
        PROXY_PID=${PID[$v]}
        measure "$rnd" "$v"
    done
done
if [[ " $VARIANTS " == *" metrics_log "* ]]; then
    LINES=$(wc -l <"$OUT/access-metrics_log.log")
    # Every request of the warm-up and the rounds is one line (none dropped on this load).
    log "access log: $LINES lines"
fi

{
    echo
    echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ)  $(uname -srm)  $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "# $(nginx -v 2>&1)  $(wrk -v 2>&1 | head -1 | awk '{print "wrk", $2}')  frontdesk $FRONTDESK_DESC"
    echo "# one frontdesk (1 worker) per variant, all on cpu $PROXY_CPU, loaded one at a time;" \
        "wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION per variant and round, $ROUNDS rounds of: $VARIANTS" \
        "(after $WARMUP warm-up each) + upstream on cpu $LOAD_CPU"
    [[ -z ${LINES:-} ]] || echo "# access log of metrics_log: $LINES lines written"
    echo
    util ratio-report "$OUT/rounds.tsv" off
} | tee "$OUT/summary.txt"

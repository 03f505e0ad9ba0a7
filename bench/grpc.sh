#!/usr/bin/env bash
# The cost of REST/JSON -> gRPC transcoding: one gRPC service (grpc-testsvc, release build) behind
# one Frontdesk process, the same unary call (shop.v1.Shop/GetItem, id 7) made three ways, measured
# interleaved in rounds. See bench/README.md.
#
#   grpc        gRPC through the gateway (h2load, h2c): POST /shop.v1.Shop/GetItem on a route
#               without plugins (pass-through)
#   rest_h2c    the same call transcoded: GET /v1/items/7 over HTTP/2 cleartext (h2load)
#   rest_http1  the same call transcoded: GET /v1/items/7 over HTTP/1.1 keep-alive (wrk)
#
#   FRONTDESK_BIN=target/release/frontdesk bench/grpc.sh
#
# Options (environment): DURATION (10s), ROUNDS (3), CONNECTIONS (50), WARMUP (3s),
# WRK_THREADS (1), PROXY_CPU (0), LOAD_CPU (1; the service and the load generator share it),
# FRONTDESK_BIN, TESTSVC_BIN (default: cargo build --release -p grpc-testsvc).
#
# Scratch files go to bench/out/grpc/.
set -euo pipefail
export LC_ALL=C

TESTSVC_BIN=${TESTSVC_BIN:-}
ROWS="grpc rest_h2c rest_http1"

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH/.." && pwd)
OUT=$BENCH/out/grpc
UPSTREAM_BODY=unused
cd "$ROOT"
TAG=grpc-bench
# shellcheck source=bench/lib.sh
source "$BENCH/lib.sh"

label_of() {
    case $1 in
        grpc) echo "gRPC through the gateway (h2c, h2load), pass-through route" ;;
        rest_h2c) echo "transcoded JSON, GET /v1/items/7 over h2c (h2load)" ;;
        rest_http1) echo "transcoded JSON, GET /v1/items/7 over HTTP/1.1 (wrk)" ;;
    esac
}

# run_load ROW DURATION OUTFILE
run_load() {
    local url="http://127.0.0.1:$PORT"
    case $1 in
        grpc)
            taskset -c "$LOAD_CPU" h2load -t"$WRK_THREADS" -c"$CONNECTIONS" -m1 -D "$2" \
                -d "$OUT/getitem.bin" -H 'content-type: application/grpc' -H 'te: trailers' \
                "$url/shop.v1.Shop/GetItem" >"$3" 2>&1 || die "h2load failed: $(cat "$3")"
            ;;
        rest_h2c)
            taskset -c "$LOAD_CPU" h2load -t"$WRK_THREADS" -c"$CONNECTIONS" -m1 -D "$2" \
                "$url/v1/items/7" >"$3" 2>&1 || die "h2load failed: $(cat "$3")"
            ;;
        rest_http1)
            taskset -c "$LOAD_CPU" wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$2" --latency \
                "$url/v1/items/7" >"$3" 2>&1 || die "wrk failed: $(cat "$3")"
            ;;
    esac
}

# measure_row ROUND ROW: one measured run, one line in rounds.tsv.
measure_row() {
    local rnd=$1 row=$2 out before after reqs rps err secs
    out=$OUT/load-$row-$rnd.txt
    alive frontdesk "$PROXY_PID"
    before=$(cpu_ticks "$PROXY_PID")
    run_load "$row" "$DURATION" "$out"
    after=$(cpu_ticks "$PROXY_PID")
    if [[ $row == rest_http1 ]]; then
        reqs=$(awk '/ requests in / {print $1}' "$out")
        rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
        err=$(awk '/Non-2xx or 3xx responses:/ {n += $NF}
            /Socket errors:/ {gsub(/,/, ""); n += $4 + $6 + $8 + $10} END {print n + 0}' "$out")
    else
        # "requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout"
        # "status codes: N 2xx, N 3xx, N 4xx, N 5xx"
        reqs=$(awk '/^requests:/ {print $8}' "$out")
        rps=$(awk '/^finished in/ {print $4}' "$out")
        err=$(awk '/^requests:/ {n += $10 + $12 + $14} /^status codes:/ {n += $5 + $7 + $9} END {print n + 0}' "$out")
    fi
    [[ -n $reqs && $reqs -gt 0 ]] || die "$row round $rnd: no requests completed, see $out"
    secs=$(awk -v t="$((after - before))" -v hz="$CLK_TCK" 'BEGIN {printf "%.4f", t / hz}')
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$rnd" "$row" "$reqs" "$rps" "$secs" "$err" >>"$OUT/rounds.tsv"
    log "round $rnd $row: $reqs requests, $rps req/s, ${secs}s CPU, $err errors"
}

main() {
    local need=()
    command -v h2load >/dev/null || need+=(nghttp2-client)
    install_and_pin "${need[@]+"${need[@]}"}"
    raise_nofile $((2 * CONNECTIONS + 4096)) $((2 * CONNECTIONS + 200)) "CONNECTIONS=$CONNECTIONS"
    fresh_out
    build_frontdesk
    if [[ -z $TESTSVC_BIN ]]; then
        log "cargo build --release -p grpc-testsvc"
        cargo build --release -p grpc-testsvc >&2
        TESTSVC_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/grpc-testsvc
    fi
    [[ -x $TESTSVC_BIN ]] || die "$TESTSVC_BIN not found"

    local ports svc_port
    ports=$(util ports 2)
    svc_port=${ports%% *}
    PORT=${ports##* }
    taskset -c "$LOAD_CPU" "$TESTSVC_BIN" --listen "127.0.0.1:$svc_port" >"$OUT/testsvc.log" 2>&1 &
    SVC_PID=$!
    STARTED_PIDS+=("$SVC_PID")
    wait_port "$svc_port" "$SVC_PID" || die "grpc-testsvc did not start, see $OUT/testsvc.log"

    # The descriptors pinned from the service's reflection, as a deploy would.
    "$FRONTDESK_BIN" proto pull --reflect "http://127.0.0.1:$svc_port" -o "$OUT/shop.pb" 2>>"$OUT/pull.log" ||
        die "proto pull failed, see $OUT/pull.log"
    cat >"$OUT/frontdesk.yaml" <<YAML
# Frontdesk config of bench/grpc.sh.
version: 1
server:
  worker_threads: 1
listeners:
  - name: bench
    address: 127.0.0.1:$PORT
upstreams:
  shop:
    targets: [{ url: "http://127.0.0.1:$svc_port" }]
    protocol: h2c
routes:
  - { name: grpc, match: { paths: ["/shop.v1.Shop/"] }, upstream: shop }
  - name: rest
    match: { paths: ["/v1/"] }
    upstream: shop
    plugins:
      grpc_transcode:
        descriptors: { file: shop.pb }
observability:
  access_log: { output: "$OUT/access.log" }
YAML
    taskset -c "$PROXY_CPU" "$FRONTDESK_BIN" run -c "$OUT/frontdesk.yaml" >>"$OUT/frontdesk.log" 2>&1 &
    PROXY_PID=$!
    STARTED_PIDS+=("$PROXY_PID")
    wait_port "$PORT" "$PROXY_PID" || die "frontdesk did not start, see $OUT/frontdesk.log"

    # GetItemRequest { shelf: "s", id: 7 }, framed: flag 0, length 5, then the message.
    printf '\x00\x00\x00\x00\x05\x0a\x01\x73\x10\x07' >"$OUT/getitem.bin"
    # Correctness first: the transcoded answer and a gRPC call that succeeds.
    local res
    res=$(python3 -c "import urllib.request,sys; print(urllib.request.urlopen('http://127.0.0.1:$PORT/v1/items/7').read().decode())") ||
        die "GET /v1/items/7 failed"
    [[ $res == *'"name":"item-7"'* ]] || die "unexpected transcoded answer: $res"
    h2load -n 1 -c 1 -d "$OUT/getitem.bin" -H 'content-type: application/grpc' -H 'te: trailers' \
        "http://127.0.0.1:$PORT/shop.v1.Shop/GetItem" >"$OUT/check.txt" 2>&1 || die "gRPC check failed: $(cat "$OUT/check.txt")"
    grep -q '1 succeeded' "$OUT/check.txt" || die "gRPC check failed: $(cat "$OUT/check.txt")"
    log "frontdesk on 127.0.0.1:$PORT (pid $PROXY_PID, cpu $PROXY_CPU); grpc-testsvc on $svc_port (cpu $LOAD_CPU)"

    local row rnd
    for row in $ROWS; do run_load "$row" "$WARMUP" "$OUT/warmup-$row.txt"; done
    : >"$OUT/rounds.tsv"
    for ((rnd = 1; rnd <= ROUNDS; rnd++)); do
        for row in $ROWS; do measure_row "$rnd" "$row"; done
    done

    echo
    echo "Frontdesk $FRONTDESK_DESC; $CONNECTIONS connections, $DURATION x $ROUNDS rounds, proxy on CPU $PROXY_CPU"
    python3 - "$OUT/rounds.tsv" <<'PY'
import sys, statistics
rows = {}
for line in open(sys.argv[1]):
    rnd, row, reqs, rps, secs, err = line.split("\t")
    rows.setdefault(row, []).append((int(reqs), float(rps), float(secs), int(err)))
base = None
print(f"{'row':<12} {'req/s':>9} {'CPU us/req':>11} {'vs grpc':>8} {'errors':>7}")
for row, runs in rows.items():
    rps = statistics.median(r[1] for r in runs)
    us = statistics.median(r[2] / r[0] * 1e6 for r in runs)
    err = sum(r[3] for r in runs)
    if base is None:
        base = us
    print(f"{row:<12} {rps:>9.0f} {us:>11.2f} {us / base:>7.2f}x {err:>7}")
PY
}

main "$@"

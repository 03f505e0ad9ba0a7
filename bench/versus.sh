#!/usr/bin/env bash
# Frontdesk builds against nginx on the plain proxy rows, interleaved: every proxy runs
# at once on the same pinned core, and each round loads them one at a time for DURATION, in an
# order that rotates from round to round. A machine whose speed drifts (a VM's neighbours) then
# slows every proxy alike within a round, and the per-round ratios stay comparable where
# back-to-back `run.sh` runs spread by ±15%. See bench/README.md.
#
#   BUILDS="release=target/release/frontdesk pgo=target/pgo/release/frontdesk" bench/versus.sh
#   bench/versus.sh                    # one build: FRONTDESK_BIN, or `cargo build --release`
#   SCENARIO=h2c bench/versus.sh       # HTTP/2 prior knowledge (h2load); also https, h2 (TLS)
#
# The proxies are configured as in run.sh's rows of the same name: bench/frontdesk.yaml (or
# frontdesk-tls.yaml; metrics and the JSON access log on) and bench/nginx-proxy.conf (one worker,
# buffered access log, upstream keep-alive), the same nginx upstream on LOAD_CPU.
#
# Options (environment): SCENARIO (http, https, h2c or h2; default http), BUILDS (NAME=BINARY
# pairs; names are letters, digits and _), DURATION (10s), ROUNDS (3), CONNECTIONS (50), WARMUP
# (3s), WRK_THREADS (1), PROXY_CPU (0), LOAD_CPU (1), FRONTDESK_BIN (the build when BUILDS is
# unset).
#
# Prints each proxy's figures over all rounds, then each build against nginx: CPU per request
# over all rounds, and per round with their median. Scratch files go to bench/out/versus/.
set -euo pipefail
export LC_ALL=C

SCENARIO=${SCENARIO:-http}

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH/.." && pwd)
OUT=$BENCH/out/versus
UPSTREAM_BODY="hello from upstream"
cd "$ROOT"
TAG=versus
# shellcheck source=bench/lib.sh
source "$BENCH/lib.sh"

declare -A PORT PID BIN

# start_frontdesk NAME: one Frontdesk build with run.sh's config for the row, on its own port.
start_frontdesk() {
    local name=$1 dir=$OUT/$1
    mkdir -p "$dir"
    if [[ $TLS == 1 ]]; then
        fill "$BENCH/frontdesk-tls.yaml" "$dir/frontdesk.yaml" PORT="${PORT[$name]}" UPSTREAM_PORT="$UPSTREAM_PORT" \
            OUT="$dir" CERT="$CERT" KEY="$KEY"
    else
        fill "$BENCH/frontdesk.yaml" "$dir/frontdesk.yaml" PORT="${PORT[$name]}" UPSTREAM_PORT="$UPSTREAM_PORT" OUT="$dir"
    fi
    taskset -c "$PROXY_CPU" "${BIN[$name]}" run -c "$dir/frontdesk.yaml" >>"$dir/frontdesk.log" 2>&1 &
    PID[$name]=$!
    STARTED_PIDS+=("${PID[$name]}")
    wait_port "${PORT[$name]}" "${PID[$name]}" || die "frontdesk $name did not start, see $dir/frontdesk.log"
    log "frontdesk $name (${BIN[$name]}) on 127.0.0.1:${PORT[$name]} (pid ${PID[$name]}, cpu $PROXY_CPU)"
}

# start_nginx: the nginx proxy of run.sh's http row; its worker's CPU is what is counted.
start_nginx() {
    local flags=
    case $SCENARIO in h2c) flags=http2 ;; https) flags=ssl ;; h2) flags="ssl http2" ;; esac
    # No cache zone (no row here caches).
    grep -v -e proxy_cache_path "$BENCH/nginx-proxy.conf" >"$OUT/nginx-proxy.template"
    fill "$OUT/nginx-proxy.template" "$OUT/nginx-proxy.conf" OUT="$OUT" NOFILE="$NOFILE" \
        WORKER_CONNECTIONS=$((2 * CONNECTIONS + 1024)) PORT="${PORT[nginx]}" UPSTREAM_PORT="$UPSTREAM_PORT" \
        UPSTREAM_KEEPALIVE=$((CONNECTIONS + 64)) LISTEN_FLAGS="$flags" GZIP= CACHE= CERT="$CERT" KEY="$KEY"
    mkdir -p "$OUT/nginx-proxy-tmp"
    taskset -c "$PROXY_CPU" nginx -p "$OUT" -e "$OUT/nginx-proxy.error.log" -c "$OUT/nginx-proxy.conf" \
        >>"$OUT/nginx-proxy.stderr" 2>&1 &
    local master=$!
    STARTED_PIDS+=("$master")
    wait_port "${PORT[nginx]}" "$master" || die "nginx proxy did not start, see $OUT/nginx-proxy.error.log"
    local children
    read -ra children <<<"$(children_of "$master" | tr '\n' ' ')"
    ((${#children[@]} == 1)) || die "expected one nginx worker, found: ${children[*]}"
    STARTED_PIDS+=("${children[0]}")
    PID[nginx]=${children[0]}
    log "nginx proxy on 127.0.0.1:${PORT[nginx]} (worker pid ${PID[nginx]}, cpu $PROXY_CPU)"
}

# run_wrk NAME DURATION OUTFILE: the load on one proxy (wrk; h2load for h2c and h2).
run_wrk() {
    if [[ $H2 == 1 ]]; then
        taskset -c "$LOAD_CPU" h2load -t"$WRK_THREADS" -c"$CONNECTIONS" -m1 -D "$2" \
            "$URL_SCHEME://127.0.0.1:${PORT[$1]}/" >"$3" 2>&1 || die "h2load failed: $(cat "$3")"
    else
        taskset -c "$LOAD_CPU" wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$2" --latency \
            "$URL_SCHEME://127.0.0.1:${PORT[$1]}/" >"$3" 2>&1 || die "wrk failed: $(cat "$3")"
    fi
}

# check NAME: the proxy answers the upstream's body (HTTP/2: one request through h2load).
check() {
    if [[ $H2 == 1 ]]; then
        h2load -n 1 -c 1 "$URL_SCHEME://127.0.0.1:${PORT[$1]}/" >"$OUT/check-$1.txt" 2>&1 || true
        grep -q '^status codes: 1 2xx' "$OUT/check-$1.txt" || die "HTTP/2 GET / through $1 failed, see $OUT/check-$1.txt"
        return
    fi
    local body
    body=$(util get "${PORT[$1]}" "$URL_SCHEME") || die "GET / through $1 failed"
    [[ $body == "$UPSTREAM_BODY" ]] || die "$1 answered an unexpected body: $body"
}

label_of() { if [[ $1 == nginx ]]; then echo nginx; else echo frontdesk; fi; }

case $SCENARIO in
    http | https | h2c | h2) ;;
    *) die "SCENARIO is http, https, h2c or h2, not $SCENARIO" ;;
esac
LOAD_KIND=$SCENARIO
H2=0 TLS=0 URL_SCHEME=http
[[ $SCENARIO == h2c || $SCENARIO == h2 ]] && H2=1
[[ $SCENARIO == https || $SCENARIO == h2 ]] && TLS=1 URL_SCHEME=https
extra=()
[[ $H2 == 1 ]] && ! command -v h2load >/dev/null && extra+=(nghttp2-client)
command -v openssl >/dev/null || extra+=(openssl)
preflight_common "${extra[@]+"${extra[@]}"}"
make_cert
if [[ -z ${BUILDS:-} ]]; then
    build_frontdesk
    BUILDS="frontdesk=$FRONTDESK_BIN"
fi
NAMES=()
for pair in $BUILDS; do
    name=${pair%%=*}
    [[ $pair == *=* && $name =~ ^[A-Za-z0-9_]+$ && $name != nginx ]] ||
        die "BUILDS takes NAME=BINARY pairs (names of letters, digits and _, not nginx): $pair"
    BIN[$name]=${pair#*=}
    [[ -x ${BIN[$name]} ]] || die "$name: ${BIN[$name]} is not executable"
    NAMES+=("$name")
done
NAMES+=(nginx)
read -ra ports <<<"$(util ports $((${#NAMES[@]} + 1)))"
UPSTREAM_PORT=${ports[0]}
for i in "${!NAMES[@]}"; do PORT[${NAMES[$i]}]=${ports[$((i + 1))]}; done
start_upstream
for name in "${NAMES[@]}"; do
    if [[ $name == nginx ]]; then start_nginx; else start_frontdesk "$name"; fi
    check "$name"
done
for name in "${NAMES[@]}"; do
    log "warm-up $name $WARMUP"
    run_wrk "$name" "$WARMUP" "$OUT/wrk-$name-warmup.txt"
done
: >"$OUT/rounds.tsv"
for ((rnd = 1; rnd <= ROUNDS; rnd++)); do
    # Rotated: no proxy always runs first (or right after the same other one).
    n=${#NAMES[@]}
    for ((k = 0; k < n; k++)); do
        name=${NAMES[$(((k + rnd - 1) % n))]}
        PROXY_PID=${PID[$name]}
        measure "$rnd" "$name"
    done
done

{
    echo
    echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ)  $(uname -srm)  $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "# $(nginx -v 2>&1)  $(wrk -v 2>&1 | head -1 | awk '{print "wrk", $2}')  builds: $BUILDS"
    echo "# every proxy on cpu $PROXY_CPU (one worker each), loaded one at a time;" \
        "$(if [[ $H2 == 1 ]]; then echo "h2load -m1 ($SCENARIO; p50 is its mean, no p99)"; else echo "wrk ($SCENARIO, HTTP/1.1 keep-alive)"; fi)" \
        "-t$WRK_THREADS -c$CONNECTIONS -d$DURATION per proxy and round, $ROUNDS rounds" \
        "(order rotated; after $WARMUP warm-up each) + upstream on cpu $LOAD_CPU"
    echo
    util ratio-report "$OUT/rounds.tsv" nginx
} | tee "$OUT/summary.txt"

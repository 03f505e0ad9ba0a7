#!/usr/bin/env bash
# Frontdesk vs nginx reverse-proxy benchmark. See bench/README.md.
#
#   sudo bench/run.sh                       # defaults
#   DURATION=30s CONNECTIONS=100 bench/run.sh
#
# Options (environment):
#   DURATION      measured wrk run per proxy           (default 10s)
#   CONNECTIONS   wrk concurrent connections           (default 50)
#   IDLE_CONNS    idle keep-alive connections for the
#                 memory-per-connection test           (default 2000)
#   WARMUP        wrk warm-up run before measuring     (default 3s)
#   WRK_THREADS   wrk threads                          (default 1)
#   PROXY_CPU     core the proxy is pinned to          (default 0)
#   LOAD_CPU      core for wrk, upstream, idle client  (default 1)
#   FRONTDESK_BIN use this binary instead of building target/release/frontdesk
#   PROXIES       which proxies to run, in order       (default "frontdesk nginx")
#   SCENARIOS     which rows to run, in order          (default "http https h2c h2 gzip")
#                 http: HTTP/1.1 keep-alive (wrk); https: the same over TLS (wrk);
#                 h2c: HTTP/2 prior knowledge (h2load); h2: HTTP/2 over TLS, ALPN (h2load);
#                 gzip: HTTP/1.1 keep-alive (wrk, Accept-Encoding: gzip), a 10 KiB JSON
#                 response compressed by the proxy (Frontdesk's `compression`, nginx's gzip
#                 module, both at gzip level 5)
#                 cache1k, cache100k (not in the default): HTTP/1.1 keep-alive (wrk), cache
#                 hits on a 1 KiB and a 100 KiB response the upstream marks `max-age=3600`
#                 (Frontdesk's `cache` plugin, memory tier; nginx's `proxy_cache`)
#                 agg3, json1 (not in the default): HTTP/1.1 keep-alive (wrk). json1: the plain
#                 proxy of one call to a small JSON answer (both proxies). agg3: Frontdesk only
#                 (nginx has no aggregation), an `aggregate` route of three parallel calls to
#                 the same answer, merged into one JSON answer; compare with json1's Frontdesk row
#                 json, xform, xformjq (not in the default): HTTP/1.1 keep-alive (wrk), the
#                 10 KiB JSON of the gzip row: json proxies it as it is (both proxies); xform
#                 (declarative steps) and xformjq (the same reshaping in jq) transform it with
#                 Frontdesk's `transform` plugin (Frontdesk only: nginx has no body transform;
#                 compare with the json row)
#   H2_STREAMS    h2load concurrent streams per connection (default 1)
#
# Scratch files (configs, logs, raw wrk output) go to bench/out/.
set -euo pipefail
export LC_ALL=C

IDLE_CONNS=${IDLE_CONNS:-2000}
PROXIES=${PROXIES:-frontdesk nginx}
SCENARIOS=${SCENARIOS:-http https h2c h2 gzip}
H2_STREAMS=${H2_STREAMS:-1}

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH/.." && pwd)
OUT=$BENCH/out
UPSTREAM_BODY="hello from upstream"
# The gzip row's response: a 10 KiB JSON file the upstream serves (written by make_json).
JSON_PATH=/bench.json
JSON_SIZE=10240
cd "$ROOT"

TAG=bench
# shellcheck source=bench/lib.sh
source "$BENCH/lib.sh"

# ------------------------------------------------------------- /proc utils --
# Sum of cpu_ticks over several PIDs.
cpu_ticks_sum() {
    local total=0 pid
    for pid in "$@"; do total=$((total + $(cpu_ticks "$pid"))); done
    echo "$total"
}
# Sum of user_ticks over several PIDs.
user_ticks_sum() {
    local total=0 pid
    for pid in "$@"; do total=$((total + $(user_ticks "$pid"))); done
    echo "$total"
}
# status_kb PID FIELD: a kB value from /proc/PID/status (VmRSS, VmHWM).
status_kb() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"; }

# --------------------------------------------------------------- preflight --
preflight() {
    local extra=()
    command -v openssl >/dev/null || extra+=(openssl)
    case " $SCENARIOS " in *" h2c "* | *" h2 "*) command -v h2load >/dev/null || extra+=(nghttp2-client) ;; esac
    install_and_pin "${extra[@]+"${extra[@]}"}"

    # File descriptors: idle connections + load + headroom, for us and children.
    raise_nofile $((IDLE_CONNS + 2 * CONNECTIONS + 4096)) $((IDLE_CONNS + CONNECTIONS + 200)) \
        "IDLE_CONNS=$IDLE_CONNS; run as root or lower IDLE_CONNS"
    log "ulimit -n $NOFILE"

    local sc
    for sc in $SCENARIOS; do
        case $sc in http | https | h2c | h2 | gzip | cache1k | cache100k | agg3 | json1 | json | xform | xformjq) ;; *) die "unknown scenario in SCENARIOS: $sc" ;; esac
    done
    fresh_out
}

# The gzip row's 10 KiB JSON, and the cache rows' 1 KiB and 100 KiB files, served by the upstream
# nginx from $OUT/static (see nginx-upstream.conf).
make_json() {
    mkdir -p "$OUT/static/cached"
    python3 "$BENCH/benchutil.py" json "$JSON_SIZE" >"$OUT/static${JSON_PATH}"
    head -c 1024 /dev/urandom >"$OUT/static/cached/1k.bin"
    head -c 102400 /dev/urandom >"$OUT/static/cached/100k.bin"
}

# Scenario properties.
is_tls() { [[ $1 == https || $1 == h2 ]]; }
scheme() { if is_tls "$1"; then echo https; else echo http; fi; }
# The path the load asks for.
load_path() {
    case $1 in
        gzip | json | xform | xformjq) echo "$JSON_PATH" ;;
        cache1k) echo /cached/1k.bin ;;
        cache100k) echo /cached/100k.bin ;;
        agg3) echo /agg3 ;;
        json1) echo /small.json ;;
        *) echo / ;;
    esac
}
is_cache() { [[ $1 == cache1k || $1 == cache100k ]]; }
# Rows only Frontdesk can run (nginx has no aggregation and no body transform), and the row
# each is compared with: Frontdesk's own plain proxy of the same call.
frontdesk_only() { [[ $1 == agg3 || $1 == xform || $1 == xformjq ]]; }
is_transform() { [[ $1 == xform || $1 == xformjq ]]; }
base_of() { if [[ $1 == agg3 ]]; then echo json1; else echo json; fi; }



# ------------------------------------------------------------------ proxies --
# start_<proxy> sets: PROXY_MAIN_PID (stopped afterwards), CPU_PIDS (CPU time
# summed over these), MEM_PID (memory read from this one).


start_frontdesk() {
    local port=$1 scenario=$2
    if is_tls "$scenario"; then
        fill "$BENCH/frontdesk-tls.yaml" "$OUT/frontdesk.yaml" PORT="$port" UPSTREAM_PORT="$UPSTREAM_PORT" OUT="$OUT" \
            CERT="$CERT" KEY="$KEY"
    elif [[ $scenario == agg3 || $scenario == json1 ]]; then
        # The same config for both rows: they differ only in the path asked for.
        fill "$BENCH/frontdesk-aggregate.yaml" "$OUT/frontdesk.yaml" PORT="$port" UPSTREAM_PORT="$UPSTREAM_PORT" OUT="$OUT"
    else
        fill "$BENCH/frontdesk.yaml" "$OUT/frontdesk.yaml" PORT="$port" UPSTREAM_PORT="$UPSTREAM_PORT" OUT="$OUT"
    fi
    if [[ $scenario == gzip ]]; then
        # The same level and minimum as nginx's side (gzip_comp_level, gzip_min_length).
        printf '%s\n' "plugins:" "  compression: { encodings: [gzip], level: { gzip: 5 }, min_size: 1KiB }" \
            >>"$OUT/frontdesk.yaml"
    fi
    if is_cache "$scenario"; then
        printf '%s\n' "plugins:" "  cache: {}" >>"$OUT/frontdesk.yaml"
    fi
    # The same reshaping of every record both ways: drop `score`, `name` becomes `title`, add
    # `source` (benchutil.py transform-check checks the answer).
    if [[ $scenario == xform ]]; then
        printf '%s\n' "plugins:" "  transform:" "    response:" "      steps:" \
            "        - remove: [/*/score]" "        - rename: { /*/name: /*/title }" \
            "        - set: { /*/source: bench }" >>"$OUT/frontdesk.yaml"
    fi
    if [[ $scenario == xformjq ]]; then
        printf '%s\n' "plugins:" "  transform:" "    response:" \
            "      jq: 'map(del(.score) | .title = .name | del(.name) | .source = \"bench\")'" \
            >>"$OUT/frontdesk.yaml"
    fi
    taskset -c "$PROXY_CPU" "$FRONTDESK_BIN" run -c "$OUT/frontdesk.yaml" >>"$OUT/frontdesk.log" 2>&1 &
    PROXY_MAIN_PID=$!
    STARTED_PIDS+=("$PROXY_MAIN_PID")
    wait_port "$port" "$PROXY_MAIN_PID" || die "frontdesk did not start, see $OUT/frontdesk.log"
    CPU_PIDS=("$PROXY_MAIN_PID")
    MEM_PID=$PROXY_MAIN_PID
}

start_nginx() {
    local port=$1 scenario=$2 flags= gzip= cache=
    case $scenario in h2c) flags=http2 ;; https | h2) flags="ssl http2" ;; esac
    if is_cache "$scenario"; then
        # The cache on tmpfs-like speed: the files stay in the page cache; the key zone in memory.
        cache="proxy_cache bench; proxy_cache_valid 200 1h; proxy_cache_lock on; add_header X-Cache \$upstream_cache_status;"
    fi
    if [[ $scenario == gzip ]]; then
        gzip="gzip on; gzip_comp_level 5; gzip_min_length 1024; gzip_types application/json; gzip_vary on; gzip_proxied any;"
    fi
    fill "$BENCH/nginx-proxy.conf" "$OUT/nginx-proxy.conf" \
        OUT="$OUT" PORT="$port" UPSTREAM_PORT="$UPSTREAM_PORT" NOFILE="$NOFILE" \
        LISTEN_FLAGS="$flags" GZIP="$gzip" CACHE="$cache" CERT="$CERT" KEY="$KEY" \
        WORKER_CONNECTIONS=$((IDLE_CONNS + 2 * CONNECTIONS + 1024)) \
        UPSTREAM_KEEPALIVE=$((CONNECTIONS + 64))
    mkdir -p "$OUT/nginx-proxy-tmp"
    taskset -c "$PROXY_CPU" nginx -p "$OUT" -e "$OUT/nginx-proxy.error.log" -c "$OUT/nginx-proxy.conf" \
        >>"$OUT/nginx-proxy.stderr" 2>&1 &
    PROXY_MAIN_PID=$!
    STARTED_PIDS+=("$PROXY_MAIN_PID")
    wait_port "$port" "$PROXY_MAIN_PID" || die "nginx proxy did not start, see $OUT/nginx-proxy.error.log and nginx-proxy.stderr"
    local children workers=() managers=() c cmd
    read -ra children <<<"$(children_of "$PROXY_MAIN_PID" | tr '\n' ' ')"
    # With proxy_cache, nginx also runs a cache manager (counted: it works for the cache) and,
    # briefly, a cache loader (not counted: it exits on its own, and has nothing to load here).
    for c in "${children[@]}"; do
        cmd=$(tr '\0' ' ' <"/proc/$c/cmdline" 2>/dev/null || true)
        case $cmd in
            *"worker process"*) workers+=("$c") ;;
            *"cache manager"*) managers+=("$c") ;;
        esac
    done
    ((${#workers[@]} == 1)) || die "expected one nginx worker, found: ${workers[*]} (children: ${children[*]})"
    STARTED_PIDS+=("${children[@]}")
    CPU_PIDS=("$PROXY_MAIN_PID" "${workers[0]}" "${managers[@]}")
    MEM_PID=${workers[0]}
}

# ----------------------------------------------------------------- measure --

run_load() { # run_load SCENARIO PORT DURATION OUTFILE
    local url
    url="$(scheme "$1")://127.0.0.1:$2$(load_path "$1")"
    case $1 in
        gzip)
            taskset -c "$LOAD_CPU" wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$3" --latency \
                -H "Accept-Encoding: gzip" "$url" >"$4" 2>&1 || die "wrk failed: $(cat "$4")"
            ;;
        http | https | cache1k | cache100k | agg3 | json1 | json | xform | xformjq)
            taskset -c "$LOAD_CPU" wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$3" --latency \
                "$url" >"$4" 2>&1 || die "wrk failed: $(cat "$4")"
            ;;
        h2c | h2)
            # h2c: HTTP/2 prior knowledge (h2load's default for http://); h2: ALPN h2 over TLS.
            taskset -c "$LOAD_CPU" h2load -t"$WRK_THREADS" -c"$CONNECTIONS" -m"$H2_STREAMS" -D "$3" \
                "$url" >"$4" 2>&1 || die "h2load failed: $(cat "$4")"
            ;;
    esac
}

# Idle keep-alive test: RSS growth of MEM_PID per idle connection.
idle_test() {
    local name=$1 port=$2 before after line ok failed open
    sleep 1
    before=$(status_kb "$MEM_PID" VmRSS)
    coproc IDLE { exec taskset -c "$LOAD_CPU" python3 "$BENCH/idle_conns.py" 127.0.0.1 "$port" "$IDLE_CONNS" 2>>"$OUT/idle-$name.log"; }
    # shellcheck disable=SC2153 # IDLE_PID is set by coproc
    local idle_pid=$IDLE_PID
    STARTED_PIDS+=("$idle_pid")
    read -r -t 600 line <&"${IDLE[0]}" || die "idle_conns.py gave no answer, see $OUT/idle-$name.log"
    read -r _ ok failed <<<"$line"
    sleep 1
    after=$(status_kb "$MEM_PID" VmRSS)
    echo check >&"${IDLE[1]}"
    read -r -t 60 line <&"${IDLE[0]}" || die "idle_conns.py did not answer check"
    open=${line#OPEN }
    eval "exec ${IDLE[1]}>&-"
    wait "$idle_pid" 2>/dev/null || true
    ((ok > 0)) || die "$name: no idle connection could be opened, see $OUT/idle-$name.log"
    ((failed == 0)) || log "warning: $name: $failed of $IDLE_CONNS idle connections failed, see $OUT/idle-$name.log"
    ((open == ok)) || log "warning: $name closed $((ok - open)) of $ok idle connections during the test"
    R_IDLE_KIB[$name]=$(awk -v a="$after" -v b="$before" -v n="$ok" 'BEGIN {printf "%.2f", (a - b) / n}')
    log "$name: VmRSS $before kB -> $after kB with $ok idle connections ($open still open)"
}

declare -A R_CPUPCT R_RPS R_P50 R_P99 R_CPU100K R_CPUREQ R_HWM R_IDLE_KIB R_ERR

# bench_proxy NAME PORT SCENARIO: one row of the table, keyed "SCENARIO/NAME".
bench_proxy() {
    local name=$1 port=$2 scenario=$3 body out before after user_before user_after key="$3/$1"
    log "=== $scenario: $name on 127.0.0.1:$port (cpu $PROXY_CPU) ==="
    "start_$name" "$port" "$scenario"

    case $scenario in
        http | https)
            body=$(python3 "$BENCH/benchutil.py" get "$port" "$(scheme "$scenario")") ||
                die "$key: GET / through the proxy failed"
            [[ $body == "$UPSTREAM_BODY" ]] || die "$key: unexpected body through the proxy: $body"
            ;;
        gzip)
            # Compressed, and decodes to the upstream's file.
            python3 "$BENCH/benchutil.py" gzip-check "$port" "$JSON_PATH" "$OUT/static${JSON_PATH}" ||
                die "$key: GET $JSON_PATH through the proxy was not the gzip of the upstream's file"
            ;;
        agg3 | json1)
            local answer
            answer=$(python3 "$BENCH/benchutil.py" status "$port" "$(load_path "$scenario")") ||
                die "$key: GET $(load_path "$scenario") through the proxy failed"
            if [[ $scenario == agg3 ]]; then
                [[ $answer == 200*'"a":{'*'"b":{'*'"c":{'* && $(grep -o '"id":42' <<<"$answer" | wc -l) == 3 ]] ||
                    die "$key: the aggregate did not merge three answers: $answer"
            else
                [[ $answer == 200*'"ok":true'* ]] || die "$key: unexpected answer through the proxy: $answer"
            fi
            ;;
        json | xform | xformjq)
            # The file as it is (json), or every record reshaped (xform, xformjq).
            python3 "$BENCH/benchutil.py" transform-check "$port" "$JSON_PATH" "$OUT/static${JSON_PATH}" \
                "$(if is_transform "$scenario"; then echo reshaped; else echo same; fi)" ||
                die "$key: GET $JSON_PATH through the proxy was not the expected answer"
            ;;
        cache1k | cache100k)
            # The whole file, then a hit (Frontdesk: Cache-Status; nginx: X-Cache).
            python3 "$BENCH/benchutil.py" cache-check "$port" "$(load_path "$scenario")" \
                "$OUT/static$(load_path "$scenario")" ||
                die "$key: GET $(load_path "$scenario") through the proxy was not a cache hit of the upstream's file"
            ;;
        h2c | h2)
            # nginx's h2c listener speaks only HTTP/2, so check with h2load itself.
            local check=$OUT/check-$scenario-$name.txt
            h2load -n 1 -c 1 "$(scheme "$scenario")://127.0.0.1:$port/" >"$check" 2>&1 || true
            grep -q '^status codes: 1 2xx' "$check" || die "$key: HTTP/2 GET / through the proxy failed, see $check"
            ;;
    esac

    log "$key: warm-up $WARMUP"
    run_load "$scenario" "$port" "$WARMUP" "$OUT/load-$scenario-$name-warmup.txt"

    log "$key: measuring $DURATION, $CONNECTIONS connections"
    out=$OUT/load-$scenario-$name.txt
    alive "$name" "${CPU_PIDS[@]}"
    before=$(cpu_ticks_sum "${CPU_PIDS[@]}")
    user_before=$(user_ticks_sum "${CPU_PIDS[@]}")
    run_load "$scenario" "$port" "$DURATION" "$out"
    alive "$name" "${CPU_PIDS[@]}"
    after=$(cpu_ticks_sum "${CPU_PIDS[@]}")
    user_after=$(user_ticks_sum "${CPU_PIDS[@]}")
    R_HWM[$key]=$(status_kb "$MEM_PID" VmHWM)

    parse_load "$scenario" "$out"
    [[ -n $L_REQS && $L_REQS -gt 0 ]] || die "$key: no requests completed, see $out"
    R_RPS[$key]=$L_RPS
    R_P50[$key]=$L_P50
    R_P99[$key]=$L_P99
    R_ERR[$key]=$L_ERR
    local secs
    secs=$(awk -v t="$((after - before))" -v hz="$CLK_TCK" 'BEGIN {printf "%.4f", t / hz}')
    R_CPU100K[$key]=$(awk -v s="$secs" -v r="$L_REQS" 'BEGIN {printf "%.3f", s / r * 100000}')
    R_CPUREQ[$key]=$(awk -v s="$secs" -v r="$L_REQS" 'BEGIN {printf "%.9f", s / r}')
    # Proxy CPU use over the run (100% = the proxy core was saturated).
    R_CPUPCT[$key]=$(awk -v s="$secs" -v ms="$L_RUN_MS" 'BEGIN {printf "%.0f", (ms > 0 ? s * 100000 / ms : 0)}')
    local user_pct
    user_pct=$(awk -v u="$((user_after - user_before))" -v t="$((after - before))" 'BEGIN {printf "%.0f", (t > 0 ? u * 100 / t : 0)}')
    log "$key: $L_REQS requests, ${R_RPS[$key]} req/s, ${secs}s CPU (${user_pct}% in user space), ${R_ERR[$key]} errors"
    ((R_ERR[$key] == 0)) || log "warning: $key: ${R_ERR[$key]} errors, see $out"

    # Idle memory is measured once per proxy, on plain HTTP/1.1.
    if [[ $scenario == http ]]; then
        idle_test "$name" "$port"
        R_IDLE_KIB[$key]=${R_IDLE_KIB[$name]}
    fi

    stop_pid "$PROXY_MAIN_PID"
}

# -------------------------------------------------------------------- main --
preflight
case " $PROXIES " in *" frontdesk "*) build_frontdesk ;; esac
make_cert

for proxy in $PROXIES; do
    case $proxy in frontdesk | nginx) ;; *) die "unknown proxy in PROXIES: $proxy" ;; esac
done
read -r UPSTREAM_PORT FRONTDESK_PORT NGINX_PORT <<<"$(python3 "$BENCH/benchutil.py" ports 3)"
make_json
start_upstream

for scenario in $SCENARIOS; do
    for proxy in $PROXIES; do
        if [[ $proxy != frontdesk ]] && frontdesk_only "$scenario"; then
            log "$scenario: $proxy has no such feature; row skipped"
            continue
        fi
        case $proxy in
            frontdesk) bench_proxy frontdesk "$FRONTDESK_PORT" "$scenario" ;;
            nginx) bench_proxy nginx "$NGINX_PORT" "$scenario" ;;
        esac
    done
done

# What each scenario's load is, for the header.
describe() {
    case $1 in
        http) echo "HTTP/1.1 keep-alive, wrk" ;;
        https) echo "HTTPS (TLS, HTTP/1.1 keep-alive), wrk" ;;
        h2c) echo "HTTP/2 prior knowledge, h2load -m$H2_STREAMS" ;;
        h2) echo "HTTP/2 over TLS (ALPN h2), h2load -m$H2_STREAMS" ;;
        gzip) echo "HTTP/1.1 keep-alive, wrk, Accept-Encoding: gzip; a $JSON_SIZE-byte JSON response compressed by the proxy at gzip level 5" ;;
        cache1k | cache100k) echo "HTTP/1.1 keep-alive, wrk; cache hits on $(load_path "$1") (max-age=3600): Frontdesk's cache plugin (memory tier) vs nginx proxy_cache" ;;
        json1) echo "HTTP/1.1 keep-alive, wrk; the plain proxy of one call to a 34-byte JSON answer" ;;
        agg3) echo "HTTP/1.1 keep-alive, wrk; Frontdesk only: an aggregate of three parallel calls to the json1 answer, merged (compare with json1/frontdesk)" ;;
        json) echo "HTTP/1.1 keep-alive, wrk; the $JSON_SIZE-byte JSON proxied as it is" ;;
        xform) echo "HTTP/1.1 keep-alive, wrk; the $JSON_SIZE-byte JSON reshaped by Frontdesk's transform plugin, declarative steps (remove, rename, set over /*/...)" ;;
        xformjq) echo "HTTP/1.1 keep-alive, wrk; the $JSON_SIZE-byte JSON reshaped by Frontdesk's transform plugin, the same in jq" ;;
    esac
}

{
    echo
    echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ)  $(uname -srm)  $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "# $(nginx -v 2>&1)  $(wrk -v 2>&1 | head -1 | awk '{print "wrk", $2}')  $(h2load --version 2>/dev/null | awk '{print "h2load", $2}')  frontdesk $FRONTDESK_DESC"
    echo "# proxy on cpu $PROXY_CPU (1 worker); load -t$WRK_THREADS -c$CONNECTIONS -d$DURATION (after $WARMUP warm-up) + upstream on cpu $LOAD_CPU; idle conns $IDLE_CONNS"
    for scenario in $SCENARIOS; do echo "# $scenario: $(describe "$scenario")"; done
    echo
    printf '%-6s %-10s %10s %8s %8s %11s %6s %13s %14s %7s\n' \
        test proxy "req/s" "p50 ms" "p99 ms" "cpu s/100k" "cpu %" "peak RSS MiB" "idle KiB/conn" errors
    for scenario in $SCENARIOS; do
        for proxy in $PROXIES; do
            key=$scenario/$proxy
            [[ -n ${R_RPS[$key]:-} ]] || continue
            printf '%-6s %-10s %10.0f %8.3f %8s %11.3f %6d %13.1f %14s %7d\n' "$scenario" "$proxy" \
                "${R_RPS[$key]}" "${R_P50[$key]}" \
                "$(awk -v v="${R_P99[$key]}" 'BEGIN {if (v < 0) print "-"; else printf "%.3f", v}')" \
                "${R_CPU100K[$key]}" "${R_CPUPCT[$key]}" \
                "$(awk -v k="${R_HWM[$key]}" 'BEGIN {print k / 1024}')" \
                "${R_IDLE_KIB[$key]:--}" "${R_ERR[$key]}"
        done
    done
    case " $SCENARIOS " in *" h2c "* | *" h2 "*) echo "(h2c/h2 rows: p50 is h2load's mean time per request; h2load reports no percentiles)" ;; esac
    echo
    for scenario in $SCENARIOS; do
        for proxy in $PROXIES; do
            key=$scenario/$proxy
            [[ -n ${R_CPUPCT[$key]:-} ]] || continue
            if ((R_CPUPCT[$key] < 90)); then
                echo "note: $key used only ${R_CPUPCT[$key]}% of its core, so req/s was limited elsewhere" \
                    "(load core or other processes); req/s and latency are not comparable, rerun on an idle machine"
            fi
        done
    done
    # ratio LABEL KEY BASE_KEY NOTE: req/s and CPU per request of KEY against BASE_KEY, or n/a.
    ratio() {
        if [[ -n ${R_RPS[$2]:-} && -n ${R_RPS[$3]:-} ]]; then
            awk -v l="$1" -v fr="${R_RPS[$2]}" -v nr="${R_RPS[$3]}" \
                -v fc="${R_CPUREQ[$2]}" -v nc="${R_CPUREQ[$3]}" \
                'BEGIN {printf "%s rps %.2f, cpu per request %.2f\n", l, fr / nr, (nc > 0 ? fc / nc : 0)}'
        else
            echo "$1 n/a ($4)"
        fi
    }
    for scenario in $SCENARIOS; do
        if frontdesk_only "$scenario"; then
            # Compared with Frontdesk's own plain proxy of the same call, when that row ran.
            base=$(base_of "$scenario")
            ratio "frontdesk $scenario/$base:" "$scenario/frontdesk" "$base/frontdesk" \
                "run SCENARIOS=\"$base $scenario\" with PROXIES including frontdesk"
            continue
        fi
        # The plain HTTP row keeps its historical form, "frontdesk/nginx: ...".
        label="frontdesk/nginx $scenario:"
        if [[ $scenario == http ]]; then label="frontdesk/nginx:"; fi
        ratio "$label" "$scenario/frontdesk" "$scenario/nginx" "PROXIES=\"$PROXIES\" did not run both"
    done
} | tee "$OUT/summary.txt"

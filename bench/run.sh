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
#
# Scratch files (configs, logs, raw wrk output) go to bench/out/.
set -euo pipefail
export LC_ALL=C

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-50}
IDLE_CONNS=${IDLE_CONNS:-2000}
WARMUP=${WARMUP:-3s}
WRK_THREADS=${WRK_THREADS:-1}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
FRONTDESK_BIN=${FRONTDESK_BIN:-}
FRONTDESK_DESC="FRONTDESK_BIN=$FRONTDESK_BIN"
PROXIES=${PROXIES:-frontdesk nginx}

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH/.." && pwd)
OUT=$BENCH/out
UPSTREAM_BODY="hello from upstream"
cd "$ROOT"

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- cleanup --
STARTED_PIDS=()
cleanup() {
    local pid
    for pid in "${STARTED_PIDS[@]+"${STARTED_PIDS[@]}"}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${STARTED_PIDS[@]+"${STARTED_PIDS[@]}"}"; do
        stop_pid "$pid"
    done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# stop_pid PID: SIGTERM, wait up to 10s, then SIGKILL.
stop_pid() {
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        # Reap it if it is our child (a zombie still answers kill -0).
        if [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) == Z ]]; then break; fi
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# ------------------------------------------------------------- /proc utils --
# CPU ticks (utime + stime) of one process, all its threads included.
cpu_ticks() {
    # Drop "pid (comm) " first: comm may contain spaces. Then utime and
    # stime (fields 14 and 15 of /proc/PID/stat) are fields 12 and 13.
    sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'
}
# alive NAME PID...: die unless all PIDs still run.
alive() {
    local name=$1 pid
    shift
    for pid in "$@"; do
        [[ -r /proc/$pid/stat && $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]] ||
            die "$name (pid $pid) exited, see the logs in $OUT"
    done
}
# Sum of cpu_ticks over several PIDs.
cpu_ticks_sum() {
    local total=0 pid
    for pid in "$@"; do total=$((total + $(cpu_ticks "$pid"))); done
    echo "$total"
}
# status_kb PID FIELD: a kB value from /proc/PID/status (VmRSS, VmHWM).
status_kb() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"; }
# Direct children of PID (no procps needed).
children_of() {
    local stat
    for stat in /proc/[0-9]*/stat; do
        sed 's/^.*) //' "$stat" 2>/dev/null | awk -v p="$1" -v f="$stat" \
            '$2 == p {split(f, a, "/"); print a[3]}'
    done
}

# --------------------------------------------------------------- preflight --
preflight() {
    local need=()
    command -v nginx >/dev/null || need+=(nginx)
    command -v wrk >/dev/null || need+=(wrk)
    command -v taskset >/dev/null || need+=(util-linux)
    command -v python3 >/dev/null || need+=(python3)
    if ((${#need[@]})); then
        [[ $(id -u) == 0 ]] || die "missing ${need[*]}; run as root or apt-get install ${need[*]}"
        log "installing ${need[*]} with apt-get"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
    local cpu
    for cpu in "$PROXY_CPU" "$LOAD_CPU"; do
        taskset -c "$cpu" true 2>/dev/null || die "cannot pin to CPU $cpu (need 2 cores; nproc=$(nproc))"
    done
    [[ $PROXY_CPU != "$LOAD_CPU" ]] || die "PROXY_CPU and LOAD_CPU must differ"

    # File descriptors: idle connections + load + headroom, for us and children.
    NOFILE=$((IDLE_CONNS + 2 * CONNECTIONS + 4096))
    local hard
    hard=$(ulimit -Hn)
    if [[ $hard != unlimited ]] && ((hard < NOFILE)); then
        ulimit -Hn "$NOFILE" 2>/dev/null || NOFILE=$hard
    fi
    ulimit -Sn "$NOFILE" || die "cannot raise ulimit -n to $NOFILE"
    ((NOFILE >= IDLE_CONNS + CONNECTIONS + 200)) ||
        die "ulimit -n is $NOFILE, too low for IDLE_CONNS=$IDLE_CONNS; run as root or lower IDLE_CONNS"
    log "ulimit -n $NOFILE"

    CLK_TCK=$(getconf CLK_TCK)
    rm -rf "$OUT"
    mkdir -p "$OUT"
}

# fill TEMPLATE DEST KEY=VALUE...: replace @KEY@ placeholders.
fill() {
    local template=$1 dest=$2 kv args=()
    shift 2
    for kv in "$@"; do args+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
    sed "${args[@]}" "$template" >"$dest"
    if grep -q '@[A-Z_]*@' "$dest"; then die "unfilled placeholder in $dest"; fi
}

wait_port() { python3 "$BENCH/benchutil.py" wait "$1" 30 "$2"; }

# ---------------------------------------------------------------- upstream --
start_upstream() {
    fill "$BENCH/nginx-upstream.conf" "$OUT/upstream.conf" \
        OUT="$OUT" PORT="$UPSTREAM_PORT" BODY="$UPSTREAM_BODY\\\\n" NOFILE="$NOFILE" \
        WORKER_CONNECTIONS=$((2 * CONNECTIONS + 1024))
    mkdir -p "$OUT/upstream-tmp"
    taskset -c "$LOAD_CPU" nginx -p "$OUT" -e "$OUT/upstream.error.log" -c "$OUT/upstream.conf" \
        >>"$OUT/upstream.stderr" 2>&1 &
    UPSTREAM_PID=$!
    STARTED_PIDS+=("$UPSTREAM_PID")
    wait_port "$UPSTREAM_PORT" "$UPSTREAM_PID" || die "upstream nginx did not start, see $OUT/upstream.error.log and upstream.stderr"
    log "upstream nginx on 127.0.0.1:$UPSTREAM_PORT (pid $UPSTREAM_PID, cpu $LOAD_CPU)"
}

# ------------------------------------------------------------------ proxies --
# start_<proxy> sets: PROXY_MAIN_PID (stopped afterwards), CPU_PIDS (CPU time
# summed over these), MEM_PID (memory read from this one).

build_frontdesk() {
    if [[ -n $FRONTDESK_BIN ]]; then
        [[ -x $FRONTDESK_BIN ]] || die "FRONTDESK_BIN=$FRONTDESK_BIN is not executable"
        return
    fi
    command -v cargo >/dev/null || die "cargo not found (or set FRONTDESK_BIN)"
    log "cargo build --release --bin frontdesk"
    cargo build --release --bin frontdesk >&2
    local target=${CARGO_TARGET_DIR:-target}
    [[ $target == /* ]] || target=$ROOT/$target
    FRONTDESK_BIN=$target/release/frontdesk
    FRONTDESK_DESC="$(git -C "$ROOT" describe --always --dirty 2>/dev/null || echo '?') (release build)"
    [[ -x $FRONTDESK_BIN ]] || die "$FRONTDESK_BIN not found after build"
}

start_frontdesk() {
    local port=$1
    fill "$BENCH/frontdesk.yaml" "$OUT/frontdesk.yaml" PORT="$port" UPSTREAM_PORT="$UPSTREAM_PORT"
    taskset -c "$PROXY_CPU" "$FRONTDESK_BIN" run -c "$OUT/frontdesk.yaml" >>"$OUT/frontdesk.log" 2>&1 &
    PROXY_MAIN_PID=$!
    STARTED_PIDS+=("$PROXY_MAIN_PID")
    wait_port "$port" "$PROXY_MAIN_PID" || die "frontdesk did not start, see $OUT/frontdesk.log"
    CPU_PIDS=("$PROXY_MAIN_PID")
    MEM_PID=$PROXY_MAIN_PID
}

start_nginx() {
    local port=$1
    fill "$BENCH/nginx-proxy.conf" "$OUT/nginx-proxy.conf" \
        OUT="$OUT" PORT="$port" UPSTREAM_PORT="$UPSTREAM_PORT" NOFILE="$NOFILE" \
        WORKER_CONNECTIONS=$((IDLE_CONNS + 2 * CONNECTIONS + 1024)) \
        UPSTREAM_KEEPALIVE=$((CONNECTIONS + 64))
    mkdir -p "$OUT/nginx-proxy-tmp"
    taskset -c "$PROXY_CPU" nginx -p "$OUT" -e "$OUT/nginx-proxy.error.log" -c "$OUT/nginx-proxy.conf" \
        >>"$OUT/nginx-proxy.stderr" 2>&1 &
    PROXY_MAIN_PID=$!
    STARTED_PIDS+=("$PROXY_MAIN_PID")
    wait_port "$port" "$PROXY_MAIN_PID" || die "nginx proxy did not start, see $OUT/nginx-proxy.error.log and nginx-proxy.stderr"
    local workers
    read -ra workers <<<"$(children_of "$PROXY_MAIN_PID" | tr '\n' ' ')"
    ((${#workers[@]} == 1)) || die "expected one nginx worker, found: ${workers[*]}"
    STARTED_PIDS+=("${workers[0]}")
    CPU_PIDS=("$PROXY_MAIN_PID" "${workers[0]}")
    MEM_PID=${workers[0]}
}

# ----------------------------------------------------------------- measure --
# to_ms VALUE: wrk latency (e.g. 812.00us, 1.23ms, 1.01s) in milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
        printf "%.3f", n }'
}

run_wrk() { # run_wrk PORT DURATION OUTFILE
    taskset -c "$LOAD_CPU" wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$2" --latency \
        "http://127.0.0.1:$1/" >"$3" 2>&1 || die "wrk failed: $(cat "$3")"
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

bench_proxy() {
    local name=$1 port=$2 body wrkout before after reqs
    log "=== $name on 127.0.0.1:$port (cpu $PROXY_CPU) ==="
    "start_$name" "$port"

    body=$(python3 "$BENCH/benchutil.py" get "$port") || die "$name: GET / through the proxy failed"
    [[ $body == "$UPSTREAM_BODY" ]] || die "$name: unexpected body through the proxy: $body"

    log "$name: warm-up $WARMUP"
    run_wrk "$port" "$WARMUP" "$OUT/wrk-$name-warmup.txt"

    log "$name: measuring $DURATION, $CONNECTIONS connections"
    wrkout=$OUT/wrk-$name.txt
    alive "$name" "${CPU_PIDS[@]}"
    before=$(cpu_ticks_sum "${CPU_PIDS[@]}")
    run_wrk "$port" "$DURATION" "$wrkout"
    alive "$name" "${CPU_PIDS[@]}"
    after=$(cpu_ticks_sum "${CPU_PIDS[@]}")
    R_HWM[$name]=$(status_kb "$MEM_PID" VmHWM)

    reqs=$(awk '/ requests in / {print $1}' "$wrkout")
    [[ -n $reqs && $reqs -gt 0 ]] || die "$name: no requests completed, see $wrkout"
    R_RPS[$name]=$(awk '/^Requests\/sec:/ {print $2}' "$wrkout")
    R_P50[$name]=$(to_ms "$(awk '$1 == "50%" {print $2}' "$wrkout")")
    R_P99[$name]=$(to_ms "$(awk '$1 == "99%" {print $2}' "$wrkout")")
    R_ERR[$name]=$(awk '/Non-2xx or 3xx responses:/ {n += $NF}
        /Socket errors:/ {gsub(/,/, ""); n += $4 + $6 + $8 + $10} END {print n + 0}' "$wrkout")
    local secs
    secs=$(awk -v t="$((after - before))" -v hz="$CLK_TCK" 'BEGIN {printf "%.4f", t / hz}')
    R_CPU100K[$name]=$(awk -v s="$secs" -v r="$reqs" 'BEGIN {printf "%.3f", s / r * 100000}')
    R_CPUREQ[$name]=$(awk -v s="$secs" -v r="$reqs" 'BEGIN {printf "%.9f", s / r}')
    # Proxy CPU use over the run (100% = the proxy core was saturated).
    local run_ms
    run_ms=$(to_ms "$(awk '/ requests in / {sub(/,$/, "", $4); print $4}' "$wrkout")")
    R_CPUPCT[$name]=$(awk -v s="$secs" -v ms="$run_ms" 'BEGIN {printf "%.0f", (ms > 0 ? s * 100000 / ms : 0)}')
    log "$name: $reqs requests, ${R_RPS[$name]} req/s, ${secs}s CPU, ${R_ERR[$name]} errors"
    ((R_ERR[$name] == 0)) || log "warning: $name: ${R_ERR[$name]} errors, see $wrkout"

    idle_test "$name" "$port"

    stop_pid "$PROXY_MAIN_PID"
}

# -------------------------------------------------------------------- main --
preflight
case " $PROXIES " in *" frontdesk "*) build_frontdesk ;; esac

read -r UPSTREAM_PORT FRONTDESK_PORT NGINX_PORT <<<"$(python3 "$BENCH/benchutil.py" ports 3)"
start_upstream

for proxy in $PROXIES; do
    case $proxy in
        frontdesk) bench_proxy frontdesk "$FRONTDESK_PORT" ;;
        nginx) bench_proxy nginx "$NGINX_PORT" ;;
        *) die "unknown proxy in PROXIES: $proxy" ;;
    esac
done

{
    echo
    echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ)  $(uname -srm)  $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "# $(nginx -v 2>&1)  $(wrk -v 2>&1 | head -1 | awk '{print "wrk", $2}')  frontdesk $FRONTDESK_DESC"
    echo "# proxy on cpu $PROXY_CPU (1 worker); wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION (after $WARMUP warm-up) + upstream on cpu $LOAD_CPU; idle conns $IDLE_CONNS"
    echo
    printf '%-10s %10s %8s %8s %11s %6s %13s %14s %7s\n' \
        proxy "req/s" "p50 ms" "p99 ms" "cpu s/100k" "cpu %" "peak RSS MiB" "idle KiB/conn" errors
    for proxy in $PROXIES; do
        printf '%-10s %10.0f %8.3f %8.3f %11.3f %6d %13.1f %14.2f %7d\n' "$proxy" \
            "${R_RPS[$proxy]}" "${R_P50[$proxy]}" "${R_P99[$proxy]}" "${R_CPU100K[$proxy]}" "${R_CPUPCT[$proxy]}" \
            "$(awk -v k="${R_HWM[$proxy]}" 'BEGIN {print k / 1024}')" \
            "${R_IDLE_KIB[$proxy]}" "${R_ERR[$proxy]}"
    done
    echo
    for proxy in $PROXIES; do
        if ((R_CPUPCT[$proxy] < 90)); then
            echo "note: $proxy used only ${R_CPUPCT[$proxy]}% of its core, so req/s was limited elsewhere" \
                "(load core or other processes); req/s and latency are not comparable, rerun on an idle machine"
        fi
    done
    if [[ -n ${R_RPS[frontdesk]:-} && -n ${R_RPS[nginx]:-} ]]; then
        awk -v fr="${R_RPS[frontdesk]}" -v nr="${R_RPS[nginx]}" \
            -v fc="${R_CPUREQ[frontdesk]}" -v nc="${R_CPUREQ[nginx]}" \
            'BEGIN {printf "frontdesk/nginx: rps %.2f, cpu per request %.2f\n", fr / nr, (nc > 0 ? fc / nc : 0)}'
    else
        echo "frontdesk/nginx: n/a (PROXIES=\"$PROXIES\" did not run both)"
    fi
} | tee "$OUT/summary.txt"

# Shared by bench/run.sh, bench/versus.sh, bench/auth.sh, bench/observe.sh and bench/grpc.sh: process control, preflight, the nginx upstream,
# one measured wrk run, the load options' defaults. Source it after setting TAG (log prefix), OUT
# (scratch dir), BENCH, ROOT and UPSTREAM_BODY. The sourcing script
# defines run_wrk NAME DURATION OUTFILE and label_of NAME, and sets PROXY_PID (and, for measure,
# the pid whose CPU is counted) before measuring.

# ------------------------------------------------------------ load options --
# The defaults every script shares (each script's header lists them with its own options).
DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-50}
WARMUP=${WARMUP:-3s}
WRK_THREADS=${WRK_THREADS:-1}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
FRONTDESK_BIN=${FRONTDESK_BIN:-}
FRONTDESK_DESC="FRONTDESK_BIN=$FRONTDESK_BIN"

log() { printf '[%s] %s\n' "$TAG" "$*" >&2; }
die() { printf '[%s] error: %s\n' "$TAG" "$*" >&2; exit 1; }
util() { python3 "$BENCH/benchutil.py" "$@"; }

# ---------------------------------------------------------------- cleanup --
STARTED_PIDS=()
# Temporary directories (keys, certificates) removed on exit.
TEMP_DIRS=()
cleanup() {
    local pid
    for pid in "${TEMP_DIRS[@]+"${TEMP_DIRS[@]}"}"; do
        rm -rf "$pid"
    done
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
        if [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) == Z ]]; then break; fi
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# CPU ticks (utime + stime, fields 14 and 15 of /proc/PID/stat) of one process, all threads.
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
# User-space CPU ticks (utime, field 14) of one process: with cpu_ticks, the kernel's share.
user_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12}'; }
alive() { # alive NAME PID...: die unless all PIDs still run.
    local name=$1 pid
    shift
    for pid in "$@"; do
        [[ -r /proc/$pid/stat && $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]] ||
            die "$name (pid $pid) exited, see the logs in $OUT"
    done
}
# to_ms VALUE: wrk latency (812.00us, 1.23ms, 1.01s) in milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
        printf "%.3f", n }'
}
wait_port() { util wait "$1" 30 "$2"; }
# fill TEMPLATE DEST KEY=VALUE...: replace @KEY@ placeholders.
fill() {
    local template=$1 dest=$2 kv args=()
    shift 2
    for kv in "$@"; do args+=(-e "s|@${kv%%=*}@|${kv#*=}|g"); done
    sed "${args[@]}" "$template" >"$dest"
    if grep -q '@[A-Z_]*@' "$dest"; then die "unfilled placeholder in $dest"; fi
}
# Direct children of PID (no procps needed).
children_of() {
    local stat
    for stat in /proc/[0-9]*/stat; do
        sed 's/^.*) //' "$stat" 2>/dev/null | awk -v p="$1" -v f="$stat" \
            '$2 == p {split(f, a, "/"); print a[3]}'
    done
}

# ---------------------------------------------------------------- preflight --
# install_and_pin [EXTRA_APT_PACKAGE...]: the load tools (apt-get as root when missing) and the
# two CPUs to pin to.
install_and_pin() {
    local need=("$@")
    command -v nginx >/dev/null || need+=(nginx-light)
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
}

# raise_nofile WANT MIN WHY: sets NOFILE to WANT open files (or the hard limit), dies below MIN.
raise_nofile() {
    NOFILE=$1
    local hard
    hard=$(ulimit -Hn)
    if [[ $hard != unlimited ]] && ((hard < NOFILE)); then
        ulimit -Hn "$NOFILE" 2>/dev/null || NOFILE=$hard
    fi
    ulimit -Sn "$NOFILE" || die "cannot raise ulimit -n to $NOFILE"
    ((NOFILE >= $2)) || die "ulimit -n is $NOFILE, too low for $3"
}

# fresh_out: CLK_TCK for CPU readings, and an empty $OUT.
fresh_out() {
    CLK_TCK=$(getconf CLK_TCK)
    rm -rf "$OUT"
    mkdir -p "$OUT"
}

# preflight_common [EXTRA_APT_PACKAGE...]: tools, CPU pinning, file limits, a fresh $OUT.
preflight_common() {
    install_and_pin "$@"
    [[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer, not $ROUNDS"
    raise_nofile $((2 * CONNECTIONS + 4096)) $((2 * CONNECTIONS + 200)) "CONNECTIONS=$CONNECTIONS"
    fresh_out
}

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

# A throwaway self-signed ECDSA P-256 certificate for 127.0.0.1, shared by both proxies.
make_cert() {
    CERT_DIR=$(mktemp -d)
    TEMP_DIRS+=("$CERT_DIR")
    CERT=$CERT_DIR/cert.pem
    KEY=$CERT_DIR/key.pem
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj "/CN=bench.test" -addext "subjectAltName=DNS:bench.test,IP:127.0.0.1" \
        -keyout "$KEY" -out "$CERT" >"$OUT/openssl.log" 2>&1 || die "openssl failed, see $OUT/openssl.log"
}

# ---------------------------------------------------------------- upstream --
start_upstream() {
    sed -e "s|@OUT@|$OUT|g" -e "s|@PORT@|$UPSTREAM_PORT|g" -e "s|@BODY@|$UPSTREAM_BODY\\\\n|g" \
        -e "s|@NOFILE@|$NOFILE|g" -e "s|@WORKER_CONNECTIONS@|$((2 * CONNECTIONS + 1024))|g" \
        "$BENCH/nginx-upstream.conf" >"$OUT/upstream.conf"
    ! grep -q '@[A-Z_]*@' "$OUT/upstream.conf" || die "unfilled placeholder in $OUT/upstream.conf"
    mkdir -p "$OUT/upstream-tmp"
    taskset -c "$LOAD_CPU" nginx -p "$OUT" -e "$OUT/upstream.error.log" -c "$OUT/upstream.conf" \
        >>"$OUT/upstream.stderr" 2>&1 &
    UPSTREAM_PID=$!
    STARTED_PIDS+=("$UPSTREAM_PID")
    wait_port "$UPSTREAM_PORT" "$UPSTREAM_PID" || die "upstream nginx did not start, see $OUT/upstream.error.log"
    log "upstream nginx on 127.0.0.1:$UPSTREAM_PORT (pid $UPSTREAM_PID, cpu $LOAD_CPU)"
}

# parse_load SCENARIO OUTFILE: sets L_REQS L_RPS L_P50 L_P99 L_ERR L_RUN_MS from h2load's output (h2c, h2)
# or wrk's (any other scenario).
parse_load() {
    local f=$2
    case $1 in
        h2c | h2)
            # "requests: 331639 total, 331689 started, 331639 done, 331639 succeeded, 0 failed, 0 errored, 0 timeout"
            # "status codes: 331639 2xx, 0 3xx, 0 4xx, 0 5xx"; "finished in 10.00s, 33163.90 req/s, 1.46MB/s"
            # h2load prints no percentiles: p50 is the mean time per request, p99 is n/a.
            L_REQS=$(awk '/^requests:/ {print $8}' "$f")
            L_RPS=$(awk '/^finished in/ {print $4}' "$f")
            L_P50=$(awk '/^time for request:/ {print $6}' "$f")
            L_P50=$(to_ms "$L_P50")
            L_P99=-1
            L_ERR=$(awk '/^requests:/ {n += $10 + $12 + $14}
                /^status codes:/ {n += $5 + $7 + $9} END {print n + 0}' "$f")
            L_RUN_MS=$(to_ms "$(awk '/^finished in/ {sub(/,$/, "", $3); print $3}' "$f")")
            ;;
        *)
            L_REQS=$(awk '/ requests in / {print $1}' "$f")
            L_RPS=$(awk '/^Requests\/sec:/ {print $2}' "$f")
            L_P50=$(to_ms "$(awk '$1 == "50%" {print $2}' "$f")")
            L_P99=$(to_ms "$(awk '$1 == "99%" {print $2}' "$f")")
            L_ERR=$(awk '/Non-2xx or 3xx responses:/ {n += $NF}
                /Socket errors:/ {gsub(/,/, ""); n += $4 + $6 + $8 + $10} END {print n + 0}' "$f")
            L_RUN_MS=$(to_ms "$(awk '/ requests in / {sub(/,$/, "", $4); print $4}' "$f")")
            ;;
    esac
}


# measure ROUND ROUTE: one measured load run (`run_wrk`; its output parsed as LOAD_KIND's, wrk's
# unless LOAD_KIND is h2c or h2), one line appended to rounds.tsv (its CPU in all, and in user space).
measure() {
    local rnd=$1 route=$2 out before after user_before user_after secs user_secs
    out=$OUT/wrk-$route-$rnd.txt
    alive frontdesk "$PROXY_PID"
    before=$(cpu_ticks "$PROXY_PID")
    user_before=$(user_ticks "$PROXY_PID")
    run_wrk "$route" "$DURATION" "$out"
    alive frontdesk "$PROXY_PID"
    after=$(cpu_ticks "$PROXY_PID")
    user_after=$(user_ticks "$PROXY_PID")
    parse_load "${LOAD_KIND:-http}" "$out"
    [[ -n $L_REQS && $L_REQS -gt 0 ]] || die "$route round $rnd: no requests completed, see $out"
    secs=$(awk -v t="$((after - before))" -v hz="$CLK_TCK" 'BEGIN {printf "%.4f", t / hz}')
    user_secs=$(awk -v t="$((user_after - user_before))" -v hz="$CLK_TCK" 'BEGIN {printf "%.4f", t / hz}')
    # The last column, user-space CPU, splits the total: the kernel's share is the rest.
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$rnd" "$route" "$(label_of "$route")" \
        "$L_REQS" "$L_RPS" "$L_P50" "$L_P99" "$secs" "$L_RUN_MS" "$L_ERR" "$user_secs" >>"$OUT/rounds.tsv"
    log "round $rnd $route: $L_REQS requests, $L_RPS req/s, ${secs}s CPU (${user_secs}s user), $L_ERR errors"
    ((L_ERR == 0)) || log "warning: $route round $rnd: $L_ERR errors, see $out"
}


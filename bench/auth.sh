#!/usr/bin/env bash
# Cost of authentication: one Frontdesk process, three routes to the same nginx upstream,
# measured interleaved in one run. See bench/README.md ("Authentication cost").
#
#   /plain  no plugins
#   /key    key_auth (wrk sends x-api-key)
#   /jwt    jwt, RS256, keys from a local JWKS URL (wrk sends Authorization: Bearer)
#
#   bench/auth.sh                                   # defaults
#   FRONTDESK_BIN=target/release/frontdesk ROUNDS=5 bench/auth.sh
#
# Options (environment):
#   DURATION      measured wrk run per route and round  (default 10s)
#   ROUNDS        rounds of plain, key, jwt             (default 3)
#   CONNECTIONS   wrk concurrent connections            (default 50)
#   WARMUP        wrk warm-up per route, before round 1 (default 3s)
#   WRK_THREADS   wrk threads                           (default 1)
#   PROXY_CPU     core Frontdesk is pinned to           (default 0)
#   LOAD_CPU      core for wrk, upstream, JWKS server   (default 1)
#   FRONTDESK_BIN use this binary instead of building target/release/frontdesk
#   ROUTES        which routes to configure and measure (default "plain key jwt"; plain is required)
#   TARGET        throughput ratio each auth route must keep (default 0.90)
#
# Scratch files (config, logs, raw wrk output, per-round results) go to bench/out/auth/.
set -euo pipefail
export LC_ALL=C

DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-50}
WARMUP=${WARMUP:-3s}
WRK_THREADS=${WRK_THREADS:-1}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
FRONTDESK_BIN=${FRONTDESK_BIN:-}
FRONTDESK_DESC="FRONTDESK_BIN=$FRONTDESK_BIN"
ROUTES=${ROUTES:-plain key jwt}
TARGET=${TARGET:-0.90}

BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH/.." && pwd)
OUT=$BENCH/out/auth
UPSTREAM_BODY="hello from upstream"
API_KEY="bench-key-0123456789"
JWT_ISSUER="bench-issuer"
JWT_AUDIENCE="bench"
JWT_KID="bench-rs256"
cd "$ROOT"

log() { printf '[auth-bench] %s\n' "$*" >&2; }
die() { printf '[auth-bench] error: %s\n' "$*" >&2; exit 1; }
util() { python3 "$BENCH/benchutil.py" "$@"; }

# ---------------------------------------------------------------- cleanup --
STARTED_PIDS=()
KEY_DIR=
cleanup() {
    [[ -z $KEY_DIR ]] || rm -rf "$KEY_DIR"
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
        if [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) == Z ]]; then break; fi
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# CPU ticks (utime + stime, fields 14 and 15 of /proc/PID/stat) of one process, all threads.
cpu_ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
alive() {
    [[ -r /proc/$2/stat && $(awk '{print $3}' "/proc/$2/stat" 2>/dev/null) != Z ]] ||
        die "$1 (pid $2) exited, see the logs in $OUT"
}
# to_ms VALUE: wrk latency (812.00us, 1.23ms, 1.01s) in milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
        printf "%.3f", n }'
}
wait_port() { util wait "$1" 30 "$2"; }
has_route() { [[ " $ROUTES " == *" $1 "* ]]; }

# --------------------------------------------------------------- preflight --
preflight() {
    local need=() r
    command -v nginx >/dev/null || need+=(nginx-light)
    command -v wrk >/dev/null || need+=(wrk)
    command -v openssl >/dev/null || need+=(openssl)
    command -v python3 >/dev/null || die "python3 not found"
    command -v taskset >/dev/null || die "taskset not found (util-linux)"
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
    [[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer, not $ROUNDS"
    for r in $ROUTES; do
        case $r in plain | key | jwt | rl_local | rl_redis) ;; *) die "unknown route in ROUTES: $r (plain, key, jwt, rl_local, rl_redis)" ;; esac
    done
    has_route plain || die "ROUTES must include plain (the baseline)"

    NOFILE=$((2 * CONNECTIONS + 4096))
    local hard
    hard=$(ulimit -Hn)
    if [[ $hard != unlimited ]] && ((hard < NOFILE)); then
        ulimit -Hn "$NOFILE" 2>/dev/null || NOFILE=$hard
    fi
    ulimit -Sn "$NOFILE" || die "cannot raise ulimit -n to $NOFILE"
    ((NOFILE >= 2 * CONNECTIONS + 200)) || die "ulimit -n is $NOFILE, too low for CONNECTIONS=$CONNECTIONS"

    CLK_TCK=$(getconf CLK_TCK)
    rm -rf "$OUT"
    mkdir -p "$OUT"
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

# ------------------------------------------------------------ credentials --
# A throwaway RSA key (removed on exit), its JWKS and an RS256 token, in $OUT.
make_jwt() {
    KEY_DIR=$(mktemp -d)
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$KEY_DIR/key.pem" \
        >"$OUT/openssl.log" 2>&1 || die "openssl genpkey failed, see $OUT/openssl.log"
    util jwt-setup "$KEY_DIR/key.pem" "$OUT" "$JWT_ISSUER" "$JWT_AUDIENCE" bench "$JWT_KID" ||
        die "could not make the JWKS and token"
    TOKEN=$(<"$OUT/token.txt")
    # The same token with its signature's first character changed: must be refused.
    local sig=${TOKEN##*.} c
    c=A
    [[ ${sig:0:1} != A ]] || c=B
    BAD_TOKEN=${TOKEN%.*}.$c${sig:1}
}

start_jwks() {
    taskset -c "$LOAD_CPU" python3 "$BENCH/benchutil.py" serve "$JWKS_PORT" "$OUT/jwks.json" /jwks.json \
        2>>"$OUT/jwks.log" &
    JWKS_PID=$!
    STARTED_PIDS+=("$JWKS_PID")
    wait_port "$JWKS_PORT" "$JWKS_PID" || die "JWKS server did not start, see $OUT/jwks.log"
    log "JWKS on http://127.0.0.1:$JWKS_PORT/jwks.json (pid $JWKS_PID, cpu $LOAD_CPU)"
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

# --------------------------------------------------------------- frontdesk --
write_config() {
    {
        cat <<YAML
# Frontdesk config of bench/auth.sh: three routes to one upstream, differing only in auth.
version: 1
server:
  worker_threads: 1
listeners:
  - name: bench
    address: 127.0.0.1:$FRONTDESK_PORT
upstreams:
  origin:
    targets:
      - url: http://127.0.0.1:$UPSTREAM_PORT
consumers:
  - { name: bench, groups: [b], api_keys: ["$API_KEY"] }
$(has_route rl_redis && printf 'redis: { url: "redis://127.0.0.1:%s", timeout: 50ms }' "$REDIS_PORT")
routes:
  - { name: plain, match: { paths: ["/plain"] }, upstream: origin }
YAML
        if has_route key; then
            echo '  - { name: key, match: { paths: ["/key"] }, upstream: origin, plugins: { key_auth: {} } }'
        fi
        # Rate limits set far above what the benchmark sends: they never refuse, so the rows
        # measure the cost of the decision (local: a CAS on one bucket; redis: one round trip).
        if has_route rl_local; then
            echo '  - { name: rl_local, match: { paths: ["/rl_local"] }, upstream: origin, plugins: { rate_limit: { store: local, limits: [{ name: all, key: route, rate: 100000000, per: 1s }] } } }'
        fi
        if has_route rl_redis; then
            echo '  - { name: rl_redis, match: { paths: ["/rl_redis"] }, upstream: origin, plugins: { rate_limit: { store: redis, on_store_error: deny, limits: [{ name: all, key: route, rate: 100000000, per: 1s }] } } }'
        fi
        if has_route jwt; then
            cat <<YAML
  - name: jwt
    match: { paths: ["/jwt"] }
    upstream: origin
    plugins:
      jwt:
        issuers:
          - issuer: $JWT_ISSUER
            jwks_url: "http://127.0.0.1:$JWKS_PORT/jwks.json"
            audiences: [$JWT_AUDIENCE]
            algorithms: [RS256]
        consumer_claim: sub
YAML
        fi
    } >"$OUT/frontdesk.yaml"
}

start_frontdesk() {
    taskset -c "$PROXY_CPU" "$FRONTDESK_BIN" run -c "$OUT/frontdesk.yaml" >>"$OUT/frontdesk.log" 2>&1 &
    PROXY_PID=$!
    STARTED_PIDS+=("$PROXY_PID")
    wait_port "$FRONTDESK_PORT" "$PROXY_PID" || die "frontdesk did not start, see $OUT/frontdesk.log"
    log "frontdesk on 127.0.0.1:$FRONTDESK_PORT (pid $PROXY_PID, cpu $PROXY_CPU)"
}

# ------------------------------------------------------------------ checks --
# request PATH [HEADER]...: sets C_STATUS and C_BODY.
request() {
    local path=$1 res
    shift
    res=$(util status "$FRONTDESK_PORT" "$path" "$@") || die "GET $path through frontdesk failed"
    C_STATUS=${res%%$'\n'*}
    C_BODY=${res#*$'\n'}
    [[ $res == *$'\n'* ]] || C_BODY=
}

# expect STATUS WHAT PATH [HEADER]...: the request must answer STATUS (and, for 200, the upstream's body).
expect() {
    local want=$1 what=$2 path=$3
    shift 3
    request "$path" "$@"
    if [[ $C_STATUS != "$want" ]]; then
        CHECK_FAILED+=("$path $what: got $C_STATUS, expected $want (body: $(head -c 200 <<<"$C_BODY"))")
        return 1
    fi
    if [[ $want == 200 && ${C_BODY%$'\n'} != "$UPSTREAM_BODY" ]]; then
        CHECK_FAILED+=("$path $what: 200 but not the upstream's body: $(head -c 200 <<<"$C_BODY")")
        return 1
    fi
    log "check: $path $what -> $C_STATUS"
}

check_routes() {
    CHECK_FAILED=()
    expect 200 "without credentials" /plain || true
    if has_route key; then
        expect 200 "with x-api-key" /key "x-api-key: $API_KEY" || true
        expect 401 "without a key" /key || true
        expect 401 "with a wrong key" /key "x-api-key: not-$API_KEY" || true
    fi
    if has_route rl_local; then
        expect 200 "under a high local limit" /rl_local || true
    fi
    if has_route rl_redis; then
        # The gateway connects to Redis in the background; on_store_error: deny answers 503 until then.
        local j
        for ((j = 0; j < 40; j++)); do
            request /rl_redis
            [[ $C_STATUS == 200 ]] && break
            sleep 0.25
        done
        expect 200 "under a high Redis limit (deny on store errors, so 200 proves Redis answered)" /rl_redis || true
    fi
    if has_route jwt; then
        # The plugin may fetch the JWKS after start: give the valid token a few seconds.
        local i
        for ((i = 0; i < 20; i++)); do
            request /jwt "Authorization: Bearer $TOKEN"
            [[ $C_STATUS == 200 ]] && break
            sleep 0.25
        done
        expect 200 "with a valid RS256 token" /jwt "Authorization: Bearer $TOKEN" || true
        if ! expect 401 "without a token" /jwt; then
            if [[ $C_STATUS == 200 ]]; then
                CHECK_FAILED+=("/jwt answers 200 without a token: the jwt plugin is not active in $FRONTDESK_BIN (not merged or not registered yet?), so /jwt would measure a plain route; use a build with the jwt plugin, or ROUTES=\"plain key\" to skip it")
            fi
        fi
        expect 401 "with a bad signature" /jwt "Authorization: Bearer $BAD_TOKEN" || true
    fi
    if ((${#CHECK_FAILED[@]})); then
        printf '[auth-bench] check failed: %s\n' "${CHECK_FAILED[@]}" >&2
        die "routes do not behave as configured; nothing measured (config $OUT/frontdesk.yaml, log $OUT/frontdesk.log)"
    fi
}

# ----------------------------------------------------------------- measure --
# run_wrk ROUTE DURATION OUTFILE
run_wrk() {
    local hdr=()
    case $1 in
        key) hdr=(-H "x-api-key: $API_KEY") ;;
        jwt) hdr=(-H "Authorization: Bearer $TOKEN") ;;
    esac
    taskset -c "$LOAD_CPU" wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$2" --latency "${hdr[@]}" \
        "http://127.0.0.1:$FRONTDESK_PORT/$1" >"$3" 2>&1 || die "wrk failed: $(cat "$3")"
}

label_of() {
    case $1 in plain) echo "-" ;; key) echo "key_auth" ;; jwt) echo "jwt/RS256" ;; rl_local) echo "rate_limit/local" ;; rl_redis) echo "rate_limit/redis" ;; esac
}

# measure ROUND ROUTE: one measured wrk run, one line appended to rounds.tsv.
measure() {
    local rnd=$1 route=$2 out before after reqs rps p50 p99 err run_ms secs
    out=$OUT/wrk-$route-$rnd.txt
    alive frontdesk "$PROXY_PID"
    before=$(cpu_ticks "$PROXY_PID")
    run_wrk "$route" "$DURATION" "$out"
    alive frontdesk "$PROXY_PID"
    after=$(cpu_ticks "$PROXY_PID")
    reqs=$(awk '/ requests in / {print $1}' "$out")
    [[ -n $reqs && $reqs -gt 0 ]] || die "$route round $rnd: no requests completed, see $out"
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
    p50=$(to_ms "$(awk '$1 == "50%" {print $2}' "$out")")
    p99=$(to_ms "$(awk '$1 == "99%" {print $2}' "$out")")
    err=$(awk '/Non-2xx or 3xx responses:/ {n += $NF}
        /Socket errors:/ {gsub(/,/, ""); n += $4 + $6 + $8 + $10} END {print n + 0}' "$out")
    run_ms=$(to_ms "$(awk '/ requests in / {sub(/,$/, "", $4); print $4}' "$out")")
    secs=$(awk -v t="$((after - before))" -v hz="$CLK_TCK" 'BEGIN {printf "%.4f", t / hz}')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$rnd" "$route" "$(label_of "$route")" \
        "$reqs" "$rps" "$p50" "$p99" "$secs" "$run_ms" "$err" >>"$OUT/rounds.tsv"
    log "round $rnd $route: $reqs requests, $rps req/s, ${secs}s CPU, $err errors"
    ((err == 0)) || log "warning: $route round $rnd: $err errors, see $out"
}

# -------------------------------------------------------------------- main --
preflight
build_frontdesk
read -r UPSTREAM_PORT FRONTDESK_PORT JWKS_PORT REDIS_PORT <<<"$(util ports 4)"
start_upstream
if has_route rl_redis; then
    command -v redis-server >/dev/null || die "rl_redis needs redis-server (apt-get install -y redis-server)"
    taskset -c "$LOAD_CPU" redis-server --port "$REDIS_PORT" --save "" --appendonly no >"$OUT/redis.log" 2>&1 &
    STARTED_PIDS+=("$!")
    wait_port "$REDIS_PORT" "$!" || die "redis-server did not start, see $OUT/redis.log"
fi
if has_route jwt; then
    make_jwt
    start_jwks
fi
write_config
start_frontdesk
check_routes

for route in $ROUTES; do
    log "warm-up $route $WARMUP"
    run_wrk "$route" "$WARMUP" "$OUT/wrk-$route-warmup.txt"
done
: >"$OUT/rounds.tsv"
for ((rnd = 1; rnd <= ROUNDS; rnd++)); do
    for route in $ROUTES; do
        measure "$rnd" "$route"
    done
done
alive frontdesk "$PROXY_PID"
PEAK_RSS=$(awk '$1 == "VmHWM:" {printf "%.1f", $2 / 1024}' "/proc/$PROXY_PID/status")

{
    echo
    echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ)  $(uname -srm)  $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "# $(nginx -v 2>&1)  $(wrk -v 2>&1 | head -1 | awk '{print "wrk", $2}')  frontdesk $FRONTDESK_DESC"
    echo "# one frontdesk (1 worker) on cpu $PROXY_CPU; wrk -t$WRK_THREADS -c$CONNECTIONS -d$DURATION per route" \
        "and round, $ROUNDS rounds of: $ROUTES (after $WARMUP warm-up each) + upstream on cpu $LOAD_CPU"
    echo "# /plain: no plugins; /key: key_auth, x-api-key; /jwt: jwt RS256 (2048-bit key, JWKS over http), Authorization: Bearer;"
    echo "# /rl_local, /rl_redis: rate_limit with one never-reached limit (local store; Redis on cpu $LOAD_CPU, 1 round trip per request)"
    if has_route jwt; then
        echo "# frontdesk peak RSS $PEAK_RSS MiB; JWKS fetched $(grep -c 'GET /jwks.json' "$OUT/jwks.log" || true) times"
    else
        echo "# frontdesk peak RSS $PEAK_RSS MiB"
    fi
    echo
    util auth-report "$OUT/rounds.tsv" "$TARGET"
} | tee "$OUT/summary.txt"

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
TAG=auth-bench
# shellcheck source=bench/lib.sh
source "$BENCH/lib.sh"
has_route() { [[ " $ROUTES " == *" $1 "* ]]; }

# --------------------------------------------------------------- preflight --
preflight() {
    local r extra=()
    command -v openssl >/dev/null || extra+=(openssl)
    for r in $ROUTES; do
        case $r in plain | key | jwt | rl_local | rl_redis) ;; *) die "unknown route in ROUTES: $r (plain, key, jwt, rl_local, rl_redis)" ;; esac
    done
    has_route plain || die "ROUTES must include plain (the baseline)"
    preflight_common "${extra[@]+"${extra[@]}"}"
}

# ------------------------------------------------------------ credentials --
# A throwaway RSA key (removed on exit), its JWKS and an RS256 token, in $OUT.
make_jwt() {
    KEY_DIR=$(mktemp -d)
    TEMP_DIRS+=("$KEY_DIR")
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

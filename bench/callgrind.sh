#!/usr/bin/env bash
# Instructions per proxied request, deterministic: runs Frontdesk under callgrind behind nothing but
# itself, sends N keep-alive requests through it to an nginx upstream, and divides the instructions
# counted during those requests by N. Timing-free, so it compares builds even on a noisy machine.
#
#   bench/callgrind.sh [FRONTDESK_BIN] [N]      (defaults: target/release/frontdesk, 5000)
#
# Options (environment), to count what a feature costs against the same run without it:
#   PLUGINS   the route's plugins, a YAML flow mapping, e.g.
#             PLUGINS='{ rate_limit: { limits: [{ name: all, key: route, rate: 100000000, per: 1s }] } }'
#   OBSERVE   the observability section, a YAML flow mapping (default: metrics on, no access log),
#             e.g. OBSERVE='{ metrics: { enabled: false } }' or
#             OBSERVE='{ access_log: { output: /tmp/access.log } }'
#   H2=1      count h2c requests (HTTP/2 prior knowledge) instead of HTTP/1.1 ones
#   TLS=1     the listener terminates TLS (a fresh P-256 certificate, as run.sh's TLS rows): with
#             H2=1 the requests are HTTP/2 over TLS (ALPN h2), without it HTTP/1.1 over TLS
#   CALLGRIND_FLAGS  extra callgrind options, e.g. "--cache-sim=yes --branch-sim=yes" to count
#             simulated cache misses and mispredicted branches per request as well
#   PROXY=nginx  count nginx as the proxy instead (bench/nginx-proxy.conf, one process: no master,
#             its access log on as in run.sh), the same load and upstream: the baseline
#
# Needs valgrind, nginx and h2load (apt-get install -y valgrind nginx-light nghttp2-client).
set -euo pipefail
BENCH=$(cd "$(dirname "$0")" && pwd)
BIN=${1:-$BENCH/../target/release/frontdesk}
N=${2:-5000}
OUT=$BENCH/out/callgrind
mkdir -p "$OUT/upstream-tmp"
for tool in valgrind callgrind_control nginx h2load; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y valgrind nginx-light nghttp2-client)" >&2; exit 1; }
done
read -r UP FD < <(python3 "$BENCH/benchutil.py" ports 2)
TLS_YAML=""
SCHEME=http
if [ "${TLS:-0}" = 1 ]; then
    CERT=$OUT/cert.pem
    KEY=$OUT/key.pem
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj "/CN=bench.test" -addext "subjectAltName=DNS:bench.test,IP:127.0.0.1" \
        -keyout "$KEY" -out "$CERT" >"$OUT/openssl.log" 2>&1
    TLS_YAML=", tls: { certificates: [{ cert: \"$CERT\", key: \"$KEY\" }] }"
    SCHEME=https
fi
sed -e "s|@OUT@|$OUT|g; s|@NOFILE@|4096|; s|@WORKER_CONNECTIONS@|1024|; s|@PORT@|$UP|; s|@BODY@|hello from upstream|" \
    "$BENCH/nginx-upstream.conf" >"$OUT/upstream.conf"
cat >"$OUT/frontdesk.yaml" <<YAML
version: 1
server: { worker_threads: 1 }
listeners: [{ name: bench, address: "127.0.0.1:$FD"$TLS_YAML }]
upstreams: { origin: { targets: [{ url: "http://127.0.0.1:$UP" }] } }
routes: [{ name: all, match: { paths: ["/"] }, upstream: origin, plugins: ${PLUGINS:-{\}} }]
observability: ${OBSERVE:-{\}}
YAML
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
nginx -c "$OUT/upstream.conf" -p "$OUT" >/dev/null 2>&1 &
PIDS+=($!)
rm -f "$OUT"/cg.out.*
if [ "${PROXY:-frontdesk}" = nginx ]; then
    FLAGS=""
    [ "${H2:-0}" = 1 ] && FLAGS=http2
    [ "${TLS:-0}" = 1 ] && FLAGS="ssl http2"
    sed -e "s|@OUT@|$OUT|g; s|@NOFILE@|4096|; s|@WORKER_CONNECTIONS@|1024|; s|@PORT@|$FD|; s|@UPSTREAM_PORT@|$UP|" \
        -e "s|@UPSTREAM_KEEPALIVE@|64|; s|@LISTEN_FLAGS@|$FLAGS|; s|@GZIP@||; s|@CACHE@||" \
        -e "s|@CERT@|${CERT:-}|; s|@KEY@|${KEY:-}|" -e "/proxy_cache_path/d" "$BENCH/nginx-proxy.conf" >"$OUT/nginx-proxy.conf"
    [ "${TLS:-0}" = 1 ] || sed -i "/ssl_certificate/d" "$OUT/nginx-proxy.conf"
    mkdir -p "$OUT/nginx-proxy-tmp"
    valgrind --tool=callgrind ${CALLGRIND_FLAGS:-} --callgrind-out-file="$OUT/cg.out.%p" nginx -g "master_process off;" \
        -p "$OUT" -e "$OUT/nginx-proxy.error.log" -c "$OUT/nginx-proxy.conf" >"$OUT/frontdesk.log" 2>&1 &
else
    valgrind --tool=callgrind ${CALLGRIND_FLAGS:-} --callgrind-out-file="$OUT/cg.out.%p" "$BIN" run -c "$OUT/frontdesk.yaml" >"$OUT/frontdesk.log" 2>&1 &
fi
VPID=$!
PIDS+=("$VPID")
python3 "$BENCH/benchutil.py" wait "$FD" 60 "$VPID"
PROTO=(--h1)
[ "${H2:-0}" = 1 ] && PROTO=()
h2load "${PROTO[@]}" -n 200 -c 10 "$SCHEME://127.0.0.1:$FD/" >/dev/null 2>&1   # warm-up, not counted
callgrind_control -z "$VPID" >/dev/null
h2load "${PROTO[@]}" -n "$N" -c 10 "$SCHEME://127.0.0.1:$FD/" | grep -E "^requests:"
callgrind_control -d "$VPID" >/dev/null
sleep 1
IR=$(grep -E "^(summary|totals):" "$OUT"/cg.out.*.1 | head -1 | awk '{print $2}')
echo "instructions per request: $((IR / N))  ($IR over $N requests)"

#!/usr/bin/env bash
# Memory under invented names (issue #12): does ocicache's memory stay flat when clients send requests
# for names nobody configured? Sends N requests (default 40,000), each with a name or method never
# seen before, and reads VmRSS from /proc/PID/status at 0, 2,000, 20,000 and N requests.
#
# Everything runs on 127.0.0.1. The request mix, in turn:
#   2 of 4: GET /v2/up.test/inv/rI/manifests/v1  distinct repository on a real docker-registry (404)
#   1 of 4: FOOI /v2/                            invented HTTP method (refused)
#   1 of 4: GET /v2/rI.wild.test/app/manifests/v1  invented registry under --allow-registry '*.wild.test';
#           its https origin is reached through HTTPS_PROXY, a few lines of python that refuse every
#           CONNECT (so nothing is resolved or dialled off the machine: the origin "fails")
#
# Environment:
#   OCICACHE_BIN  binary to measure (default target/release/ocicache if it exists, else target/debug/ocicache)
#   MEM_N         total requests (default 40000)
#   MEM_PARALLEL  concurrent requests (default 16)
#   MEM_KINDS     the mix, in turn (default "repo repo method wild"; e.g. "wild" for wildcard registries only)
#   MEM_KEEP=1    keep the temp dir (logs, /metrics at each checkpoint)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
N=${MEM_N:-40000}
PAR=${MEM_PARALLEL:-16}
read -ra KINDS <<<"${MEM_KINDS:-repo repo method wild}"
if [[ -n ${OCICACHE_BIN:-} ]]; then
    BIN=$OCICACHE_BIN
elif [[ -x $ROOT/target/release/ocicache ]]; then
    BIN=$ROOT/target/release/ocicache
else
    BIN=$ROOT/target/debug/ocicache
fi
[[ -x $BIN ]] || { echo "no binary at $BIN (cargo build)" >&2; exit 1; }
for tool in docker-registry curl python3; do
    command -v "$tool" >/dev/null || { echo "$tool not found" >&2; exit 1; }
done
[[ $N =~ ^[0-9]+$ && $N -ge 20000 ]] || { echo "MEM_N must be >= 20000" >&2; exit 1; }

WORK=$(mktemp -d /tmp/ocicache-mem.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if [[ ${MEM_KEEP:-0} == 1 ]]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
log() { printf '[memory %4ds] %s\n' "$SECONDS" "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 300); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "port $1 did not open" >&2
    exit 1
}

# A real upstream: docker-registry, anonymous, empty.
RP=$(free_port)
mkdir -p "$WORK/registry"
cat >"$WORK/registry.yml" <<EOF
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $WORK/registry}}
http: {addr: 127.0.0.1:$RP}
EOF
docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
PIDS+=($!)

# The proxy for wildcard registries' https origins: refuses every tunnel (an origin that is down).
PP=$(free_port)
python3 - "$PP" >"$WORK/proxy.log" 2>&1 <<'PY' &
import socketserver, sys
class Refuse(socketserver.StreamRequestHandler):
    def handle(self):
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass
        self.wfile.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer.daemon_threads = True
socketserver.ThreadingTCPServer(("127.0.0.1", int(sys.argv[1])), Refuse).serve_forever()
PY
PIDS+=($!)
wait_port "$RP"
wait_port "$PP"

CP=$(free_port)
env -u http_proxy -u HTTP_PROXY -u all_proxy -u ALL_PROXY HTTPS_PROXY="http://127.0.0.1:$PP" NO_PROXY= \
    "$BIN" --cache-dir "$WORK/cache" --listen 127.0.0.1 --port "$CP" --log-level error \
    --upstream "up.test=http://127.0.0.1:$RP" --allow-registry '*.wild.test' >"$WORK/ocicache.log" 2>&1 &
OPID=$!
PIDS+=($OPID)
wait_port "$CP"
BASE=http://127.0.0.1:$CP

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$OPID/status"; }
series() { curl -s "$BASE/metrics" | tee "$WORK/metrics.$1" | grep -vc '^#' || true; }

# send FROM TO: requests FROM..TO-1, each name new.
send() {
    local cfg=$WORK/curl.cfg i
    : >"$cfg"
    for ((i = $1; i < $2; i++)); do
        ((i > $1)) && echo next >>"$cfg"
        case ${KINDS[i % ${#KINDS[@]}]} in
            repo) printf 'url = "%s/v2/up.test/inv/r%d/manifests/v1"\n' "$BASE" "$i" ;;
            method) printf 'request = "FOO%d"\nurl = "%s/v2/"\n' "$i" "$BASE" ;;
            wild) printf 'url = "%s/v2/r%d.wild.test/app/manifests/v1"\n' "$BASE" "$i" ;;
            *) echo "unknown kind in MEM_KINDS: ${KINDS[i % ${#KINDS[@]}]}" >&2; exit 1 ;;
        esac >>"$cfg"
        printf 'output = "/dev/null"\nsilent\n' >>"$cfg"
    done
    curl --parallel --parallel-max "$PAR" --max-time 60 -K "$cfg" 2>>"$WORK/curl.err" || true
}

log "binary: $BIN"
# One of each kind first, so the table starts from a server that has done every kind of work once.
send 0 4
declare -a AT=(0) RSS=("$(rss_kib)") SER=("$(series 0)")
done_n=4
for cp in 2000 20000 "$N"; do
    log "sending requests $done_n..$cp"
    send "$done_n" "$cp"
    done_n=$cp
    sleep 1 # let the last responses' tasks finish; RSS is read once, not polled for a condition
    AT+=("$cp")
    RSS+=("$(rss_kib)")
    SER+=("$(series "$cp")")
done

upstream_404=$(grep -c '" 404 ' "$WORK/registry.log" || true)
echo "ocicache memory under invented names: $(basename "$BIN") ($BIN), $N requests (${KINDS[*]}), $PAR at a time"
case $BIN in *debug*) echo "(debug build: absolute RSS is higher than a release build's; growth is what counts)" ;; esac
printf '%10s %12s %16s\n' requests "VmRSS MiB" "metric samples"
for k in "${!AT[@]}"; do
    awk -v n="${AT[$k]}" -v r="${RSS[$k]}" -v s="${SER[$k]}" 'BEGIN{printf "%10d %12.1f %16d\n", n, r/1024, s}'
done
awk -v a="${RSS[0]}" -v b="${RSS[2]}" -v c="${RSS[3]}" -v n="$N" 'BEGIN{
    g=(c-a)/1024; l=(c-b)/1024
    printf "growth over %d names: %.1f MiB (target < 16): %s\n", n, g, (g<16?"ok":"FAIL")
    printf "growth over the last %d: %.1f MiB (target < 4): %s\n", n-20000, l, (l<4?"ok":"FAIL")
}'
echo "upstream 404s seen by docker-registry: $upstream_404"

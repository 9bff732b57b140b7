#!/usr/bin/env bash
# Benchmark of ocicache against the CNCF distribution registry in proxy mode ("the peer") and nginx
# serving the same bytes as static files ("the serving limit"). Everything runs on 127.0.0.1 and is
# built here: no network. See bench/README.md for what each figure means.
#
# Environment:
#   BENCH_LAYER_MB  size of the big random layer in MiB (default 200; 20 for a quick smoke run)
#   REPEAT          repetitions of every figure; the median is printed (default 3)
#   BENCH_CLIENTS   concurrent clients for the "many clients" figures (default 16)
#   BENCH_WARM_MB   minimum MiB moved by each warm-throughput measurement (default 1024)
#   BENCH_DURATION  seconds of each manifest-rate run (wrk -d, ab -t) (default 5)
#   BENCH_CONNS     connections of the manifest-rate runs (default 32)
#   BENCH_CURL_TIMEOUT  curl --max-time for every request (default 300)
#   OCICACHE_BIN    binary to benchmark (default target/release/ocicache; built if missing)
#   BENCH_BUILD=1   run `cargo build --release` even if the binary exists
#   BENCH_KEEP=1    keep the temp dir (logs, access logs) instead of deleting it
set -euo pipefail

LAYER_MB=${BENCH_LAYER_MB:-200}
REPEAT=${REPEAT:-3}
CLIENTS=${BENCH_CLIENTS:-16}
WARM_MB=${BENCH_WARM_MB:-1024}
DURATION=${BENCH_DURATION:-5}
CONNS=${BENCH_CONNS:-32}
CURL_TIMEOUT=${BENCH_CURL_TIMEOUT:-300} # seconds; a download that hangs longer is reported, not waited for
HEAD_MAX_N=5000000 # ab stops at -t seconds; this only bounds the count
OCI_MT=application/vnd.oci.image.manifest.v1+json
NS=bench.test      # the registry name ocicache knows the upstream by
REPO=bench/big     # repository of the big image on the upstream
TAG=v1             # not matched by ocicache's default --skip-tags (latest)

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${OCICACHE_BIN:-$ROOT/target/release/ocicache}
START_SECONDS=$SECONDS
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

log() { printf '[bench %4ds] %s\n' "$((SECONDS - START_SECONDS))" "$*" >&2; }
die() { log "FATAL: $*"; exit 1; }

for tool in docker-registry skopeo nginx wrk ab curl python3 gzip tar sha256sum; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install docker-registry skopeo nginx wrk apache2-utils curl)"
done
[[ $LAYER_MB =~ ^[0-9]+$ && $LAYER_MB -ge 1 ]] || die "BENCH_LAYER_MB must be a positive integer"
[[ $REPEAT =~ ^[0-9]+$ && $REPEAT -ge 1 ]] || die "REPEAT must be a positive integer"

# ---------------------------------------------------------------------------------------------
# Processes and cleanup
# ---------------------------------------------------------------------------------------------
WORK=$(mktemp -d /tmp/ocicache-bench.XXXXXX)
UP_PID='' OCI_PID='' PEER_PID='' NGX_PID=''
CURL_PIDS=()

stop_pid() { # PID: TERM, up to 5 s, then KILL; reaps it
    local pid=$1 i
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    for i in $(seq 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    local p
    for p in "${CURL_PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    stop_pid "$OCI_PID"
    stop_pid "$PEER_PID"
    stop_pid "$NGX_PID"
    stop_pid "$UP_PID"
    if [[ ${BENCH_KEEP:-0} == 1 ]]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_ready URL PID LOGFILE: poll until URL answers 200, failing early if the process died.
wait_ready() {
    local url=$1 pid=$2 logf=$3 i code
    for i in $(seq 300); do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 30 "$logf" >&2 || true
            die "process $pid died before $url answered (log: $logf)"
        fi
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true)
        [[ $code == 200 ]] && return 0
        sleep 0.1
    done
    tail -n 30 "$logf" >&2 || true
    die "$url did not answer 200 within 30 s"
}

now_ns() { date +%s%N; }
secs_since() { awk -v a="$1" -v b="$(now_ns)" 'BEGIN{printf "%.3f", (b-a)/1e9}'; }

# ---------------------------------------------------------------------------------------------
# Build the binary
# ---------------------------------------------------------------------------------------------
if [[ ! -x $BIN || ${BENCH_BUILD:-0} == 1 ]]; then
    log "cargo build --release"
    (cd "$ROOT" && cargo build --release) || die "cargo build --release failed"
fi
[[ -x $BIN ]] || die "$BIN missing"

# ---------------------------------------------------------------------------------------------
# 1. Test images (OCI layout) and the upstream registry
# ---------------------------------------------------------------------------------------------
LAYOUT=$WORK/layout
mkdir -p "$WORK/img" "$LAYOUT"

make_tgz() { # DIR OUT: reproducible tar (kept, for the diff_id) + gzip -1
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$1" -cf "$2.tar" .
    gzip -1 -n -c "$2.tar" >"$2.tar.gz"
}

log "building a ${LAYER_MB} MiB random layer and a small 3-layer image"
mkdir -p "$WORK/img/big"
head -c "$((LAYER_MB * 1024 * 1024))" /dev/urandom >"$WORK/img/big/data.bin"
make_tgz "$WORK/img/big" "$WORK/img/big"
rm -rf "$WORK/img/big"
for i in 1 2 3; do
    mkdir -p "$WORK/img/s$i/etc/layer$i"
    for j in 1 2 3 4; do
        head -c $((4096 * j * i)) /dev/urandom | base64 >"$WORK/img/s$i/etc/layer$i/file$j.txt"
    done
    echo "layer $i" >"$WORK/img/s$i/etc/layer$i/README"
    make_tgz "$WORK/img/s$i" "$WORK/img/s$i"
    rm -rf "$WORK/img/s$i"
done

python3 - "$LAYOUT" "$WORK/img" <<'PY'
import hashlib, json, os, sys
layout, img = sys.argv[1], sys.argv[2]
blobs = os.path.join(layout, "blobs", "sha256")
os.makedirs(blobs, exist_ok=True)

def sha_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

def put(data):
    d = hashlib.sha256(data).hexdigest()
    with open(os.path.join(blobs, d), "wb") as f:
        f.write(data)
    return d

def dumps(obj):
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()

index = []
for name, layers in (("big", ["big"]), ("small", ["s1", "s2", "s3"])):
    diff_ids, descs = [], []
    for layer in layers:
        tar, tgz = os.path.join(img, layer + ".tar"), os.path.join(img, layer + ".tar.gz")
        diff_ids.append("sha256:" + sha_file(tar))
        d, size = sha_file(tgz), os.path.getsize(tgz)
        os.replace(tgz, os.path.join(blobs, d))
        os.remove(tar)
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + d, "size": size})
    config = dumps({
        "architecture": "amd64", "os": "linux", "created": "1970-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "ocicache bench layer %d" % i} for i in range(len(layers))],
    })
    manifest = dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + put(config), "size": len(config)},
        "layers": descs,
    })
    index.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + put(manifest),
                  "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": name}})
with open(os.path.join(layout, "index.json"), "wb") as f:
    f.write(dumps({"schemaVersion": 2, "manifests": index}))
with open(os.path.join(layout, "oci-layout"), "wb") as f:
    f.write(dumps({"imageLayoutVersion": "1.0.0"}))
PY

UP_PORT=$(free_port)
mkdir -p "$WORK/upstream/storage"
cat >"$WORK/upstream/config.yml" <<EOF
version: 0.1
storage:
  filesystem: {rootdirectory: $WORK/upstream/storage}
  delete: {enabled: true}
  cache: {blobdescriptor: inmemory}
http: {addr: 127.0.0.1:$UP_PORT}
EOF
UP_ACCESS=$WORK/upstream/access.log # stdout: combined-format access log
env -u AWS_CA_BUNDLE docker-registry serve "$WORK/upstream/config.yml" >"$UP_ACCESS" 2>"$WORK/upstream/app.log" &
UP_PID=$!
wait_ready "http://127.0.0.1:$UP_PORT/v2/" "$UP_PID" "$WORK/upstream/app.log"
log "upstream docker-registry on :$UP_PORT"

echo '{"default":[{"type":"insecureAcceptAnything"}]}' >"$WORK/policy.json"
for name in big small; do
    skopeo --policy "$WORK/policy.json" copy -q "oci:$LAYOUT:$name" \
        "docker://127.0.0.1:$UP_PORT/bench/$name:$TAG" --dest-tls-verify=false >"$WORK/skopeo-push-$name.log" 2>&1 ||
        { cat "$WORK/skopeo-push-$name.log" >&2; die "skopeo push of bench/$name failed"; }
done
log "pushed bench/big:$TAG and bench/small:$TAG"

# The manifest exactly as the upstream serves it, and its biggest layer: the blob under test.
curl -sf --max-time "$CURL_TIMEOUT" -H "Accept: $OCI_MT" "http://127.0.0.1:$UP_PORT/v2/$REPO/manifests/$TAG" -o "$WORK/manifest.json" ||
    die "cannot read back the pushed manifest"
MANIFEST_DIGEST=sha256:$(sha256sum "$WORK/manifest.json" | cut -d' ' -f1)
read -r BLOB_DIGEST BLOB_SIZE < <(python3 -c '
import json, sys
m = json.load(open(sys.argv[1]))
l = max(m["layers"], key=lambda l: l["size"])
print(l["digest"], l["size"])' "$WORK/manifest.json")
BLOB_HEX=${BLOB_DIGEST#sha256:}
[[ -f $LAYOUT/blobs/sha256/$BLOB_HEX ]] || die "pushed layer $BLOB_DIGEST is not the one built (recompressed?)"
log "blob $BLOB_DIGEST ($BLOB_SIZE bytes), manifest $MANIFEST_DIGEST"

# Upstream access-log helpers. A sentinel request makes sure every request that finished before it is
# in the log (lines are written when a response completes).
SENTINEL=0
upstream_sync() {
    SENTINEL=$((SENTINEL + 1))
    curl -s --max-time "$CURL_TIMEOUT" -o /dev/null "http://127.0.0.1:$UP_PORT/v2/?bench_sentinel=$SENTINEL" || true
    local i
    for i in $(seq 100); do
        grep -q "bench_sentinel=$SENTINEL " "$UP_ACCESS" && return 0
        sleep 0.05
    done
    log "warning: sentinel $SENTINEL not seen in the upstream access log"
}
upstream_mark() { upstream_sync; wc -l <"$UP_ACCESS"; }
# upstream_since MARK: "<blob GETs> <blob bytes> <all requests>" logged after MARK.
upstream_since() {
    upstream_sync
    tail -n "+$(($1 + 1))" "$UP_ACCESS" |
        awk -v blob="/blobs/$BLOB_DIGEST" '
            /bench_sentinel=/ { next }
            { all++ }
            $6 == "\"GET" && index($7, blob) { n++; if ($10 ~ /^[0-9]+$/) b += $10 }
            END { printf "%d %.0f %d\n", n, b, all }'
}
# upstream_methods MARK: "METHOD kind" counts after MARK, for the notes.
upstream_methods() {
    upstream_sync
    tail -n "+$(($1 + 1))" "$UP_ACCESS" |
        awk '/bench_sentinel=/ { next }
             { m = substr($6, 2); k = ($7 ~ /\/manifests\//) ? "manifests" : ($7 ~ /\/blobs\//) ? "blobs" : "other"; c[m " " k]++ }
             END { for (x in c) printf "%s=%d ", x, c[x] }'
}

# ---------------------------------------------------------------------------------------------
# 2. The three servers
# ---------------------------------------------------------------------------------------------
OCI_PORT=$(free_port)
OCI_DIR=$WORK/ocicache
OCI_LOG=$WORK/ocicache.log
OCI_BLOB_URL="http://127.0.0.1:$OCI_PORT/v2/$NS/$REPO/blobs/$BLOB_DIGEST"
start_ocicache() { # fresh, empty cache dir
    stop_pid "$OCI_PID"
    OCI_PID=''
    rm -rf "$OCI_DIR"
    mkdir -p "$OCI_DIR"
    echo "----- start $(date -u +%FT%TZ)" >>"$OCI_LOG"
    NO_COLOR=1 "$BIN" --listen 127.0.0.1 --port "$OCI_PORT" --cache-dir "$OCI_DIR" \
        --upstream "$NS=http://127.0.0.1:$UP_PORT" >>"$OCI_LOG" 2>&1 &
    OCI_PID=$!
    wait_ready "http://127.0.0.1:$OCI_PORT/v2/" "$OCI_PID" "$OCI_LOG"
}

PEER_PORT=$(free_port)
PEER_DIR=$WORK/peer
PEER_LOG=$WORK/peer.log
PEER_BLOB_URL="http://127.0.0.1:$PEER_PORT/v2/$REPO/blobs/$BLOB_DIGEST"
cat >"$WORK/peer.yml" <<EOF
version: 0.1
storage:
  filesystem: {rootdirectory: $PEER_DIR}
  delete: {enabled: true}
  cache: {blobdescriptor: inmemory}
http: {addr: 127.0.0.1:$PEER_PORT}
proxy: {remoteurl: "http://127.0.0.1:$UP_PORT"}
EOF
start_peer() { # fresh, empty storage; the upstream is already listening (the peer panics otherwise)
    stop_pid "$PEER_PID"
    PEER_PID=''
    rm -rf "$PEER_DIR"
    mkdir -p "$PEER_DIR"
    echo "----- start $(date -u +%FT%TZ)" >>"$PEER_LOG"
    env -u AWS_CA_BUNDLE docker-registry serve "$WORK/peer.yml" >>"$PEER_LOG" 2>&1 &
    PEER_PID=$!
    wait_ready "http://127.0.0.1:$PEER_PORT/v2/" "$PEER_PID" "$PEER_LOG"
}

NGX_PORT=$(free_port)
NGX_DIR=$WORK/nginx
NGX_BLOB_URL="http://127.0.0.1:$NGX_PORT/v2/$REPO/blobs/$BLOB_DIGEST"
mkdir -p "$NGX_DIR/tmp" "$NGX_DIR/www/v2/$REPO/blobs" "$NGX_DIR/www/v2/$REPO/manifests"
ln "$LAYOUT/blobs/sha256/$BLOB_HEX" "$NGX_DIR/www/v2/$REPO/blobs/$BLOB_DIGEST"
cp "$WORK/manifest.json" "$NGX_DIR/www/v2/$REPO/manifests/$TAG"
cp "$WORK/manifest.json" "$NGX_DIR/www/v2/$REPO/manifests/$MANIFEST_DIGEST"
NGX_USER=''
[[ $(id -u) == 0 ]] && NGX_USER='user root root;' # workers must read the 0700 temp dir
cat >"$NGX_DIR/nginx.conf" <<EOF
$NGX_USER
worker_processes 2;
pid $NGX_DIR/nginx.pid;
error_log $NGX_DIR/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000000;
    client_body_temp_path $NGX_DIR/tmp/body;
    proxy_temp_path $NGX_DIR/tmp/proxy;
    fastcgi_temp_path $NGX_DIR/tmp/fastcgi;
    uwsgi_temp_path $NGX_DIR/tmp/uwsgi;
    scgi_temp_path $NGX_DIR/tmp/scgi;
    types { }
    default_type application/octet-stream;
    server {
        listen 127.0.0.1:$NGX_PORT;
        root $NGX_DIR/www;
        location = /v2/ { default_type application/json; return 200 '{}'; }
        location /v2/$REPO/manifests/ { default_type $OCI_MT; }
        location / { }
    }
}
EOF
nginx -t -q -e "$NGX_DIR/error.log" -c "$NGX_DIR/nginx.conf" -p "$NGX_DIR" 2>"$NGX_DIR/test.log" ||
    { cat "$NGX_DIR/test.log" >&2; die "nginx config invalid"; }
nginx -e "$NGX_DIR/error.log" -c "$NGX_DIR/nginx.conf" -p "$NGX_DIR" -g 'daemon off;' >"$NGX_DIR/stdout.log" 2>&1 &
NGX_PID=$!
wait_ready "http://127.0.0.1:$NGX_PORT/v2/" "$NGX_PID" "$NGX_DIR/error.log"
log "nginx on :$NGX_PORT; ocicache will be on :$OCI_PORT, the peer on :$PEER_PORT"

# Per-server URLs. oci = ocicache (path routing), peer = docker-registry proxy, nginx = static files.
blob_url() {
    case $1 in oci) echo "$OCI_BLOB_URL" ;; peer) echo "$PEER_BLOB_URL" ;; nginx) echo "$NGX_BLOB_URL" ;; esac
}
manifest_url() { # SERVER REF
    case $1 in
    oci) echo "http://127.0.0.1:$OCI_PORT/v2/$NS/$REPO/manifests/$2" ;;
    peer) echo "http://127.0.0.1:$PEER_PORT/v2/$REPO/manifests/$2" ;;
    nginx) echo "http://127.0.0.1:$NGX_PORT/v2/$REPO/manifests/$2" ;;
    esac
}
server_pid() { case $1 in oci) echo "$OCI_PID" ;; peer) echo "$PEER_PID" ;; nginx) echo "$NGX_PID" ;; esac; }
start_server() { case $1 in oci) start_ocicache ;; peer) start_peer ;; esac; }
# Where a server keeps the committed blob; it is there once its upstream download finished.
stored_blob() {
    case $1 in
    oci) echo "$OCI_DIR/blobs/sha256/${BLOB_HEX:0:2}/$BLOB_HEX" ;;
    peer) echo "$PEER_DIR/docker/registry/v2/blobs/sha256/${BLOB_HEX:0:2}/$BLOB_HEX/data" ;;
    esac
}

PROBLEMS=() # anything odd, printed at the end
problem() { PROBLEMS+=("$*"); log "PROBLEM: $*"; }
NOTES=()

# ---------------------------------------------------------------------------------------------
# Correctness, once
# ---------------------------------------------------------------------------------------------
log "correctness checks through ocicache"
start_ocicache
mark=$(upstream_mark)
out=$(curl -s --max-time "$CURL_TIMEOUT" -o "$WORK/through-ocicache.blob" -w '%{http_code} %{size_download}' "$OCI_BLOB_URL" || echo "curl-failed")
sum=sha256:$(sha256sum "$WORK/through-ocicache.blob" | cut -d' ' -f1)
if [[ $out == "200 $BLOB_SIZE" && $sum == "$BLOB_DIGEST" ]]; then
    CORRECT_COLD="OK (cold GET: 200, $BLOB_SIZE bytes, sha256 matches the digest)"
else
    CORRECT_COLD="FAILED (cold GET $OCI_BLOB_URL: status/bytes '$out', sha256 $sum, expected $BLOB_DIGEST)"
    problem "blob through ocicache is wrong: $CORRECT_COLD"
fi
rm -f "$WORK/through-ocicache.blob"
out=$(curl -s --max-time "$CURL_TIMEOUT" -o "$WORK/through-ocicache.blob" -w '%{http_code} %{size_download}' \
    "http://127.0.0.1:$OCI_PORT/v2/$REPO/blobs/$BLOB_DIGEST?ns=$NS" || echo "curl-failed")
sum=sha256:$(sha256sum "$WORK/through-ocicache.blob" | cut -d' ' -f1)
if [[ $out == "200 $BLOB_SIZE" && $sum == "$BLOB_DIGEST" ]]; then
    CORRECT_WARM="OK (warm GET with ?ns=: sha256 matches)"
else
    CORRECT_WARM="FAILED (warm GET ?ns=: '$out', sha256 $sum)"
    problem "warm blob through ocicache (?ns=) is wrong: '$out' $sum"
fi
rm -f "$WORK/through-ocicache.blob"
for ref in "$TAG" "$MANIFEST_DIGEST"; do
    got=$(curl -s --max-time "$CURL_TIMEOUT" -H "Accept: $OCI_MT" "$(manifest_url oci "$ref")" | sha256sum | cut -d' ' -f1 || true)
    [[ sha256:$got == "$MANIFEST_DIGEST" ]] || problem "manifest $ref through ocicache has digest sha256:$got, expected $MANIFEST_DIGEST"
done
t0=$(now_ns)
if skopeo --policy "$WORK/policy.json" copy -q --src-tls-verify=false \
    "docker://127.0.0.1:$OCI_PORT/$NS/bench/small:$TAG" "oci:$WORK/pulled:small" >"$WORK/skopeo-pull.log" 2>&1; then
    CORRECT_SKOPEO="OK (skopeo copy of the 3-layer image through ocicache, digests verified by skopeo, $(secs_since "$t0") s)"
else
    CORRECT_SKOPEO="FAILED: $(tail -n 3 "$WORK/skopeo-pull.log" | tr '\n' ' ')"
    problem "skopeo pull of bench/small:$TAG through ocicache failed: $(tail -n 3 "$WORK/skopeo-pull.log" | tr '\n' ' ')"
fi
read -r n b _ < <(upstream_since "$mark")
CORRECT_UP="upstream blob GETs for the big blob during these checks: $n ($b bytes)"
rm -rf "$WORK/pulled"

# ---------------------------------------------------------------------------------------------
# Measurements
# ---------------------------------------------------------------------------------------------
declare -A RES # RES[key]="value value ..." one value per repetition
add() { RES[$1]+="$2 "; }

# wait_stored SERVER: until the server has committed the blob (its upstream download is over).
wait_stored() {
    local f i
    f=$(stored_blob "$1")
    for i in $(seq 1200); do
        [[ -f $f && $(stat -c %s "$f") == "$BLOB_SIZE" ]] && return 0
        sleep 0.1
    done
    problem "$1: blob not committed to its storage 120 s after a cold pull ($f)"
}

# check_results SERVER WHAT LINES FILES...: each curl's output file must hold LINES lines
# "200 <blob size>" (curl -w prints one per URL; "000 0" when it could not connect).
check_results() {
    local server=$1 what=$2 lines=$3 f line got
    shift 3
    for f in "$@"; do
        got=0
        while read -r line; do
            got=$((got + 1))
            [[ $line == "200 $BLOB_SIZE" ]] ||
                problem "$server $what: a client got '$line' (expected '200 $BLOB_SIZE') from $(blob_url "$server")"
        done <"$f"
        ((got == lines)) || problem "$server $what: a curl reported $got of $lines downloads (killed or crashed?)"
    done
}

# cold SERVER N: restart with empty storage, N clients GET the blob at once.
cold() {
    local server=$1 n=$2 i url mark t0 wall gets bytes all
    start_server "$server"
    url=$(blob_url "$server")
    mark=$(upstream_mark)
    rm -f "$WORK"/res.*
    CURL_PIDS=()
    t0=$(now_ns)
    for i in $(seq "$n"); do
        curl -s --max-time "$CURL_TIMEOUT" -o /dev/null -w '%{http_code} %{size_download}\n' "$url" >"$WORK/res.$i" &
        CURL_PIDS+=($!)
    done
    for i in "${CURL_PIDS[@]}"; do wait "$i" || true; done
    wall=$(secs_since "$t0")
    CURL_PIDS=()
    check_results "$server" "cold pull ($n clients)" 1 "$WORK"/res.*
    wait_stored "$server"
    read -r gets bytes all < <(upstream_since "$mark")
    add "cold$n.wall.$server" "$wall"
    add "cold$n.gets.$server" "$gets"
    add "cold$n.bytes.$server" "$(awk -v b="$bytes" -v s="$BLOB_SIZE" 'BEGIN{printf "%.2f", b/s}')"
    log "cold $server x$n: ${wall}s, upstream blob GETs $gets, bytes $bytes (all upstream requests: $all)"
}

# cold_static N: the same N-client download from nginx (the floor for serving the bytes at all).
cold_static() {
    local n=$1 i t0 wall
    rm -f "$WORK"/res.*
    CURL_PIDS=()
    t0=$(now_ns)
    for i in $(seq "$n"); do
        curl -s --max-time "$CURL_TIMEOUT" -o /dev/null -w '%{http_code} %{size_download}\n' "$NGX_BLOB_URL" >"$WORK/res.$i" &
        CURL_PIDS+=($!)
    done
    for i in "${CURL_PIDS[@]}"; do wait "$i" || true; done
    wall=$(secs_since "$t0")
    CURL_PIDS=()
    check_results nginx "download ($n clients)" 1 "$WORK"/res.*
    add "cold$n.wall.nginx" "$wall"
}

# warm SERVER C: C clients, each one curl process fetching the blob K times over one connection,
# so that C*K*size >= WARM_MB. Records MiB/s.
warm() {
    local server=$1 c=$2 url k i t0 secs total args=()
    url=$(blob_url "$server")
    k=$(((WARM_MB * 1048576 + BLOB_SIZE * c - 1) / (BLOB_SIZE * c)))
    ((k >= 1)) || k=1
    for i in $(seq "$k"); do args+=(-o /dev/null "$url"); done
    rm -f "$WORK"/res.*
    CURL_PIDS=()
    t0=$(now_ns)
    for i in $(seq "$c"); do
        curl -s --max-time "$CURL_TIMEOUT" -w '%{http_code} %{size_download}\n' "${args[@]}" >"$WORK/res.$i" &
        CURL_PIDS+=($!)
    done
    for i in "${CURL_PIDS[@]}"; do wait "$i" || true; done
    secs=$(secs_since "$t0")
    CURL_PIDS=()
    check_results "$server" "warm GET ($c clients)" "$k" "$WORK"/res.*
    total=$(cat "$WORK"/res.* | awk '$1 == 200 { s += $2 } END { printf "%.0f", s }')
    add "warm$c.$server" "$(awk -v b="$total" -v t="$secs" 'BEGIN{printf "%.1f", b/1048576/t}')"
}

# manifest rates: wrk for GET, ab -i -k for HEAD, both with the OCI Accept header.
rate_get() { # SERVER REF KEY
    local url out rps non2xx
    url=$(manifest_url "$1" "$2")
    out=$(wrk -t2 -c"$CONNS" -d"${DURATION}s" -H "Accept: $OCI_MT" "$url" 2>&1) || true
    rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ { print $NF }' <<<"$out")
    if [[ -z $rps ]]; then
        problem "wrk GET $url failed: $(tr '\n' ' ' <<<"$out" | cut -c1-300)"
        rps=0
    fi
    [[ -z $non2xx ]] || problem "wrk GET $url: $non2xx non-2xx responses"
    grep -q 'Socket errors' <<<"$out" && problem "wrk GET $url: $(grep 'Socket errors' <<<"$out")"
    add "$3.$1" "$rps"
}
rate_head() { # SERVER REF KEY
    local url out rps failed non2xx
    url=$(manifest_url "$1" "$2")
    out=$(ab -i -k -q -c "$CONNS" -t "$DURATION" -n "$HEAD_MAX_N" -H "Accept: $OCI_MT" "$url" 2>&1) || true
    rps=$(awk '/^Requests per second:/ { print $4 }' <<<"$out")
    failed=$(awk '/^Failed requests:/ { print $3 }' <<<"$out")
    non2xx=$(awk '/^Non-2xx responses:/ { print $3 }' <<<"$out")
    if [[ -z $rps ]]; then
        problem "ab HEAD $url failed: $(tr '\n' ' ' <<<"$out" | cut -c1-300)"
        rps=0
    fi
    [[ -z $failed || $failed == 0 ]] || problem "ab HEAD $url: $failed failed requests ($(grep -A1 '^Failed requests' <<<"$out" | tail -n1 | xargs))"
    [[ -z $non2xx ]] || problem "ab HEAD $url: $non2xx non-2xx responses"
    add "$3.$1" "$rps"
}

log "a. cold pull, 1 client (x$REPEAT)"
for r in $(seq "$REPEAT"); do
    cold oci 1
    cold peer 1
    cold_static 1
done
log "b. cold pull, $CLIENTS clients (x$REPEAT)"
for r in $(seq "$REPEAT"); do
    cold oci "$CLIENTS"
    cold peer "$CLIENTS"
    cold_static "$CLIENTS"
done
# From here on the servers keep the instance of the last cold run: the blob is cached.

log "c. warm blob throughput (>= $WARM_MB MiB per measurement, x$REPEAT)"
for s in oci peer nginx; do curl -s --max-time "$CURL_TIMEOUT" -o /dev/null "$(blob_url "$s")" || true; done # page cache
for r in $(seq "$REPEAT"); do
    for s in oci peer nginx; do
        warm "$s" 1
        warm "$s" "$CLIENTS"
    done
done

log "d. warm manifest requests/s ($CONNS connections, ${DURATION}s each, x$REPEAT)"
declare -A MAN_UP
for s in oci peer nginx; do
    for ref in "$TAG" "$MANIFEST_DIGEST"; do
        curl -s --max-time "$CURL_TIMEOUT" -o /dev/null -H "Accept: $OCI_MT" "$(manifest_url "$s" "$ref")" || true # cache it
        code=$(curl -s --max-time "$CURL_TIMEOUT" -o /dev/null -w '%{http_code}' -I -H "Accept: $OCI_MT" "$(manifest_url "$s" "$ref")" || true)
        [[ $code == 200 ]] || problem "HEAD $(manifest_url "$s" "$ref") answered $code"
    done
done
for r in $(seq "$REPEAT"); do
    for s in oci peer nginx; do
        mark=$(upstream_mark)
        rate_get "$s" "$TAG" get_tag
        rate_get "$s" "$MANIFEST_DIGEST" get_digest
        rate_head "$s" "$TAG" head_tag
        rate_head "$s" "$MANIFEST_DIGEST" head_digest
        if [[ $s != nginx ]]; then
            read -r _ _ all < <(upstream_since "$mark")
            add "man_up.$s" "$all"
            if [[ $r == 1 ]]; then MAN_UP[$s]=$(upstream_methods "$mark"); fi
        fi
    done
    log "manifest round $r done"
done

log "e. peak RSS"
vm_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
for s in oci peer; do
    pid=$(server_pid "$s")
    RES[rss.$s]=$(awk -v k="$(vm_kb "$pid" VmHWM)" 'BEGIN{printf "%.1f", k/1024}')
    RES[rss_now.$s]=$(awk -v k="$(vm_kb "$pid" VmRSS)" 'BEGIN{printf "%.1f", k/1024}')
done
ngx_kb=$(vm_kb "$NGX_PID" VmHWM)
for p in $(pgrep -P "$NGX_PID" || true); do ngx_kb=$((ngx_kb + $(vm_kb "$p" VmHWM))); done
RES[rss.nginx]=$(awk -v k="$ngx_kb" 'BEGIN{printf "%.1f", k/1024}')

curl -s --max-time "$CURL_TIMEOUT" "http://127.0.0.1:$OCI_PORT/metrics" >"$WORK/ocicache-metrics.txt" || true

# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
median() { # values... -> median ("-" when none)
    [[ $# -gt 0 ]] || { echo -; return; }
    printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}
med() { # KEY
    local v=${RES[$1]:-}
    # shellcheck disable=SC2086
    median $v
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2fx", a / b }'; }
fmt() { awk -v v="$1" -v d="$2" 'BEGIN { if (v == "-") print "-"; else printf "%.*f", d, v }'; }

# row LABEL KEY DECIMALS TARGET-TEXT VERDICT
row() {
    local o p n
    o=$(med "$2.oci")
    p=$(med "$2.peer")
    n=$(med "$2.nginx")
    printf '%-44s %10s %10s %10s %9s %9s  %s\n' "$1" "$(fmt "$o" "$3")" "$(fmt "$p" "$3")" "$(fmt "$n" "$3")" \
        "$(ratio "$o" "$p")" "$(ratio "$o" "$n")" "$4"
}
verdict() { # EXPR over o,p,n medians of KEY -> met / MISSED
    local o p n
    o=$(med "$1.oci")
    p=$(med "$1.peer")
    n=$(med "$1.nginx")
    awk -v o="$o" -v p="$p" -v n="$n" "BEGIN { if ($2) print \"met\"; else print \"MISSED\" }"
}

blob_mib=$(awk -v s="$BLOB_SIZE" 'BEGIN{printf "%.1f", s/1048576}')
{
    echo
    echo "ocicache benchmark — blob $BLOB_DIGEST ($BLOB_SIZE bytes = $blob_mib MiB), REPEAT=$REPEAT (medians shown),"
    echo "$CLIENTS concurrent clients, $(nproc) cores, $(uname -r). oci = ocicache $("$BIN" --version 2>/dev/null | head -n1 || true);"
    echo "peer = docker-registry $(docker-registry --version 2>/dev/null | awk '{print $NF}') in proxy mode; nginx $(nginx -v 2>&1 | sed 's/.*\///') = static files (serving limit)."
    echo
    printf '%-44s %10s %10s %10s %9s %9s  %s\n' "figure" "ocicache" "peer" "nginx" "oci/peer" "oci/nginx" "target"
    printf '%.0s-' $(seq 130)
    echo
    row "a. cold pull 1 client, wall s (lower=better)" cold1.wall 2 "(nginx: same download, not cold)"
    row "a.   upstream GETs of the blob" cold1.gets 0 ""
    row "a.   upstream bytes (x blob size)" cold1.bytes 2 ""
    row "b. cold pull $CLIENTS clients, wall s (lower=better)" "cold$CLIENTS.wall" 2 \
        "<= 0.50x peer: $(verdict "cold$CLIENTS.wall" 'o <= 0.5 * p')"
    row "b.   upstream GETs of the blob" "cold$CLIENTS.gets" 0 "ocicache == 1: $(verdict "cold$CLIENTS.gets" 'o == 1')"
    row "b.   upstream bytes (x blob size)" "cold$CLIENTS.bytes" 2 "ocicache == 1.00x: $(verdict "cold$CLIENTS.bytes" 'o == 1')"
    row "c. warm blob 1 client, MiB/s (higher=better)" warm1 0 ">= 0.90x nginx: $(verdict warm1 'o >= 0.9 * n')"
    row "c. warm blob $CLIENTS clients, MiB/s (higher=better)" "warm$CLIENTS" 0 \
        ">= 0.90x nginx: $(verdict "warm$CLIENTS" 'o >= 0.9 * n')"
    row "d. manifest GET by tag, req/s (higher=better)" get_tag 0 ""
    row "d. manifest GET by digest, req/s" get_digest 0 ""
    row "d. manifest HEAD by tag, req/s" head_tag 0 ">= 0.50x nginx: $(verdict head_tag 'o >= 0.5 * n')"
    row "d. manifest HEAD by digest, req/s" head_digest 0 ">= 0.50x nginx: $(verdict head_digest 'o >= 0.5 * n')"
    row "d.   upstream requests during one round" man_up 0 "(4 runs of ${DURATION}s)"
    row "e. peak RSS (VmHWM) MiB (lower=better)" rss 1 "ocicache <= 64 MiB: $(verdict rss 'o <= 64')"
    echo
    echo "nginx RSS is the sum over its master and worker processes. Current RSS at the end: ocicache ${RES[rss_now.oci]} MiB, peer ${RES[rss_now.peer]} MiB."
    echo
    echo "Every repetition (in run order):"
    for k in $(printf '%s\n' "${!RES[@]}" | sort); do
        printf '  %-22s %s\n' "$k" "${RES[$k]}"
    done
    echo
    echo "Upstream requests during the first manifest round: ocicache: ${MAN_UP[oci]:-none}; peer: ${MAN_UP[peer]:-none}"
    echo
    echo "Correctness:"
    echo "  $CORRECT_COLD"
    echo "  $CORRECT_WARM"
    echo "  $CORRECT_SKOPEO"
    echo "  $CORRECT_UP"
    echo
    echo "ocicache metrics at the end (last instance):"
    grep -E '^(ocicache_upstream_bytes|ocicache_cache_served_bytes|ocicache_download_resumes|ocicache_inflight_downloads|containerd_cache_total)' \
        "$WORK/ocicache-metrics.txt" | sed 's/^/  /' || echo "  (none)"
    grep -E '^ocicache_http_requests_total' "$WORK/ocicache-metrics.txt" | grep -v 'status="200"' | sed 's/^/  non-200: /' || true
    warns=$(grep -cE '\b(WARN|ERROR)\b' "$OCI_LOG" || true)
    echo
    echo "ocicache log: $warns WARN/ERROR lines over all instances"
    grep -E '\b(WARN|ERROR)\b' "$OCI_LOG" | head -n 5 | cut -c1-300 | sed 's/^/  /' || true
    perr=$(grep -cE 'level=(error|panic|fatal)' "$PEER_LOG" || true)
    echo "peer log: $perr level=error lines"
    grep -E 'level=(error|panic|fatal)' "$PEER_LOG" | head -n 3 | cut -c1-300 | sed 's/^/  /' || true
    echo
    if ((${#PROBLEMS[@]})); then
        echo "PROBLEMS (${#PROBLEMS[@]}):"
        printf '  %s\n' "${PROBLEMS[@]}" | head -n 40
    else
        echo "No problems seen (every response had status 200 and the full size)."
    fi
    echo
    echo "Load average (1/5/15 min) at start: $LOAD_START; at end: $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "(anything else busy on the machine, e.g. a concurrent cargo build, shows up here and skews the figures)"
    echo "Total run time: $((SECONDS - START_SECONDS)) s"
}

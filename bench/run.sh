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
#   BENCH_S3=1      also measure on object storage (a moto server on 127.0.0.1): ocicache -b BUCKET and the peer
#                   with its s3 storage driver, next to the disk figures; prints a second table (default 0: off)
#   BENCH_S3_DURATION  seconds of each manifest-rate run in S3 mode (default 2)
#   BENCH_S3_WARM_MB   minimum MiB moved by each warm-throughput measurement in S3 mode (default BENCH_WARM_MB)
#   BENCH_S3_PEER_REDIRECT  1 (default, distribution's own default): the S3 peer answers warm blob GETs with a
#                   307 to a presigned bucket URL, which the clients follow; 0 sets redirect: {disable: true}
#   BENCH_MOTO      moto_server to run (default target/moto-venv/bin/moto_server; that venv is created if missing)
set -euo pipefail

LAYER_MB=${BENCH_LAYER_MB:-200}
REPEAT=${REPEAT:-3}
CLIENTS=${BENCH_CLIENTS:-16}
WARM_MB=${BENCH_WARM_MB:-1024}
DURATION=${BENCH_DURATION:-5}
CONNS=${BENCH_CONNS:-32}
CURL_TIMEOUT=${BENCH_CURL_TIMEOUT:-300} # seconds; a download that hangs longer is reported, not waited for
HEAD_MAX_N=5000000 # ab stops at -t seconds; this only bounds the count
S3=${BENCH_S3:-0}
S3_DURATION=${BENCH_S3_DURATION:-2}
S3_WARM_MB=${BENCH_S3_WARM_MB:-$WARM_MB}
S3_PEER_REDIRECT=${BENCH_S3_PEER_REDIRECT:-1}
RATE_SECS=$DURATION # duration of the manifest-rate runs in progress
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
[[ $S3 == 0 || $S3 == 1 ]] || die "BENCH_S3 must be 0 or 1"
MOTO=${BENCH_MOTO:-$ROOT/target/moto-venv/bin/moto_server}

# ---------------------------------------------------------------------------------------------
# Processes and cleanup
# ---------------------------------------------------------------------------------------------
WORK=$(mktemp -d /tmp/ocicache-bench.XXXXXX)
UP_PID='' OCI_PID='' PEER_PID='' NGX_PID=''
MOTO_PID='' S3OCI_PID='' S3PEER_PID='' # S3 mode only
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
    stop_pid "$S3OCI_PID"
    stop_pid "$S3PEER_PID"
    stop_pid "$MOTO_PID"
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

if [[ $S3 == 1 ]]; then
    "$BIN" --help 2>&1 | grep -q -- '--storage' ||
        die "$BIN has no --storage (built before object storage?): rebuild with BENCH_BUILD=1"
    if [[ ! -x $MOTO && -z ${BENCH_MOTO:-} ]]; then
        log "creating $ROOT/target/moto-venv with moto[server]"
        { python3 -m venv "$ROOT/target/moto-venv" && "$ROOT/target/moto-venv/bin/pip" install -q 'moto[server]'; } ||
            die "cannot install moto[server] into $ROOT/target/moto-venv"
    fi
    [[ -x $MOTO ]] || die "$MOTO missing (BENCH_MOTO=path/to/moto_server)"
fi

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
# In S3 mode also s3oci = ocicache on the bucket, s3peer = docker-registry proxy with the s3 driver.
blob_url() {
    case $1 in
    oci) echo "$OCI_BLOB_URL" ;; peer) echo "$PEER_BLOB_URL" ;; nginx) echo "$NGX_BLOB_URL" ;;
    s3oci) echo "http://127.0.0.1:$S3OCI_PORT/v2/$NS/$REPO/blobs/$BLOB_DIGEST" ;;
    s3peer) echo "http://127.0.0.1:$S3PEER_PORT/v2/$REPO/blobs/$BLOB_DIGEST" ;;
    esac
}
manifest_url() { # SERVER REF
    case $1 in
    oci) echo "http://127.0.0.1:$OCI_PORT/v2/$NS/$REPO/manifests/$2" ;;
    peer) echo "http://127.0.0.1:$PEER_PORT/v2/$REPO/manifests/$2" ;;
    nginx) echo "http://127.0.0.1:$NGX_PORT/v2/$REPO/manifests/$2" ;;
    s3oci) echo "http://127.0.0.1:$S3OCI_PORT/v2/$NS/$REPO/manifests/$2" ;;
    s3peer) echo "http://127.0.0.1:$S3PEER_PORT/v2/$REPO/manifests/$2" ;;
    esac
}
server_pid() {
    case $1 in
    oci) echo "$OCI_PID" ;; peer) echo "$PEER_PID" ;; nginx) echo "$NGX_PID" ;;
    s3oci) echo "$S3OCI_PID" ;; s3peer) echo "$S3PEER_PID" ;;
    esac
}
start_server() {
    case $1 in oci) start_ocicache ;; peer) start_peer ;; s3oci) start_s3oci ;; s3peer) start_s3peer ;; esac
}
# set_follow SERVER: FOLLOW=(extra curl options for its blob GETs); the S3 peer may redirect to the bucket.
set_follow() {
    FOLLOW=()
    if [[ $1 == s3peer ]]; then FOLLOW=(-L); fi
}
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
S3_NOTES=() # S3 mode: per-run details printed below its table

# ---------------------------------------------------------------------------------------------
# Correctness, once
# ---------------------------------------------------------------------------------------------
log "correctness checks through ocicache"
start_ocicache
mark=$(upstream_mark)
# fetch_blob URL: downloads the big blob through ocicache; prints "status bytes sha256:hex".
fetch_blob() {
    local out sum
    out=$(curl -s --max-time "$CURL_TIMEOUT" -o "$WORK/through-ocicache.blob" -w '%{http_code} %{size_download}' "$1" || echo "curl-failed")
    sum=sha256:$(sha256sum "$WORK/through-ocicache.blob" | cut -d' ' -f1)
    rm -f "$WORK/through-ocicache.blob"
    echo "$out $sum"
}
got=$(fetch_blob "$OCI_BLOB_URL")
if [[ $got == "200 $BLOB_SIZE $BLOB_DIGEST" ]]; then
    CORRECT_COLD="OK (cold GET: 200, $BLOB_SIZE bytes, sha256 matches the digest)"
else
    CORRECT_COLD="FAILED (cold GET $OCI_BLOB_URL: status bytes sha256 '$got', expected $BLOB_DIGEST)"
    problem "blob through ocicache is wrong: $CORRECT_COLD"
fi
got=$(fetch_blob "http://127.0.0.1:$OCI_PORT/v2/$REPO/blobs/$BLOB_DIGEST?ns=$NS")
if [[ $got == "200 $BLOB_SIZE $BLOB_DIGEST" ]]; then
    CORRECT_WARM="OK (warm GET with ?ns=: sha256 matches)"
else
    CORRECT_WARM="FAILED (warm GET ?ns=: '$got')"
    problem "warm blob through ocicache (?ns=) is wrong: '$got'"
fi
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

# stored SERVER: true once the server has committed the blob with its full size (its upstream download is
# over; on S3, ocicache's background upload too): a file on disk, or the object in the bucket's listing.
stored() {
    local f
    case $1 in
    oci | peer)
        f=$(stored_blob "$1")
        [[ -f $f && $(stat -c %s "$f") == "$BLOB_SIZE" ]]
        ;;
    s3oci) s3_has "$S3OCI_BUCKET" "$(stored_key s3oci)" ;;
    s3peer) s3_has "$S3PEER_BUCKET" "$(stored_key s3peer)" ;;
    esac
}
# wait_stored SERVER: until stored, at most 120 s.
wait_stored() {
    local deadline=$((SECONDS + 120)) where
    while ((SECONDS < deadline)); do
        stored "$1" && return 0
        sleep 0.1
    done
    case $1 in oci | peer) where=$(stored_blob "$1") ;; *) where="s3://$(server_bucket "$1")/$(stored_key "$1")" ;; esac
    problem "$1: blob not committed to its storage 120 s after a cold pull ($where)"
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
# On S3 (s3oci, s3peer) it also records the time until the blob object is in the bucket and the
# requests to the bucket (a fresh one per cold run).
cold() {
    local server=$1 n=$2 i url mark smark t0 wall gets bytes all FOLLOW stored_s s3req s3methods
    start_server "$server"
    url=$(blob_url "$server")
    set_follow "$server"
    mark=$(upstream_mark)
    [[ $server != s3* ]] || smark=$(s3_mark)
    rm -f "$WORK"/res.*
    CURL_PIDS=()
    t0=$(now_ns)
    for i in $(seq "$n"); do
        curl -s "${FOLLOW[@]}" --max-time "$CURL_TIMEOUT" -o /dev/null -w '%{http_code} %{size_download}\n' "$url" >"$WORK/res.$i" &
        CURL_PIDS+=($!)
    done
    for i in "${CURL_PIDS[@]}"; do wait "$i" || true; done
    wall=$(secs_since "$t0")
    CURL_PIDS=()
    check_results "$server" "cold pull ($n clients)" 1 "$WORK"/res.*
    wait_stored "$server"
    stored_s=$(secs_since "$t0")
    read -r gets bytes all < <(upstream_since "$mark")
    add "cold$n.wall.$server" "$wall"
    add "cold$n.gets.$server" "$gets"
    add "cold$n.bytes.$server" "$(awk -v b="$bytes" -v s="$BLOB_SIZE" 'BEGIN{printf "%.2f", b/s}')"
    log "cold $server x$n: ${wall}s, upstream blob GETs $gets, bytes $bytes (all upstream requests: $all)"
    if [[ $server == s3* ]]; then
        read -r s3req s3methods < <(s3_since "$smark" "$(server_bucket "$server")")
        add "cold$n.stored.$server" "$stored_s"
        add "cold$n.s3req.$server" "$s3req"
        S3_NOTES+=("cold x$n $server: blob in the bucket after ${stored_s}s; bucket requests $s3req ($s3methods)")
        log "cold $server x$n: blob in the bucket after ${stored_s}s; bucket requests: $s3req ($s3methods)"
    fi
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

# warm SERVER C [MB]: C clients, each one curl process fetching the blob K times over one connection,
# so that C*K*size >= MB (default WARM_MB). Records MiB/s.
warm() {
    local server=$1 c=$2 url k i t0 secs total args=() FOLLOW mb=${3:-$WARM_MB}
    url=$(blob_url "$server")
    set_follow "$server"
    k=$(((mb * 1048576 + BLOB_SIZE * c - 1) / (BLOB_SIZE * c)))
    ((k >= 1)) || k=1
    for i in $(seq "$k"); do args+=(-o /dev/null "$url"); done
    rm -f "$WORK"/res.*
    CURL_PIDS=()
    t0=$(now_ns)
    for i in $(seq "$c"); do
        curl -s "${FOLLOW[@]}" --max-time "$CURL_TIMEOUT" -w '%{http_code} %{size_download}\n' "${args[@]}" >"$WORK/res.$i" &
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
    out=$(wrk -t2 -c"$CONNS" -d"${RATE_SECS}s" -H "Accept: $OCI_MT" "$url" 2>&1) || true
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
    out=$(ab -i -k -q -c "$CONNS" -t "$RATE_SECS" -n "$HEAD_MAX_N" -H "Accept: $OCI_MT" "$url" 2>&1) || true
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
# S3 mode (BENCH_S3=1): the same figures for ocicache on a bucket and the peer with the s3 driver
# ---------------------------------------------------------------------------------------------
# moto does not check signatures but refuses requests with no Authorization at all (GET, DELETE): any will do.
S3_AUTH='Authorization: AWS4-HMAC-SHA256 Credential=test/20000101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0'
s3() { curl -s --max-time "$CURL_TIMEOUT" -H "$S3_AUTH" "$@"; }
# Our own listings carry bench-poll=1 (ignored by the store) so that s3_since can leave them out.
s3_list() { # BUCKET [PREFIX] -> "key size" lines
    s3 "$S3_URL/$1?list-type=2&bench-poll=1&prefix=${2:-}" | python3 -c '
import html, re, sys
for c in re.findall(r"<Contents>(.*?)</Contents>", sys.stdin.read(), re.S):
    k, z = re.search(r"<Key>(.*?)</Key>", c, re.S), re.search(r"<Size>(\d+)</Size>", c)
    print(html.unescape(k.group(1)), z.group(1) if z else -1)'
}
s3_has() { # BUCKET KEY: the object is listed with the blob's size
    s3_list "$1" "$2" | grep -qxF "$2 $BLOB_SIZE"
}
make_bucket() {
    local code
    code=$(s3 -o /dev/null -w '%{http_code}' -X PUT "$S3_URL/$1" || true)
    [[ $code == 200 ]] || die "cannot create bucket $1 on moto (HTTP $code)"
}
delete_bucket() { # BUCKET: delete its objects, then the bucket (frees moto's memory and temp files)
    local b=$1 i k code
    [[ -n $b ]] || return 0
    for i in 1 2 3 4 5; do
        local keys
        keys=$(s3_list "$b" | cut -d' ' -f1 | python3 -c 'import sys, urllib.parse
for l in sys.stdin.read().splitlines(): print(urllib.parse.quote(l))')
        [[ -n $keys ]] || break
        while read -r k; do s3 -o /dev/null -X DELETE "$S3_URL/$b/$k" || true; done <<<"$keys"
    done
    code=$(s3 -o /dev/null -w '%{http_code}' -X DELETE "$S3_URL/$b" || true)
    [[ $code == 204 ]] || S3_NOTES+=("bucket $b could not be deleted (HTTP $code); left in moto")
}
# Requests to one bucket in moto's request log (werkzeug: one line per request, written when the
# response starts; ANSI colours on non-2xx).
s3_mark() { wc -l <"$MOTO_LOG"; }
s3_since() { # MARK BUCKET -> "<requests> <METHOD=n ...>"
    tail -n "+$(($1 + 1))" "$MOTO_LOG" | sed 's/\x1b\[[0-9;]*m//g' | awk -v b="/$2" '
        match($0, /"[A-Z]+ [^ ]+ HTTP\//) {
            split(substr($0, RSTART + 1, RLENGTH - 1), r, " ")
            p = r[2]
            if (p != b && index(p, b "/") != 1 && index(p, b "?") != 1) next
            if (p ~ /bench-poll=1/) next
            n++; c[r[1]]++
        }
        END { printf "%d", n; for (m in c) printf " %s=%d", m, c[m]; printf "\n" }'
}
s3_blob_gets() { # MARK BUCKET KEY -> GETs of that object after MARK
    tail -n "+$(($1 + 1))" "$MOTO_LOG" | sed 's/\x1b\[[0-9;]*m//g' | grep -cF "\"GET /$2/$3" || true
}
stored_key() {
    case $1 in
    s3oci) echo "blobs/sha256/${BLOB_HEX:0:2}/$BLOB_HEX" ;;
    s3peer) echo "docker/registry/v2/blobs/sha256/${BLOB_HEX:0:2}/$BLOB_HEX/data" ;;
    esac
}
server_bucket() { case $1 in s3oci) echo "$S3OCI_BUCKET" ;; s3peer) echo "$S3PEER_BUCKET" ;; esac; }

BUCKET_N=0 S3OCI_BUCKET='' S3PEER_BUCKET=''
start_s3oci() { # fresh bucket and staging dir; the previous instance's bucket is deleted
    stop_pid "$S3OCI_PID"
    S3OCI_PID=''
    delete_bucket "$S3OCI_BUCKET"
    BUCKET_N=$((BUCKET_N + 1))
    S3OCI_BUCKET=bench-oci-$BUCKET_N
    make_bucket "$S3OCI_BUCKET"
    rm -rf "$S3OCI_DIR"
    mkdir -p "$S3OCI_DIR"
    echo "----- start $(date -u +%FT%TZ) bucket $S3OCI_BUCKET" >>"$S3OCI_LOG"
    NO_COLOR=1 AWS_ENDPOINT_URL_S3=$S3_URL AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 \
        "$BIN" --listen 127.0.0.1 --port "$S3OCI_PORT" --cache-dir "$S3OCI_DIR" -b "$S3OCI_BUCKET" \
        --upstream "$NS=http://127.0.0.1:$UP_PORT" >>"$S3OCI_LOG" 2>&1 &
    S3OCI_PID=$!
    wait_ready "http://127.0.0.1:$S3OCI_PORT/v2/" "$S3OCI_PID" "$S3OCI_LOG"
}
start_s3peer() {
    stop_pid "$S3PEER_PID"
    S3PEER_PID=''
    delete_bucket "$S3PEER_BUCKET"
    BUCKET_N=$((BUCKET_N + 1))
    S3PEER_BUCKET=bench-peer-$BUCKET_N
    make_bucket "$S3PEER_BUCKET"
    cat >"$WORK/s3peer.yml" <<EOF
version: 0.1
storage:
  s3: {region: us-east-1, bucket: $S3PEER_BUCKET, regionendpoint: "$S3_URL", accesskey: test, secretkey: test, secure: false, v4auth: true}
  delete: {enabled: true}
  cache: {blobdescriptor: inmemory}
$([[ $S3_PEER_REDIRECT == 1 ]] || echo '  redirect: {disable: true}')
http: {addr: 127.0.0.1:$S3PEER_PORT}
proxy: {remoteurl: "http://127.0.0.1:$UP_PORT"}
EOF
    echo "----- start $(date -u +%FT%TZ) bucket $S3PEER_BUCKET" >>"$S3PEER_LOG"
    env -u AWS_CA_BUNDLE docker-registry serve "$WORK/s3peer.yml" >>"$S3PEER_LOG" 2>&1 &
    S3PEER_PID=$!
    wait_ready "http://127.0.0.1:$S3PEER_PORT/v2/" "$S3PEER_PID" "$S3PEER_LOG"
}

# fetch_check SERVER WHAT: one GET of the blob to a file, which must hash to the digest; sets CHECKED.
fetch_check() {
    local FOLLOW out sum f=$WORK/through-$1.blob
    set_follow "$1"
    out=$(curl -s "${FOLLOW[@]}" --max-time "$CURL_TIMEOUT" -o "$f" -w '%{http_code} %{size_download}' "$(blob_url "$1")" || echo "curl-failed")
    sum=sha256:$(sha256sum "$f" | cut -d' ' -f1)
    rm -f "$f"
    if [[ $out == "200 $BLOB_SIZE" && $sum == "$BLOB_DIGEST" ]]; then
        CHECKED="OK ($2: 200, $BLOB_SIZE bytes, sha256 matches)"
    else
        problem "$1 $2: status/bytes '$out', sha256 $sum, expected $BLOB_DIGEST"
        CHECKED="FAILED ($2: '$out', sha256 $sum)"
    fi
}

if [[ $S3 == 1 ]]; then
    # The disk instances are done (their figures are taken): stop them so they cost nothing.
    stop_pid "$OCI_PID"
    stop_pid "$PEER_PID"
    OCI_PID='' PEER_PID=''
    RATE_SECS=$S3_DURATION
    S3_LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
    MOTO_PORT=$(free_port)
    S3_URL=http://127.0.0.1:$MOTO_PORT
    MOTO_LOG=$WORK/moto.log
    "$MOTO" -H 127.0.0.1 -p "$MOTO_PORT" >"$MOTO_LOG" 2>&1 &
    MOTO_PID=$!
    wait_ready "$S3_URL/" "$MOTO_PID" "$MOTO_LOG"
    S3OCI_PORT=$(free_port)
    S3OCI_DIR=$WORK/s3oci-staging
    S3OCI_LOG=$WORK/s3oci.log
    S3PEER_PORT=$(free_port)
    S3PEER_LOG=$WORK/s3peer.log
    log "S3 mode: moto on :$MOTO_PORT, ocicache (-b) on :$S3OCI_PORT, the s3 peer on :$S3PEER_PORT"

    log "S3 a. cold pull, 1 client (x$REPEAT)"
    for r in $(seq "$REPEAT"); do
        cold s3oci 1
        cold s3peer 1
    done
    log "S3 b. cold pull, $CLIENTS clients (x$REPEAT)"
    for r in $(seq "$REPEAT"); do
        cold s3oci "$CLIENTS"
        cold s3peer "$CLIENTS"
    done
    # Both blobs are in their buckets (cold waited for the objects): from here on they are warm.
    hwm_note() { # WHEN: peak RSS so far of the current S3 instances, to see which phase sets (e)
        S3_NOTES+=("peak RSS so far, $1: s3oci $(awk -v k="$(vm_kb "$S3OCI_PID" VmHWM)" 'BEGIN{printf "%.1f", k/1024}') MiB, s3peer $(awk -v k="$(vm_kb "$S3PEER_PID" VmHWM)" 'BEGIN{printf "%.1f", k/1024}') MiB")
    }
    hwm_note "after the last cold runs"

    smark=$(s3_mark)
    fetch_check s3oci "ocicache on S3, warm GET"
    S3_CORRECT_WARM=$CHECKED
    n=$(s3_blob_gets "$smark" "$S3OCI_BUCKET" "$(stored_key s3oci)")
    S3_CORRECT_WARM+="; bucket GETs of the blob object during it: $n"
    ((n >= 1)) || S3_NOTES+=("ocicache on S3 served a warm GET without reading the bucket (from its staging dir?)")
    fetch_check s3peer "peer on S3, warm GET$([[ $S3_PEER_REDIRECT == 1 ]] && echo ', redirect followed')"
    S3_CORRECT_PEER=$CHECKED
    S3_PEER_ANSWER=$(curl -s --max-time "$CURL_TIMEOUT" -o /dev/null -w '%{http_code} %{redirect_url}' "$(blob_url s3peer)" | cut -c1-140 || true)

    log "S3 c. warm blob throughput (>= $S3_WARM_MB MiB per measurement, x$REPEAT)"
    for r in $(seq "$REPEAT"); do
        for s in s3oci s3peer; do
            smark=$(s3_mark)
            warm "$s" 1 "$S3_WARM_MB"
            warm "$s" "$CLIENTS" "$S3_WARM_MB"
            read -r n m < <(s3_since "$smark" "$(server_bucket "$s")")
            [[ $r != 1 ]] || S3_NOTES+=("warm 1+$CLIENTS clients $s: bucket requests $n ($m)")
        done
    done

    hwm_note "after the warm blob runs"
    log "S3 d. warm manifest requests/s ($CONNS connections, ${RATE_SECS}s each, x$REPEAT)"
    for s in s3oci s3peer; do
        for ref in "$TAG" "$MANIFEST_DIGEST"; do
            got=$(curl -s --max-time "$CURL_TIMEOUT" -H "Accept: $OCI_MT" "$(manifest_url "$s" "$ref")" | sha256sum | cut -d' ' -f1 || true)
            [[ sha256:$got == "$MANIFEST_DIGEST" ]] || problem "manifest $ref through $s has digest sha256:$got, expected $MANIFEST_DIGEST"
            code=$(curl -s --max-time "$CURL_TIMEOUT" -o /dev/null -w '%{http_code}' -I -H "Accept: $OCI_MT" "$(manifest_url "$s" "$ref")" || true)
            [[ $code == 200 ]] || problem "HEAD $(manifest_url "$s" "$ref") answered $code"
        done
    done
    for r in $(seq "$REPEAT"); do
        for s in s3oci s3peer; do
            mark=$(upstream_mark)
            smark=$(s3_mark)
            rate_get "$s" "$TAG" get_tag
            rate_get "$s" "$MANIFEST_DIGEST" get_digest
            rate_head "$s" "$TAG" head_tag
            rate_head "$s" "$MANIFEST_DIGEST" head_digest
            read -r _ _ all < <(upstream_since "$mark")
            add "man_up.$s" "$all"
            read -r n m < <(s3_since "$smark" "$(server_bucket "$s")")
            add "man_s3.$s" "$n"
            if [[ $r == 1 ]]; then
                MAN_UP[$s]=$(upstream_methods "$mark")
                S3_NOTES+=("manifest round $s: upstream ${MAN_UP[$s]:-none}; bucket requests $n ($m)")
            fi
        done
        log "S3 manifest round $r done"
    done

    log "S3 e. peak RSS"
    for s in s3oci s3peer; do
        pid=$(server_pid "$s")
        RES[rss.$s]=$(awk -v k="$(vm_kb "$pid" VmHWM)" 'BEGIN{printf "%.1f", k/1024}')
        RES[rss_now.$s]=$(awk -v k="$(vm_kb "$pid" VmRSS)" 'BEGIN{printf "%.1f", k/1024}')
    done
    MOTO_RSS=$(awk -v k="$(vm_kb "$MOTO_PID" VmHWM)" 'BEGIN{printf "%.1f", k/1024}')
    curl -s --max-time "$CURL_TIMEOUT" "http://127.0.0.1:$S3OCI_PORT/metrics" >"$WORK/s3oci-metrics.txt" || true

    log "S3 correctness: skopeo through ocicache on S3"
    mark=$(upstream_mark)
    t0=$(now_ns)
    if skopeo --policy "$WORK/policy.json" copy -q --src-tls-verify=false \
        "docker://127.0.0.1:$S3OCI_PORT/$NS/bench/small:$TAG" "oci:$WORK/pulled-s3:small" >"$WORK/skopeo-pull-s3.log" 2>&1; then
        S3_CORRECT_SKOPEO="OK (skopeo copy of the 3-layer image through ocicache on S3, digests verified, $(secs_since "$t0") s)"
    else
        S3_CORRECT_SKOPEO="FAILED: $(tail -n 3 "$WORK/skopeo-pull-s3.log" | tr '\n' ' ')"
        problem "skopeo pull of bench/small:$TAG through ocicache on S3 failed: $(tail -n 3 "$WORK/skopeo-pull-s3.log" | tr '\n' ' ')"
    fi
    rm -rf "$WORK/pulled-s3"
fi

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

# S3 table: row_s3 LABEL KEY DECIMALS NOTE -> ocicache on S3, on disk, peer on S3, on disk, and the ratios
# oci-s3/oci-disk and oci-s3/peer-s3. The disk figures are those of the first table.
row_s3() {
    local so o sp p
    so=$(med "$2.s3oci")
    o=$(med "$2.oci")
    sp=$(med "$2.s3peer")
    p=$(med "$2.peer")
    printf '%-46s %9s %9s %9s %9s %8s %8s  %s\n' "$1" "$(fmt "$so" "$3")" "$(fmt "$o" "$3")" "$(fmt "$sp" "$3")" \
        "$(fmt "$p" "$3")" "$(ratio "$so" "$o")" "$(ratio "$so" "$sp")" "$4"
}
s3_verdict() { # KEY EXPR over o = median for ocicache on S3 -> met / MISSED
    awk -v o="$(med "$1.s3oci")" "BEGIN { if ($2) print \"met\"; else print \"MISSED\" }"
}
report_s3() {
    local moto_v k warns perr
    moto_v=$("$(dirname "$MOTO")/python" -c 'import moto; print(moto.__version__)' 2>/dev/null || echo '?')
    echo
    echo "S3 mode — the same blob. oci-s3 = ocicache -b BUCKET (--cache-dir only stages fills); peer-s3 = docker-registry"
    echo "proxy with the s3 driver ($([[ $S3_PEER_REDIRECT == 1 ]] && echo 'default redirect on: warm blob GETs get a 307 to a presigned bucket URL, which the clients follow' || echo 'redirect: {disable: true}: it streams blobs itself'));"
    echo "both on moto $moto_v (127.0.0.1:$MOTO_PORT), a fresh bucket per server and cold run. The disk columns repeat the"
    echo "first table (manifest runs there ${DURATION}s, here ${S3_DURATION}s; warm runs >= $WARM_MB MiB there, >= $S3_WARM_MB MiB here)."
    echo
    printf '%-46s %9s %9s %9s %9s %8s %8s  %s\n' "figure" "oci-s3" "oci-disk" "peer-s3" "peer-disk" "s3/disk" "oci/peer" "note"
    printf '%.0s-' $(seq 130)
    echo
    row_s3 "a. cold pull 1 client, wall s (lower=better)" cold1.wall 2 "s3/disk = oci-s3/oci-disk; oci/peer = oci-s3/peer-s3"
    row_s3 "a.   blob object in the bucket after, s" cold1.stored 2 "since the pull started"
    row_s3 "a.   upstream GETs of the blob" cold1.gets 0 ""
    row_s3 "a.   upstream bytes (x blob size)" cold1.bytes 2 ""
    row_s3 "a.   requests to its bucket" cold1.s3req 0 "incl. the server's start"
    row_s3 "b. cold pull $CLIENTS clients, wall s (lower=better)" "cold$CLIENTS.wall" 2 ""
    row_s3 "b.   blob object in the bucket after, s" "cold$CLIENTS.stored" 2 ""
    row_s3 "b.   upstream GETs of the blob" "cold$CLIENTS.gets" 0 "ocicache == 1: $(s3_verdict "cold$CLIENTS.gets" 'o == 1')"
    row_s3 "b.   upstream bytes (x blob size)" "cold$CLIENTS.bytes" 2 "ocicache == 1.00x: $(s3_verdict "cold$CLIENTS.bytes" 'o == 1')"
    row_s3 "b.   requests to its bucket" "cold$CLIENTS.s3req" 0 ""
    row_s3 "c. warm blob 1 client, MiB/s (higher=better)" warm1 0 ""
    row_s3 "c. warm blob $CLIENTS clients, MiB/s (higher=better)" "warm$CLIENTS" 0 ""
    row_s3 "d. manifest GET by tag, req/s (higher=better)" get_tag 0 ""
    row_s3 "d. manifest GET by digest, req/s" get_digest 0 ""
    row_s3 "d. manifest HEAD by tag, req/s" head_tag 0 ""
    row_s3 "d. manifest HEAD by digest, req/s" head_digest 0 ""
    row_s3 "d.   upstream requests during one round" man_up 0 "(4 runs of ${S3_DURATION}s; disk: ${DURATION}s)"
    row_s3 "d.   requests to its bucket during one round" man_s3 0 ""
    row_s3 "e. peak RSS (VmHWM) MiB (lower=better)" rss 1 "moto itself: $MOTO_RSS MiB"
    echo
    echo "Current RSS at the end: ocicache on S3 ${RES[rss_now.s3oci]:-?} MiB, peer on S3 ${RES[rss_now.s3peer]:-?} MiB."
    echo "Load average (1/5/15 min) when the S3 part started: $S3_LOAD_START"
    echo "The S3 peer answers a GET of the cached blob (not following) with: ${S3_PEER_ANSWER:-?}"
    echo
    echo "Every repetition, S3 (in run order):"
    for k in $(printf '%s\n' "${!RES[@]}" | grep -E '\.s3(oci|peer)$' | sort); do
        printf '  %-22s %s\n' "$k" "${RES[$k]}"
    done
    echo
    echo "S3 details (requests to the bucket exclude the script's own listings):"
    printf '  %s\n' "${S3_NOTES[@]}"
    echo
    echo "Correctness, S3:"
    echo "  $S3_CORRECT_WARM"
    echo "  $S3_CORRECT_PEER"
    echo "  $S3_CORRECT_SKOPEO"
    echo
    echo "ocicache on S3, metrics at the end (last instance):"
    grep -E '^(ocicache_upstream_bytes|ocicache_cache_served_bytes|ocicache_download_resumes|ocicache_inflight_downloads|ocicache_object)' \
        "$WORK/s3oci-metrics.txt" | sed 's/^/  /' || echo "  (none)"
    grep -E '^ocicache_http_requests_total' "$WORK/s3oci-metrics.txt" | grep -v 'status="200"' | sed 's/^/  non-200: /' || true
    warns=$(grep -cE '\b(WARN|ERROR)\b' "$S3OCI_LOG" || true)
    echo "ocicache on S3 log: $warns WARN/ERROR lines over all instances"
    grep -E '\b(WARN|ERROR)\b' "$S3OCI_LOG" | head -n 5 | cut -c1-300 | sed 's/^/  /' || true
    perr=$(grep -cE 'level=(error|panic|fatal)' "$S3PEER_LOG" || true)
    echo "peer on S3 log: $perr level=error lines"
    grep -E 'level=(error|panic|fatal)' "$S3PEER_LOG" | head -n 3 | cut -c1-300 | sed 's/^/  /' || true
    echo "moto: $(sed 's/\x1b\[[0-9;]*m//g' "$MOTO_LOG" | grep -cE '^127\.0\.0\.1 .*" 5[0-9][0-9] ' || true) responses 5xx"
    sed 's/\x1b\[[0-9;]*m//g' "$MOTO_LOG" | grep -E '^127\.0\.0\.1 .*" 5[0-9][0-9] ' | head -n 3 | cut -c1-200 | sed 's/^/  /' || true
    sed 's/\x1b\[[0-9;]*m//g' "$MOTO_LOG" | awk '/^Traceback/ { t = 1 } t && /^[A-Za-z_.]*(Error|Exception)[A-Za-z]*:/ { print; t = 0 }' |
        sort | uniq -c | head -n 3 | sed 's/^ */  exception x/' || true
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
    for k in $(printf '%s\n' "${!RES[@]}" | grep -Ev '\.s3(oci|peer)$' | sort); do
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
    if [[ $S3 == 1 ]]; then report_s3; fi
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

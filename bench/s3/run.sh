#!/usr/bin/env bash
# Throughput of stowage on the object store against the local volume, on one
# machine, back to back: a 3-node Garage cluster (replication factor 3) on
# loopback, one `stowage serve` on it, and the same on the local volume.
#
#   bench/s3/run.sh            # ~3 min; prints a TSV and appends to results/
#
# For each backend: one SIZE multipart upload (curl, fsynced local volume /
# Garage with data_fsync=false, as in the test cluster), its download, and
# CONC concurrent uploads of CONC_SIZE. Peak RSS of stowage from /proc.
# Garage runs on the same 2 cores as stowage and curl, so the object-store
# figures include three storage daemons' CPU: they are a floor, not what a
# separate storage tier gives.
#
# Env: SIZE_MB (512) CONC (8) CONC_MB (32) PORT (18290) GARAGE (cached binary)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SIZE_MB=${SIZE_MB:-512}
CONC=${CONC:-8}
CONC_MB=${CONC_MB:-32}
PORT=${PORT:-18290}
GARAGE=${GARAGE:-${STOWAGE_GARAGE_BIN:-$HOME/.cache/stowage/garage-2.5.0/bin/garage}}
WORK=$(mktemp -d /var/tmp/stowage-s3bench.XXXXXX)
BIN=$ROOT/target/release/stowage
KEY_ID=GK0123456789abcdef01234567
SECRET=5ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
log() { printf '==> %s\n' "$*" >&2; }

[ -x "$GARAGE" ] || { echo "garage not found at $GARAGE (scripts/test.sh builds it)" >&2; exit 1; }
(cd "$ROOT" && cargo build --release --locked --bin stowage -q)

log "starting a 3-node Garage cluster in $WORK"
for i in 0 1 2; do
  d=$WORK/g$i; mkdir -p "$d"
  cat >"$d/garage.toml" <<EOF
metadata_dir = "$d/meta"
data_dir = "$d/data"
db_engine = "lmdb"
metadata_fsync = false
data_fsync = false
replication_factor = 3
rpc_bind_addr = "127.0.0.1:$((PORT + 10 + i))"
rpc_public_addr = "127.0.0.1:$((PORT + 10 + i))"
rpc_secret = "$(printf '%064d' 7)"
[s3_api]
s3_region = "us-east-1"
api_bind_addr = "127.0.0.1:$((PORT + 20 + i))"
root_domain = ".s3.garage.localhost"
EOF
  RUST_LOG=garage=warn "$GARAGE" -c "$d/garage.toml" server >"$d/log" 2>&1 &
  PIDS+=($!)
done
g() { "$GARAGE" -c "$WORK/g0/garage.toml" "$@"; }
retry() { for _ in $(seq 1 150); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done; "$@"; }
retry g status
node_id() { retry "$GARAGE" -c "$WORK/g$1/garage.toml" node id -q; "$GARAGE" -c "$WORK/g$1/garage.toml" node id -q 2>/dev/null; }
for i in 1 2; do g node connect "$(node_id $i)" >/dev/null; done
for i in 0 1 2; do
  id=$(node_id $i); g layout assign -z "z$i" -c 10G "${id%@*}" >/dev/null
done
g layout apply --version 1 >/dev/null
retry g key import --yes -n bench "$KEY_ID" "$SECRET"
retry g bucket create bench
g bucket allow --read --write --owner bench --key bench >/dev/null

head -c $((SIZE_MB << 20)) /dev/urandom > "$WORK/big.bin"
head -c $((CONC_MB << 20)) /dev/urandom > "$WORK/small.bin"
printf '\x89PNG\r\n\x1a\n\0\0\0\rIHDR' | dd of="$WORK/big.bin" conv=notrunc status=none
printf '\x89PNG\r\n\x1a\n\0\0\0\rIHDR' | dd of="$WORK/small.bin" conv=notrunc status=none

peak_rss() { awk '/VmHWM/ {print int($2/1024)}' "/proc/$1/status"; }
mbps() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.0f", b / 1048576 / s }'; }

run_backend() { # name, extra env...
  local name=$1; shift
  local data=$WORK/stowage-$name
  mkdir -p "$data"
  env STOWAGE_DATA_DIR="$data" STOWAGE_BIND="127.0.0.1:$PORT" STOWAGE_ADMIN_TOKEN=bench \
    STOWAGE_DEFAULT_QUOTA=1TiB STOWAGE_MAX_FILE_SIZE=4GiB "$@" \
    "$BIN" serve >"$data/log" 2>&1 &
  local pid=$!; PIDS+=($pid)
  retry curl -fsS "http://127.0.0.1:$PORT/readyz"
  local tok
  tok=$(curl -fsS -X POST "http://127.0.0.1:$PORT/api/dev/login" -H 'content-type: application/json' \
    -d '{"user_id":"bench"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
  local t0 t1 id
  t0=$(date +%s.%N)
  id=$(curl -fsS -H "Authorization: Bearer $tok" -F "file=@$WORK/big.bin;filename=big.png" \
    "http://127.0.0.1:$PORT/api/files/upload" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  t1=$(date +%s.%N)
  local up; up=$(mbps $((SIZE_MB << 20)) "$(echo "$t1 - $t0" | bc)")
  t0=$(date +%s.%N)
  curl -fsS -H "Authorization: Bearer $tok" -o "$WORK/back.bin" "http://127.0.0.1:$PORT/api/files/$id/download"
  t1=$(date +%s.%N)
  local down; down=$(mbps $((SIZE_MB << 20)) "$(echo "$t1 - $t0" | bc)")
  cmp -s "$WORK/big.bin" "$WORK/back.bin" || { echo "$name: downloaded bytes differ" >&2; exit 1; }
  rm -f "$WORK/back.bin"
  t0=$(date +%s.%N)
  local curls=()
  for i in $(seq 1 "$CONC"); do
    curl -fsS -o /dev/null -H "Authorization: Bearer $tok" -F "file=@$WORK/small.bin;filename=s$i.png" \
      "http://127.0.0.1:$PORT/api/files/upload" &
    curls+=($!)
  done
  for c in "${curls[@]}"; do wait "$c"; done
  t1=$(date +%s.%N)
  local conc; conc=$(mbps $((CONC * CONC_MB << 20)) "$(echo "$t1 - $t0" | bc)")
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$up" "$down" "$conc" "$(peak_rss "$pid")"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

{
  printf 'backend\tupload_%dMiB_MBps\tdownload_MBps\tconc_%dx%dMiB_MBps\tpeak_rss_MiB\n' "$SIZE_MB" "$CONC" "$CONC_MB"
  run_backend local
  run_backend s3-proxy STOWAGE_BLOB_STORE=s3 STOWAGE_S3_BUCKET=bench \
    STOWAGE_S3_ENDPOINT="http://127.0.0.1:$((PORT + 20))" AWS_ACCESS_KEY_ID=$KEY_ID AWS_SECRET_ACCESS_KEY=$SECRET
} | tee -a "$HERE/results.tsv"

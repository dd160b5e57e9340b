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
WORK=$(mktemp -d /var/tmp/stowage-s3bench.XXXXXX)
BIN=${BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/stowage}
LOG_TAG=bench-s3
. "$ROOT/bench/lib/common.sh"
. "$ROOT/bench/lib/garage.sh"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; garage_stop; rm -rf "$WORK"; }
trap cleanup EXIT
retry() { for _ in $(seq 1 150); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done; "$@"; }

[ -x "$GARAGE" ] || { echo "garage not found at $GARAGE (scripts/test.sh builds it)" >&2; exit 1; }
(cd "$ROOT" && cargo build --release --locked --bin stowage -q)

log "starting a 3-node Garage cluster in $WORK"
garage_start "$WORK" "$PORT"

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
  # shellcheck disable=SC2046
  run_backend s3-proxy $(garage_stowage_env)
} | tee -a "$HERE/results.tsv"

#!/usr/bin/env bash
# CPU profiles of stowage as SVG flame graphs: one SIZE multipart upload and
# one download of it (curl, loopback), on the release build (SQLite, local
# volume in a scratch dir), sampled by `perf record` (cpu-clock: this VM has
# no hardware counters) with DWARF call stacks (the release profile keeps
# line tables), turned into SVG by bench/lib/flamegraph.py.
#
#   bench/profile.sh                 # 1 GiB; ~1 min
#   SIZE=256MiB SKIP_BUILD=1 bench/profile.sh
#
# Writes into RESULTS_DIR (bench/results/<date>/): profile-upload.svg,
# profile-download.svg, their .folded stacks and .top.txt (functions by
# samples, self and total). Env: SIZE (1GiB) FREQ (499 Hz) PORT (18395) BIN
# SKIP_BUILD RANGE=1 (also a Range download of the middle half).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
cd "$ROOT"
LOG_TAG=profile
. "$HERE/lib/common.sh"

SIZE=${SIZE:-1GiB}
FREQ=${FREQ:-499}
PORT=${PORT:-18395}
BIN=${BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/stowage}
PY=${PYTHON:-python3}
OUT=${RESULTS_DIR:-$HERE/results/$(date -u +%Y-%m-%d)}
mkdir -p "$OUT"
WORK=/tmp/stowage-profile-$$
SERVER_PID= PERF_PID=

command -v perf >/dev/null || { log "perf not found (Debian: apt-get install linux-perf)"; exit 1; }
if ! perf record -e cpu-clock -o /dev/null -- true >/dev/null 2>&1; then
  log "perf record does not work here (perf_event_paranoid=$(cat /proc/sys/kernel/perf_event_paranoid))"
  exit 1
fi

on_exit() {
  local rc=$?
  [ -n "$PERF_PID" ] && { kill -INT "$PERF_PID" 2>/dev/null || true; wait "$PERF_PID" 2>/dev/null || true; }
  stop_pid "$SERVER_PID"
  rm -rf "$WORK"
  exit $rc
}
trap on_exit EXIT
trap 'exit 130' INT TERM

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  log "cargo build --release --locked --bin stowage"
  cargo build --release --locked --bin stowage
fi
[ -x "$BIN" ] || { log "$BIN missing"; exit 1; }

mkdir -p "$WORK"
"$PY" "$HERE/api/mkdata.py" "$WORK/src" "$SIZE" 0 1MiB
BIG=$WORK/src/random-$SIZE.bin
cat "$BIG" >/dev/null  # warm
stowage_start profile "$WORK/data" "$PORT"
URL=http://127.0.0.1:$PORT

# profile NAME CMD...: perf record on the server while CMD runs
profile() {
  local name=$1; shift
  local data=$WORK/$name.perf.data
  sync
  perf record -e cpu-clock -F "$FREQ" --call-graph dwarf,32768 -p "$SERVER_PID" -o "$data" \
    >"$WORK/$name.perf.log" 2>&1 &
  PERF_PID=$!
  sleep 1
  local c0 c1 t0 t1
  c0=$(awk '{print $14 + $15}' "/proc/$SERVER_PID/stat")
  t0=$(date +%s.%N)
  "$@"
  t1=$(date +%s.%N)
  c1=$(awk '{print $14 + $15}' "/proc/$SERVER_PID/stat")
  kill -INT "$PERF_PID"; wait "$PERF_PID" 2>/dev/null || true; PERF_PID=
  local secs cpu
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
  cpu=$(awk -v a="$c0" -v b="$c1" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", (b - a) / hz }')
  log "$name: ${secs} s wall, ${cpu} cpu-s of the server (under perf: higher than unprofiled)"
  perf script -i "$data" -F comm,tid,ip,sym --no-inline 2>/dev/null \
    | "$PY" "$HERE/lib/flamegraph.py" --title "stowage $name, $SIZE, $(git rev-parse --short HEAD): $secs s, $cpu cpu-s" \
        --out "$OUT/profile-$name.svg" --folded "$OUT/profile-$name.folded" >"$OUT/profile-$name.top.txt"
  cat "$OUT/profile-$name.top.txt" >&2
}

upload() {
  ID=$(curl -fsS -H "Authorization: Bearer $TOKEN" -H 'Expect:' \
    -F "file=@$BIG;type=application/octet-stream" "$URL/api/files/upload" \
    | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["id"])')
}
download() { curl -fsS -H "Authorization: Bearer $TOKEN" -o /dev/null "$URL/api/files/$ID/download"; }
download_range() {
  local n
  n=$(stat -c %s "$BIG")
  curl -fsS -H "Authorization: Bearer $TOKEN" -o /dev/null -r "$((n / 4))-$((n * 3 / 4 - 1))" \
    "$URL/api/files/$ID/download"
}

profile upload upload
profile download download
[ "${RANGE:-0}" = 1 ] && profile download-range download_range
log "flame graphs: ${OUT#"$ROOT"/}/profile-*.svg"

#!/usr/bin/env bash
# User-space instructions that `stowage serve` executes for one multipart
# upload, counted by valgrind's callgrind: the same count for the same binary
# and input whatever else the host is doing, so two builds compare without
# the noise of a shared machine. Kernel work (socket reads, disk writes) is not
# counted, and under valgrind sha2 takes its portable code path (valgrind
# hides SHA-NI), the same for every binary.
#
#   bench/multipart/callgrind.sh OLD_BIN NEW_BIN ...   # SIZE=64MiB
#   KEEP=dir bench/multipart/callgrind.sh BIN   # also keep each dump, for callgrind_annotate
#
# For each binary: start it under callgrind (SQLite, local volume in a scratch
# dir, development sign-in), zero the counters once it is ready, upload one
# SIZE file (ZIP magic + random bytes, curl -F), dump the counters, and print
# "<binary> <instructions> <per byte> <per byte outside sha2>" (the last
# leaves out the sha2::sha256 functions, whose count is fixed by the input).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
LOG_TAG=callgrind
. "$HERE/../lib/common.sh"

SIZE=${SIZE:-64MiB}
PORT=${PORT:-18397}
[ $# -ge 1 ] || { echo "usage: $0 BIN [BIN ...]" >&2; exit 2; }
command -v callgrind_control >/dev/null || { log "valgrind not found (Debian: apt-get install valgrind)"; exit 1; }
WORK=$(mktemp -d /tmp/stowage-callgrind.XXXXXX)
SERVER_PID=
trap 'stop_pid "$SERVER_PID" 2>/dev/null || true; rm -rf "$WORK"' EXIT

bytes=$(numfmt --from=iec-i "${SIZE%B}")
src=$WORK/src.zip
{ printf 'PK\003\004'; head -c $((bytes - 4)) /dev/urandom; } >"$src"

for bin in "$@"; do
  dir=$WORK/srv
  rm -rf "$dir" "$dir.server.log"
  wrap=$WORK/wrap.sh
  printf '#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file=%s/cg.out "%s" "$@"\n' "$WORK" "$bin" >"$wrap"
  chmod +x "$wrap"
  BIN=$wrap stowage_start callgrind "$dir" "$PORT" || { log "$bin did not start"; exit 1; }
  # The server's own pid is valgrind's: zero what start-up counted.
  callgrind_control -z "$SERVER_PID" >/dev/null
  curl -fsS -o /dev/null -H "Authorization: Bearer $TOKEN" -H 'Expect:' \
    -F "file=@$src" "http://127.0.0.1:$PORT/api/files/upload"
  callgrind_control -d "$SERVER_PID" >/dev/null
  stop_pid "$SERVER_PID"; SERVER_PID=
  # The dump after zeroing holds the upload alone.
  cat "$WORK"/cg.out.* >"$WORK/dump" 2>/dev/null || true
  ir=$(awk '/^totals:/ {s += $2} END {print s + 0}' "$WORK/dump")
  [ "$ir" -gt 0 ] || { log "$bin: no counters dumped"; exit 1; }
  sha=$(callgrind_annotate --threshold=100 --inclusive=no --auto=no "$WORK/dump" |
    awk '/sha2::sha256/ {gsub(",", "", $1); s += $1} END {print s + 0}')
  awk -v n="$bin" -v i="$ir" -v s="$sha" -v b="$bytes" 'BEGIN {printf "%s %d %.3f %.3f\n", n, i, i / b, (i - s) / b}'
  if [ -n "${KEEP:-}" ]; then
    mkdir -p "$KEEP"; cp "$WORK/dump" "$KEEP/$(basename "$bin").callgrind"
  fi
  rm -f "$WORK"/cg.out*
done

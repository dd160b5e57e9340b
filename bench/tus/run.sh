#!/usr/bin/env bash
# tus upload benchmark: stowage's /api/uploads driven by tus-js-client through
# ../shared/peers/measure.py, once with one PATCH per file and once with
# 8 MiB chunks, so the rows sit beside the @tus/server ("tus-node") rows.
#
#   bench/tus/run.sh [--reps N] [--size 1GiB] [--out FILE.tsv]
#
# Starts a release build on SQLite in a temp data dir with development
# sign-in (loopback, no JWT key) and takes a session token from
# POST /api/dev/login. measure.py uploads random files; stowage decides types
# by content, so the random source files get a PNG signature in their first
# 16 bytes (still incompressible), made once in the reused data dir.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
peers="${PEERS:-$root/../shared/peers}"
reps=3 size=1GiB out="$here/results-$(date +%Y-%m-%d-%H%M%S).raw.tsv"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --reps) reps="$2"; shift 2 ;;
    --size) size="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

"$root/tests/clients/install.sh"
(cd "$root" && cargo build --release --quiet)
bin="$root/target/release/stowage"

work="$(mktemp -d /var/tmp/stowage-tus-bench.XXXXXX)"
data_src="${BENCH_DATA_DIR:-/var/tmp/stowage-tus-bench-src}"
port="${PORT:-3917}"
cleanup() {
  [[ -n "${pid:-}" ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Source files: measure.py's names and sizes, PNG signature in front.
python3 "$peers/measure.py" prep --data-dir "$data_src" --size "$size" >/dev/null
for f in "$data_src"/random-*.bin; do
  printf '\x89PNG\r\n\x1a\n\0\0\0\rIHDR' | dd of="$f" conv=notrunc status=none
done

STOWAGE_BIND="127.0.0.1:$port" \
STOWAGE_DATA_DIR="$work/data" \
STOWAGE_DATABASE_URL="sqlite://$work/data/stowage.db" \
STOWAGE_STORAGE_ROOT="$work/data/users" \
STOWAGE_MAX_FILE_SIZE=4294967296 \
STOWAGE_DEFAULT_QUOTA=1099511627776 \
STOWAGE_RATE_LIMIT_IP=100000 STOWAGE_RATE_LIMIT_USER=100000 \
RUST_LOG=warn \
  "$bin" serve >"$work/server.log" 2>&1 &
pid=$!
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
  sleep 0.1
done
token="$(curl -fsS -X POST -H 'Content-Type: application/json' \
  -d '{"user_id":"bench"}' "http://127.0.0.1:$port/api/dev/login" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')"

# tests/clients/tus-js/tus-upload.mjs is measure.py's own tus client, beside
# the tus-js-client the tests install (same pinned version).
common=(--mode tus --tus-client "$root/tests/clients/tus-js/tus-upload.mjs" --upload-url "http://127.0.0.1:$port/api/uploads/"
  --download-url '{location}' -H "Authorization: Bearer $token"
  --server-pid "$pid" --reps "$reps" --size "$size" --data-dir "$data_src"
  --out "$out" --cleanup-cmd "rm -rf $work/data/users/*/images/*")
python3 "$peers/measure.py" http --label stowage-tus "${common[@]}"
python3 "$peers/measure.py" http --label stowage-tus-8MiB --chunk-size 8MiB "${common[@]}"
python3 "$peers/measure.py" summarize "$out"
echo "raw rows: $out" >&2

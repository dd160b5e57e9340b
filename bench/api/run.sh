#!/usr/bin/env bash
# Multipart upload, download and listing benchmark of stowage (issue 2).
#
#   bench/api/run.sh                      # from anywhere in the repository; ~10-20 min
#   PEERS=1 bench/api/run.sh              # run the peer figures first, same session
#
# 1. cargo build --release --bin stowage (retried while the tree does not build)
# 2. PEERS=1: ../shared/peers/run-peers.sh ONLY=disk,nginx-static,express-multer
#    ROUNDS=1, results into bench/api/results/ (the same-session ratio)
# 3. dd figures (measure.py disk) on the volume stowage writes to
# 4. stowage serve (SQLite, development sign-in) on 127.0.0.1:$PORT, data in
#    /var/tmp/stowage-bench-<pid>/; measure.py http: 1 GiB multipart upload,
#    download (curl), peak RSS, server CPU, 16 x 64 MiB concurrent uploads;
#    again with measure.py's raw-socket download client
# 5. listing: 100,000 rows for one user inserted straight into the database,
#    then 1,000 sequential GET /api/files?limit=50 (keep-alive), on SQLite and
#    on PostgreSQL (database stowage_bench, created and dropped here)
# 6. results/stowage-<date>.{raw.tsv,tsv,list.raw.tsv,list.tsv,versions.txt,log}
#    and the "Multipart upload, download and listing (issue 2)" section of
#    docs/benchmarks.md
#
# Env knobs: REPS (3) SIZE (1GiB) CONC (16) CONC_SIZE (64MiB) PORT (18190)
#   LIST_ROWS (100000) LIST_REQS (1000) PEERS (0) SKIP (comma list of
#   build,disk,http,py,list-sqlite,list-pg,docs) MEASURE_PY (../shared/peers/measure.py,
#   relative to the repository root) PEERS_SH (run-peers.sh next to MEASURE_PY; it
#   installs nginx and runs `npm ci` in its own tree, so point it at a writable
#   copy when ../shared/peers is read-only)
#   PEERS_TSV (peer summary to compare with; default: this run's, else the
#   newest in the peers' results/) PG_URL (postgres://postgres@127.0.0.1:5432)
#   BUILD_TRIES (6, 120 s apart) WORK (/var/tmp/stowage-bench-<pid>) RESULTS_DIR (bench/api/results)
#   QUIET_MAX (300: seconds, in all, to wait for the machine to be idle)
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
cd "$ROOT"
LOG_TAG=bench-api
. "$ROOT/bench/lib/common.sh"

REPS=${REPS:-3}
SIZE=${SIZE:-1GiB}
CONC=${CONC:-16}
CONC_SIZE=${CONC_SIZE:-64MiB}
PORT=${PORT:-18190}
LIST_ROWS=${LIST_ROWS:-100000}
LIST_REQS=${LIST_REQS:-1000}
PEERS=${PEERS:-0}
SKIP=${SKIP:-}
MEASURE_PY=${MEASURE_PY:-../shared/peers/measure.py}
PEERS_SH=${PEERS_SH:-$(dirname "$MEASURE_PY")/run-peers.sh}
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432}
PG_DB=stowage_bench
BUILD_TRIES=${BUILD_TRIES:-6}
QUOTA=1099511627776
ADMIN_TOKEN=bench-admin-$$-$RANDOM
BIN=$ROOT/target/release/stowage
PY=${PYTHON:-python3}

RESULTS=${RESULTS_DIR:-$HERE/results}
mkdir -p "$RESULTS"
STAMP=$(date +%Y-%m-%d)
[ -e "$RESULTS/stowage-$STAMP.tsv" ] && STAMP="$STAMP-$(date +%H%M%S)"
RAW=$RESULTS/stowage-$STAMP.raw.tsv
SUMMARY=$RESULTS/stowage-$STAMP.tsv
LIST_RAW=$RESULTS/stowage-$STAMP.list.raw.tsv
LIST_SUM=$RESULTS/stowage-$STAMP.list.tsv
VERSIONS=$RESULTS/stowage-$STAMP.versions.txt
LOG=$RESULTS/stowage-$STAMP.log
WORK=${WORK:-/var/tmp/stowage-bench-$$}
SRC=$WORK/src

skip() { [[ ",$SKIP," == *",$1,"* ]]; }
# Waits (at most QUIET_MAX s in all, default 300) until the machine's CPU is
# less than 30 % busy over 3 s: other builds and tests share these 2 cores.
QUIET_LEFT=${QUIET_MAX:-300}
cpu_busy() {  # percent busy over 3 s, all cores
  local a b
  a=$(awk '/^cpu / {print $2+$3+$4+$7+$8, $5+$6}' /proc/stat); sleep 3
  b=$(awk '/^cpu / {print $2+$3+$4+$7+$8, $5+$6}' /proc/stat)
  awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " ");
    busy = y[1] - x[1]; idle = y[2] - x[2]; printf "%d", (busy + idle) ? 100 * busy / (busy + idle) : 0 }'
}
wait_quiet() {
  local busy
  while :; do
    busy=$(cpu_busy)
    [ "$busy" -lt 30 ] && { log "$1: machine ${busy}% busy, starting"; return 0; }
    if [ "$QUIET_LEFT" -le 0 ]; then log "$1: machine still ${busy}% busy; measuring anyway (noisy)"; return 0; fi
    log "$1: machine ${busy}% busy (other work), waiting"
    sleep 7; QUIET_LEFT=$((QUIET_LEFT - 10))
  done
}
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

[ -f "$MEASURE_PY" ] || { echo "measure.py not found at $MEASURE_PY (set MEASURE_PY)" >&2; exit 1; }
MEASURE_PY=$(cd "$(dirname "$MEASURE_PY")" && pwd)/$(basename "$MEASURE_PY")

# everything on stderr also goes to the log
exec 9>&2
exec 2> >(tee -a "$LOG" >&9)
TEE_PID=$!

# ------------------------------------------------------------------ cleanup
SERVER_PID=
PG_CREATED=
stop_server() {
  local pid=${SERVER_PID:-}
  SERVER_PID=
  stop_pid "$pid"
}
on_exit() {
  local rc=$?
  stop_server
  if [ -n "$PG_CREATED" ]; then
    psql "$PG_URL/postgres" -qX -c "DROP DATABASE IF EXISTS $PG_DB" >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
  exec 2>&9
  wait "$TEE_PID" 2>/dev/null || true
  exit $rc
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ build
if ! skip build; then
  for try in $(seq 1 "$BUILD_TRIES"); do
    log "cargo build --release --bin stowage (try $try/$BUILD_TRIES)"
    if cargo build --release --bin stowage 2>"$RESULTS/.build-$$.err"; then
      rm -f "$RESULTS/.build-$$.err"; break
    fi
    tail -30 "$RESULTS/.build-$$.err" >&2
    rm -f "$RESULTS/.build-$$.err"
    [ "$try" = "$BUILD_TRIES" ] && { log "build failed $BUILD_TRIES times, giving up"; exit 1; }
    log "build failed (the tree may be mid-edit); retrying in 120 s"
    sleep 120
  done
fi
[ -x "$BIN" ] || { log "$BIN missing"; exit 1; }

# ------------------------------------------------------------------ peers
if [ "$PEERS" = 1 ]; then
  log "peers: ONLY=disk,nginx-static,express-multer ROUNDS=1 CONC_SIZE=$CONC_SIZE"
  RESULTS_DIR=$RESULTS ONLY=disk,nginx-static,express-multer ROUNDS=1 REPS=$REPS \
    SIZE=$SIZE CONC=$CONC CONC_SIZE=$CONC_SIZE "$PEERS_SH" \
    || log "run-peers.sh failed (rc=$?); comparing with the newest stored peer run instead"
fi

mkdir -p "$WORK"
{
  echo "date: $(date -Iseconds)"
  echo "host: $(uname -srm); $(nproc) cores; $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
  echo "cpu: $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
  echo "fs: $(df -PT "$WORK" | awk 'NR==2 {print $1, $2, $3/1048576 "G"}') (data in $WORK)"
  echo "settings: REPS=$REPS SIZE=$SIZE CONC=$CONC CONC_SIZE=$CONC_SIZE LIST_ROWS=$LIST_ROWS LIST_REQS=$LIST_REQS"
  echo "stowage: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src crates Cargo.toml Cargo.lock migrations || echo ' + uncommitted changes') ($("$BIN" --version 2>/dev/null || echo '?'))"
  echo "rustc: $(rustc --version)"
  echo "measure.py: $MEASURE_PY (sha256 $(sha256sum "$MEASURE_PY" | cut -c1-16))"
  echo "curl: $(curl --version | head -1 | cut -d' ' -f1-2)"
  echo "python: $($PY --version 2>&1 | cut -d' ' -f2); sqlite $($PY -c 'import sqlite3; print(sqlite3.sqlite_version)')"
  echo "postgresql: $(psql "$PG_URL/postgres" -qXAt -c 'show server_version' 2>/dev/null || echo unavailable)"
  echo "dd: $(dd --version | head -1)"
} >"$VERSIONS"

# ------------------------------------------------------------------ data
log "source files in $SRC: $SIZE + ${CONC}x$CONC_SIZE (ZIP magic + random bytes)"
$PY "$HERE/mkdata.py" "$SRC" "$SIZE" "$CONC" "$CONC_SIZE"

COMMON=(--reps "$REPS" --size "$SIZE" --concurrency "$CONC" --conc-size "$CONC_SIZE"
        --data-dir "$SRC" --out "$RAW")

# ------------------------------------------------------------------ disk
if ! skip disk; then
  wait_quiet disk
  log "disk: measure.py disk in $WORK/disk"
  mkdir -p "$WORK/disk"
  $PY "$MEASURE_PY" disk --label disk-dd --dir "$WORK/disk" "${COMMON[@]}" || log "disk: some figures failed"
  rm -rf "$WORK/disk"
fi

# ------------------------------------------------------------------ server
# start_server NAME DB_URL ; sets SERVER_PID and TOKEN
start_server() {
  local name=$1 db=$2 dir=$WORK/$1
  mkdir -p "$dir"
  if port_busy "$PORT"; then log "port $PORT in use (set PORT)"; return 1; fi
  (cd "$dir" && exec env -u STOWAGE_JWT_PUBLIC_KEY -u CLERK_JWT_KEY -u STOWAGE_JWKS_URL \
      -u DATABASE_URL -u PORT -u USER_STORAGE_ROOT -u STOWAGE_CLAMD -u STOWAGE_BLOB_STORE \
      STOWAGE_BIND="127.0.0.1:$PORT" STOWAGE_DATA_DIR="$dir" STOWAGE_DATABASE_URL="$db" \
      STOWAGE_STORAGE_ROOT="$dir/users" STOWAGE_ADMIN_TOKEN="$ADMIN_TOKEN" \
      STOWAGE_MAX_FILE_SIZE=4GiB STOWAGE_RATE_LIMIT_USER=100000 STOWAGE_RATE_LIMIT_IP=100000 \
      RUST_LOG=${RUST_LOG:-warn} \
      "$BIN" serve) >"$WORK/$name.server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 300); do  # bounded: 30 s
    curl -fsS -o /dev/null "http://127.0.0.1:$PORT/healthz" 2>/dev/null && break
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
      log "$name: stowage exited; log:"; tail -30 "$WORK/$name.server.log" >&2; SERVER_PID=; return 1
    fi
    sleep 0.1
  done
  curl -fsS -o /dev/null "http://127.0.0.1:$PORT/healthz" || { log "$name: not up after 30 s"; stop_server; return 1; }
  curl -fsS -o /dev/null -X PUT "http://127.0.0.1:$PORT/api/admin/users/bench/quota" \
    -H "Authorization: Bearer $ADMIN_TOKEN" -H 'content-type: application/json' \
    -d "{\"max_bytes\": $QUOTA}"
  TOKEN=$(curl -fsS -X POST "http://127.0.0.1:$PORT/api/dev/login" -H 'content-type: application/json' \
    -d '{"user_id":"bench"}' | $PY -c 'import json,sys; print(json.load(sys.stdin)["token"])')
  [ -n "$TOKEN" ] || { log "$name: no token"; stop_server; return 1; }
  log "$name: stowage up, pid $SERVER_PID, port $PORT"
}
server_log_tail() {  # warnings and errors the server logged, into the run's log
  local f=$WORK/$1.server.log
  [ -s "$f" ] || return 0
  log "$1: server log ($(wc -l <"$f") lines), last 15:"
  tail -15 "$f" >&2
}
migrate() {  # migrate DB_URL
  (cd "$WORK" && env -u DATABASE_URL STOWAGE_DATA_DIR="$WORK/migrate" STOWAGE_DATABASE_URL="$1" \
      STOWAGE_STORAGE_ROOT="$WORK/migrate/users" "$BIN" migrate) >&2
}

# ------------------------------------------------------------------ upload / download
if ! skip http || ! skip py; then
  start_server http "sqlite://$WORK/http/stowage.db"
  URL=http://127.0.0.1:$PORT
  HTTP_ARGS=(--upload-url "$URL/api/files/upload" --field file
             --download-url "$URL/api/files/{id}/download"
             -H "Authorization: Bearer $TOKEN" --server-pid "$SERVER_PID")
  if ! skip http; then
    wait_quiet http
    log "http: measure.py, curl client (upload, download, ${CONC}x$CONC_SIZE)"
    $PY "$MEASURE_PY" http --label stowage "${HTTP_ARGS[@]}" "${COMMON[@]}" || log "http: some figures failed"
  fi
  if ! skip py; then
    wait_quiet http-py
    log "http: measure.py --download-client py (upload, download)"
    $PY "$MEASURE_PY" http --label stowage-pyclient --download-client py --skip conc --no-verify \
      "${HTTP_ARGS[@]}" "${COMMON[@]}" || log "http py: some figures failed"
  fi
  kill -0 "$SERVER_PID" 2>/dev/null || log "http: stowage died during the run"
  stop_server
  server_log_tail http
  rm -rf "$WORK/http"
fi
rm -rf "$SRC"

# ------------------------------------------------------------------ listing
list_run() {  # list_run LABEL
  wait_quiet "$1"
  # the listing mix of bench/list (rounds of ~20 requests each)
  $PY "$ROOT/bench/list/list_mix.py" --url "http://127.0.0.1:$PORT" --token "$TOKEN" --label "$1" \
    --n "$(( (LIST_REQS + 19) / 20 ))" --raw "$LIST_RAW" --api-summary "$LIST_SUM"
}
if ! skip list-sqlite; then
  DB=sqlite://$WORK/list-sqlite/stowage.db
  mkdir -p "$WORK/list-sqlite"
  migrate "$DB"
  log "list-sqlite: inserting $LIST_ROWS rows"
  t0=$(date +%s.%N)
  $PY "$HERE/seed_sqlite.py" "$WORK/list-sqlite/stowage.db" bench "$LIST_ROWS" "$QUOTA" >&2
  log "list-sqlite: inserted in $(elapsed "$t0") s"
  start_server list-sqlite "$DB"
  list_run stowage-sqlite
  stop_server
  server_log_tail list-sqlite
  rm -rf "$WORK/list-sqlite"
fi
if ! skip list-pg; then
  if psql "$PG_URL/postgres" -qX -c 'select 1' >/dev/null 2>&1; then
    DB=$PG_URL/$PG_DB
    psql "$PG_URL/postgres" -qX -v ON_ERROR_STOP=1 -c "DROP DATABASE IF EXISTS $PG_DB" -c "CREATE DATABASE $PG_DB" >&2
    PG_CREATED=1
    migrate "$DB"
    log "list-pg: inserting $LIST_ROWS rows"
    t0=$(date +%s.%N)
    psql "$DB" -qX -v ON_ERROR_STOP=1 -v user=bench -v n="$LIST_ROWS" -v max_bytes="$QUOTA" \
      -f "$HERE/seed_postgres.sql" >&2
    log "list-pg: inserted in $(elapsed "$t0") s"
    start_server list-pg "$DB"
    list_run stowage-postgres
    stop_server
    server_log_tail list-pg
    psql "$PG_URL/postgres" -qX -c "DROP DATABASE IF EXISTS $PG_DB" >&2
    PG_CREATED=
  else
    log "list-pg: PostgreSQL not reachable at $PG_URL; skipped"
  fi
fi

# ------------------------------------------------------------------ summary
[ -s "$RAW" ] && $PY "$MEASURE_PY" summarize "$RAW" --out "$SUMMARY"
newest_peers() {  # the peer summary in $1 whose versions file has the latest date: line
  local v
  for v in "$1"/peers-*.versions.txt; do
    [ -e "$v" ] || continue
    echo "$(sed -n 's/^date: //p' "$v") ${v%.versions.txt}.tsv"
  done | sort | tail -1 | cut -d' ' -f2
}
if [ -z "${PEERS_TSV:-}" ]; then  # this run's peer figures, else the newest stored run
  PEERS_TSV=$(newest_peers "$RESULTS" || true)
  [ -n "$PEERS_TSV" ] || PEERS_TSV=$(newest_peers "$(dirname "$MEASURE_PY")/results" || true)
fi
log "peer figures: ${PEERS_TSV:-none}"
[ -s "$SUMMARY" ] && column -t -s $'\t' "$SUMMARY" >&2
[ -s "$LIST_SUM" ] && cut -f1-7 "$LIST_SUM" | column -t -s $'\t' >&2
if ! skip docs; then
  $PY "$HERE/report.py" --summary "$SUMMARY" --list "$LIST_SUM" --versions "$VERSIONS" \
    --peers "$PEERS_TSV" --doc "$ROOT/docs/benchmarks.md"
  log "docs/benchmarks.md updated (section 'Multipart upload, download and listing (issue 2)')"
fi
log "results: $RESULTS/stowage-$STAMP.*"

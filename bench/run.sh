#!/usr/bin/env bash
# One benchmark command: stowage and its peers measured interleaved, round by
# round, so that a noisy spell of this shared host hits both sides alike.
#
#   bench/run.sh                          # ROUNDS=3 rounds of everything
#   QUICK=1 bench/run.sh                  # small sizes, 2 rounds: a few minutes
#   ONLY=download,multipart bench/run.sh  # some scenarios only
#   BASE_BIN=/path/to/old/stowage bench/run.sh   # also an older build, same rounds
#
# Each round, back to back:
#   1. the peers, through the peers' own ../shared/peers/run-peers.sh (ROUNDS=1)
#      and measure.py: disk-dd (dd conv=fsync, 16 dd at once), nginx-sendfile
#      (curl and the lean client), express-multer, tus-node, tus-node-8MiB;
#   2. a Range request of the middle half of the file from nginx (sendfile);
#   3. stowage (release build, SQLite, local volume in a scratch dir on the
#      same filesystem as the peers' scratch), measured by the same measure.py:
#      multipart upload (fsynced before it answers), download with curl and with
#      the lean client, the same Range request, CONC uploads at once, tus with
#      one PATCH (and CONC such uploads at once) and with 8 MiB PATCHes;
#   4. BASE_BIN set: that build, the same way (no concurrent batch, no tus:
#      bench/ab.sh compares builds on those);
#   5. s3: stowage on a 3-node Garage (started once for the run), and boto3
#      straight to the same Garage (bench/lib/xfer.py s3).
# After the rounds, list: for each of LIST_ROWS files of one user (seeded
# straight into the database), bench/list/run.sh runs the listing mix of
# bench/list/list_mix.py on SQLite and on PostgreSQL (no peer: no rounds),
# writing list-<rows>.{tsv,raw.tsv,plans.txt,versions.txt} here; table.md
# gets their p50/p99 per query kind.
# Then bench/lib/table.py writes bench/results/<date>/: round-<N>.raw.tsv,
# raw.tsv (all rows with their round), summary.tsv, table.md (medians with
# min–max, ratio of the medians, range of the per-round ratios), versions.txt,
# run.log; and prints the table.
#
# Scenarios (ONLY=, comma list; default all): multipart, download, conc, tus, s3, list.
# Env knobs: ROUNDS (3; QUICK: 2) REPS (1 per round) SIZE (1GiB; QUICK: 128MiB)
#   CONC (16) CONC_SIZE (64MiB; QUICK: 4MiB) PEERS_DIR (../shared/peers from the
#   repository root) PEERS_RUN (/var/tmp/stowage-bench-peers: a copy of PEERS_DIR
#   where run-peers.sh may `npm ci`; PEERS_DIR itself is read-only) BIN (the
#   release binary; built unless SKIP_BUILD=1) BASE_BIN (unset) PORT (18390)
#   RESULTS_DIR (bench/results/<date>[-HHMMSS]) GARAGE (garage binary)
#   LIST_ROWS ("100000 1000000"; QUICK: 100000) LIST_N (rounds of the listing
#   mix, 100; QUICK: 30) PG_URL (postgres://postgres@127.0.0.1:5432)
# Peers that cannot be found (no PEERS_DIR, no node, no garage, no boto3) are
# skipped with a message; their rows are then missing from the table.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
cd "$ROOT"
LOG_TAG=bench
. "$HERE/lib/common.sh"
. "$HERE/lib/garage.sh"

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
  ROUNDS=${ROUNDS:-2}; SIZE=${SIZE:-128MiB}; CONC_SIZE=${CONC_SIZE:-4MiB}
  LIST_ROWS=${LIST_ROWS:-100000}; LIST_N=${LIST_N:-30}
fi
LIST_ROWS=${LIST_ROWS:-100000 1000000}
LIST_N=${LIST_N:-100}
ROUNDS=${ROUNDS:-3}
REPS=${REPS:-1}
SIZE=${SIZE:-1GiB}
CONC=${CONC:-16}
CONC_SIZE=${CONC_SIZE:-64MiB}
ONLY=${ONLY:-multipart,download,conc,tus,s3,list}
PORT=${PORT:-18390}
PORT_NGINX=$((PORT - 7))
PORT_GARAGE=$((PORT + 10))
PEERS_DIR=${PEERS_DIR:-$ROOT/../shared/peers}
PEERS_RUN=${PEERS_RUN:-/var/tmp/stowage-bench-peers}
BIN=${BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/stowage}
BASE_BIN=${BASE_BIN:-}
PY=${PYTHON:-python3}

want() { [[ ",$ONLY," == *",$1,"* ]]; }
size_bytes() {
  awk -v s="$1" 'BEGIN { n = s + 0; u = s; sub(/^[0-9]+/, "", u)
    f = (u ~ /^G/) ? 2^30 : (u ~ /^M/) ? 2^20 : (u ~ /^K/) ? 2^10 : 1; printf "%d", n * f }'
}
SIZE_B=$(size_bytes "$SIZE")
CONC_SIZE_B=$(size_bytes "$CONC_SIZE")
RANGE_OFF=$((SIZE_B / 4))
RANGE_LEN=$((SIZE_B / 2))
RANGE_NAME=$("$PY" -c "import sys; n=int(sys.argv[1]); print(next(f'{n//f}{u}' for u, f in (('GiB', 1<<30), ('MiB', 1<<20), ('KiB', 1<<10), ('B', 1)) if n >= f and n % f == 0))" "$RANGE_LEN")

STAMP=$(date -u +%Y-%m-%d)
OUT=${RESULTS_DIR:-$HERE/results/$STAMP}
[ -z "${RESULTS_DIR:-}" ] && [ -e "$OUT/table.md" ] && OUT=$OUT-$(date -u +%H%M%S)
mkdir -p "$OUT"
WORK=/tmp/stowage-bench-$$
SRC=$WORK/src
mkdir -p -m 755 "$WORK" "$SRC"

exec 9>&2 2> >(tee -a "$OUT/run.log" >&9)
TEE_PID=$!

SERVER_PID= NGINX_PID= PEERS_PID=
on_exit() {
  local rc=$?
  [ -n "$PEERS_PID" ] && stop_pid "$PEERS_PID"
  stop_pid "$SERVER_PID"; stop_pid "$NGINX_PID"
  garage_stop
  rm -rf "$WORK"
  exec 2>&9
  wait "$TEE_PID" 2>/dev/null || true
  exit $rc
}
trap on_exit EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ build
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  log "cargo build --release --locked --bin stowage"
  cargo build --release --locked --bin stowage
fi
[ -x "$BIN" ] || { log "$BIN missing (set BIN or build)"; exit 1; }
[ -z "$BASE_BIN" ] || [ -x "$BASE_BIN" ] || { log "BASE_BIN $BASE_BIN is not executable"; exit 1; }

# ------------------------------------------------------------------ peers' tree
HAVE_PEERS=0
ROUNDS_WANTED=0
for s in multipart download conc tus s3; do want $s && ROUNDS_WANTED=1; done
if [ "$ROUNDS_WANTED" = 0 ]; then
  log "no round scenario in ONLY=$ONLY: peers not needed"
elif [ -f "$PEERS_DIR/run-peers.sh" ] && [ -f "$PEERS_DIR/measure.py" ]; then
  PEERS_DIR=$(cd "$PEERS_DIR" && pwd)
  # run-peers.sh runs `npm ci` in its own tree: give it a writable copy
  # (node_modules kept between runs, so it installs only once)
  mkdir -p "$PEERS_RUN"
  rsync -a --delete --exclude node_modules --exclude results "$PEERS_DIR/" "$PEERS_RUN/"
  HAVE_PEERS=1
  MEASURE=$PEERS_RUN/measure.py
  log "peers: $PEERS_DIR (run from $PEERS_RUN)"
else
  log "peers not found at $PEERS_DIR (set PEERS_DIR): peers skipped, stowage measured alone"
  log "measure.py is needed to measure stowage too; giving up"
  exit 1
fi
HAVE_BOTO3=0
"$PY" -c 'import boto3' 2>/dev/null && HAVE_BOTO3=1
HAVE_GARAGE=0
[ -x "$GARAGE" ] && HAVE_GARAGE=1
if want s3; then
  [ "$HAVE_GARAGE" = 1 ] || log "s3: no garage binary at $GARAGE (set GARAGE): skipped"
  [ "$HAVE_BOTO3" = 1 ] || log "s3: python3 has no boto3: the boto3 peer is skipped"
fi

# the peers run-peers.sh measures for the chosen scenarios
PEER_LIST=
add_peer() { [[ ",$PEER_LIST," == *",$1,"* ]] || PEER_LIST=${PEER_LIST:+$PEER_LIST,}$1; }
if want multipart || want conc; then add_peer disk; add_peer express-multer; fi
if want download; then add_peer nginx-static; fi
if want tus; then add_peer tus-node; add_peer tus-node-8MiB; fi

# ------------------------------------------------------------------ data
# stowage types files by content and refuses what it cannot type: the source
# files are measure.py's names and sizes, ZIP magic + random bytes
if [ "$ROUNDS_WANTED" = 1 ]; then
  log "source files: $SIZE + ${CONC}x$CONC_SIZE in $SRC"
  "$PY" "$HERE/api/mkdata.py" "$SRC" "$SIZE" "$CONC" "$CONC_SIZE"
  chmod 755 "$SRC"; chmod 644 "$SRC"/*
  BIG=$SRC/random-$SIZE.bin
  [ -f "$BIG" ] || BIG=$(ls "$SRC"/random-*.bin | head -1)
fi

{
  machine_info
  echo "fs: $(df -PT "$WORK" | awk 'NR==2 {print $1, $2}') (scratch of stowage and of the peers in /tmp)"
  echo "settings: ROUNDS=$ROUNDS REPS=$REPS SIZE=$SIZE CONC=$CONC CONC_SIZE=$CONC_SIZE ONLY=$ONLY QUICK=$QUICK"
  echo "stowage: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src crates Cargo.toml Cargo.lock migrations || echo ' + uncommitted changes') ($("$BIN" --version 2>/dev/null || echo '?')), $BIN"
  [ -n "$BASE_BIN" ] && echo "stowage-before: $BASE_BIN ($("$BASE_BIN" --version 2>/dev/null || echo '?'))"
  echo "rustc: $(rustc --version)"
  [ "$HAVE_PEERS" = 1 ] && echo "measure.py: $PEERS_DIR/measure.py (sha256 $(sha256sum "$PEERS_DIR/measure.py" | cut -c1-16))"
  echo "curl: $(curl --version | head -1 | cut -d' ' -f1-2)"
  echo "nginx: $(nginx -v 2>&1 | sed 's/.*: //')"
  echo "node: $(node --version 2>/dev/null || echo none)"
  echo "garage: $([ "$HAVE_GARAGE" = 1 ] && "$GARAGE" --version 2>/dev/null | head -1 || echo none)"
  echo "boto3: $("$PY" -c 'import boto3; print(boto3.__version__)' 2>/dev/null || echo none)"
} >"$OUT/versions.txt"

# ------------------------------------------------------------------ pieces
M_COMMON=(--reps "$REPS" --size "$SIZE" --concurrency "$CONC" --conc-size "$CONC_SIZE"
          --data-dir "$SRC" --tmp "$WORK/measure" --timeout 900)
measure() {  # measure LABEL ARGS... : measure.py http into this round's raw file
  local label=$1; shift
  mkdir -p "$WORK/measure"
  "$PY" "$MEASURE" http --label "$label" "$@" "${M_COMMON[@]}" --out "$RAW" \
    || log "$label: some measurements failed (NA rows)"
}
range() {  # range LABEL URL PID [HEADER [OFFSET LENGTH METRIC]]
  local hdr=() extra=()
  [ -n "${4:-}" ] && hdr=(-H "$4")
  [ -n "${7:-}" ] && extra=(--metric "$7")
  "$PY" "$HERE/lib/xfer.py" range --peers-dir "$PEERS_RUN" --label "$1" --url "$2" --server-pid "$3" \
    --offset "${5:-$RANGE_OFF}" --length "${6:-$RANGE_LEN}" --reps "$REPS" --out "$RAW" "${hdr[@]}" \
    "${extra[@]}" || log "$1: range download failed"
}
upload_id() {  # upload_id PORT TOKEN: one multipart upload of BIG, prints its id
  curl -fsS -H "Authorization: Bearer $2" -H 'Expect:' -F "file=@$BIG;type=application/octet-stream" \
    "http://127.0.0.1:$1/api/files/upload" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["id"])'
}

run_peers() {  # this round's peers, through run-peers.sh
  [ -n "$PEER_LIST" ] || return 0
  local dir=$WORK/peers-round-$ROUND
  mkdir -p "$dir"
  log "round $ROUND: peers ($PEER_LIST) through run-peers.sh"
  local install=
  [ "$ROUND" -gt 1 ] && install=1
  RESULTS_DIR=$dir ROUNDS=1 REPS=$REPS SIZE=$SIZE CONC=$CONC CONC_SIZE=$CONC_SIZE \
    ONLY=$PEER_LIST NO_INSTALL=$install "$PEERS_RUN/run-peers.sh" 2>"$dir/stderr.log" &
  PEERS_PID=$!
  wait "$PEERS_PID" || log "run-peers.sh exited with $? (see $dir/stderr.log)"
  PEERS_PID=
  local f
  for f in "$dir"/peers-*.raw.tsv; do
    [ -e "$f" ] || continue
    [ -s "$RAW" ] || head -1 "$f" >"$RAW"
    tail -n +2 "$f" >>"$RAW"
  done
  [ "$ROUND" = 1 ] && for f in "$dir"/peers-*.versions.txt; do
    [ -e "$f" ] && { echo; echo "# peers (run-peers.sh)"; cat "$f"; } >>"$OUT/versions.txt"
  done
  rm -rf "$dir"
}

nginx_range() {  # nginx sendfile of the same Range, from the same source file
  local run=$WORK/nginx
  rm -rf "$run"; mkdir -p -m 755 "$run"
  sed -e "s#@RUN@#$run#g" -e "s#@PORT@#$PORT_NGINX#g" -e "s#@DATA@#$SRC#g" \
    "$PEERS_RUN/peers/nginx/nginx.conf.tmpl" >"$run/nginx.conf"
  nginx -p "$run" -c "$run/nginx.conf" -e "$run/error.log" >"$run/stdout.log" 2>&1 &
  NGINX_PID=$!
  local url=http://127.0.0.1:$PORT_NGINX/static/$(basename "$BIG")
  local up=0
  for _ in $(seq 1 100); do  # bounded: 10 s
    port_busy "$PORT_NGINX" && { up=1; break; }
    kill -0 "$NGINX_PID" 2>/dev/null || break
    sleep 0.1
  done
  if [ "$up" = 1 ]; then
    range nginx-sendfile "$url" "$NGINX_PID"
  else
    log "nginx did not come up: nginx Range figures skipped"
  fi
  stop_pid "$NGINX_PID"; NGINX_PID=
}

stowage_round() {  # stowage_round LABEL BINARY FULL(1|0)
  local label=$1 full=$3 dir=$WORK/$1-$ROUND
  BIN=$2 stowage_start "$label" "$dir" "$PORT" || { log "$label: skipped this round"; return 0; }
  local url=http://127.0.0.1:$PORT
  local args=(--upload-url "$url/api/files/upload" --field file
              --download-url "$url/api/files/{id}/download"
              -H "Authorization: Bearer $TOKEN" --server-pid "$SERVER_PID")
  local skip=()
  if [ "$full" != 1 ] || ! want conc; then skip=(--skip conc); fi
  if want multipart || want download || { [ "$full" = 1 ] && want conc; }; then
    if ! want multipart && ! want download; then skip=(--skip upload,download); fi
    measure "$label" "${args[@]}" "${skip[@]}"
  fi
  if want download; then
    measure "$label-pyclient" "${args[@]}" --download-client py --skip conc --no-verify
    local id
    if id=$(upload_id "$PORT" "$TOKEN"); then
      # The upload's direct I/O leaves the file out of the page cache, so the
      # download measure.py times right after its upload reads the device;
      # nginx's file is warm. Read it once, untimed, then time the Range and
      # the whole file warm (download_warm_<size>, against nginx's download).
      curl -fsS -o /dev/null -H "Authorization: Bearer $TOKEN" "$url/api/files/$id/download" \
        || log "$label: warm-up read failed"
      range "$label" "$url/api/files/$id/download" "$SERVER_PID" "Authorization: Bearer $TOKEN"
      range "$label" "$url/api/files/$id/download" "$SERVER_PID" "Authorization: Bearer $TOKEN" \
        0 "$SIZE_B" "download_warm_$SIZE"
    else
      log "$label: upload for the Range figures failed"
    fi
  fi
  if [ "$full" = 1 ] && want tus; then
    local tus=(--mode tus --upload-url "$url/api/uploads/" --download-url '{location}'
               -H "Authorization: Bearer $TOKEN" --server-pid "$SERVER_PID")
    # CONC tus uploads at once (one PATCH each), beside tus-node's batch
    measure "$label-tus" "${tus[@]}"
    measure "$label-tus-8MiB" "${tus[@]}" --skip conc --chunk-size 8MiB
  fi
  kill -0 "$SERVER_PID" 2>/dev/null || log "$label: stowage died during the round"
  stop_pid "$SERVER_PID"; SERVER_PID=
  grep -E ' (ERROR|WARN) ' "$dir.server.log" | tail -5 >&2 || true
  rm -rf "$dir" "$dir.server.log"
}

s3_round() {
  [ "$HAVE_GARAGE" = 1 ] || return 0
  local dir=$WORK/stowage-s3-$ROUND
  # shellcheck disable=SC2046
  if stowage_start stowage-s3 "$dir" "$PORT" $(garage_stowage_env); then
    local url=http://127.0.0.1:$PORT
    measure stowage-s3 --upload-url "$url/api/files/upload" --field file \
      --download-url "$url/api/files/{id}/download" -H "Authorization: Bearer $TOKEN" \
      --server-pid "$SERVER_PID"
    stop_pid "$SERVER_PID"; SERVER_PID=
    rm -rf "$dir" "$dir.server.log"
  fi
  if [ "$HAVE_BOTO3" = 1 ]; then
    local gp=()
    for p in "${GARAGE_PIDS[@]}"; do gp+=(--server-pid "$p"); done
    AWS_ACCESS_KEY_ID=$GARAGE_KEY_ID AWS_SECRET_ACCESS_KEY=$GARAGE_SECRET \
      "$PY" "$HERE/lib/xfer.py" s3 --peers-dir "$PEERS_RUN" --label boto3-garage \
      --endpoint "$GARAGE_ENDPOINT" --bucket "$GARAGE_BUCKET" --data-dir "$SRC" \
      --size "$SIZE_B" --concurrency "$CONC" --conc-size "$CONC_SIZE_B" --reps "$REPS" \
      "${gp[@]}" --out "$RAW" || log "boto3-garage: some measurements failed"
  fi
}

# ------------------------------------------------------------------ rounds
if want s3 && [ "$HAVE_GARAGE" = 1 ]; then
  garage_start "$WORK/garage" "$PORT_GARAGE" || { log "garage did not start: s3 skipped"; HAVE_GARAGE=0; }
fi
T0=$(date +%s)
[ "$ROUNDS_WANTED" = 1 ] || ROUNDS=0
for ROUND in $(seq 1 "$ROUNDS"); do
  RAW=$OUT/round-$ROUND.raw.tsv
  log "round $ROUND of $ROUNDS"
  run_peers
  if want download; then nginx_range; fi
  stowage_round stowage "$BIN" 1
  if [ -n "$BASE_BIN" ]; then stowage_round stowage-before "$BASE_BIN" 0; fi
  if want s3; then s3_round; fi
  log "round $ROUND done after $(( $(date +%s) - T0 )) s"
done

# ------------------------------------------------------------------ listing
if want list; then
  for rows in $LIST_ROWS; do
    log "list: $rows files of one user, SQLite and PostgreSQL (bench/list/run.sh)"
    ROWS=$rows N=$LIST_N BIN=$BIN SKIP=build RESULTS_DIR=$OUT NAME=list-$rows \
      PORT=$((PORT + 1)) WORK=$WORK/list-$rows PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432} \
      "$HERE/list/run.sh" || log "list: $rows rows failed (see run.log)"
  done
fi

# ------------------------------------------------------------------ table
"$PY" "$HERE/lib/table.py" "$OUT" --size "$SIZE" --conc "$CONC" --conc-size "$CONC_SIZE" \
  --range-size "$RANGE_NAME" \
  --title "Run of $(date -u -Iseconds), stowage $(git rev-parse --short HEAD), $ROUNDS rounds × $REPS; \`bench/run.sh\` (QUICK=$QUICK); raw figures in ${OUT#"$ROOT"/}/"
log "results: ${OUT#"$ROOT"/}/ (table.md, summary.tsv, raw.tsv, versions.txt, run.log)"

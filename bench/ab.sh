#!/usr/bin/env bash
# Two (or more) builds of stowage, alternated round by round, on what
# bench/run.sh's BASE_BIN leaves out: in the order bench/run.sh runs them on
# one server, a SIZE multipart upload, CONC multipart uploads at once, a SIZE
# tus upload (one PATCH) and CONC tus uploads at once. No peers: this compares
# builds with each other, not with other systems.
#
#   bench/ab.sh OLD_BIN NEW_BIN            # ROUNDS=3
#   ROUNDS=2 SIZE=256MiB bench/ab.sh A B C
#
# Each round starts each binary afresh (SQLite, local volume in a scratch
# dir) and measures it with ../shared/peers/measure.py (through the writable
# copy bench/run.sh keeps in PEERS_RUN, which has tus-js-client installed;
# run bench/run.sh once first). Peak RSS is measure.py's: the high-water mark
# after resetting it, so memory kept from an earlier batch on the same server
# counts, as it does in bench/run.sh. Writes RESULTS (bench/results/ab-<time>.tsv,
# measure.py's raw format, one row per round) and, beside it, measure.py's
# summary (median, min, max per build and metric), which it prints.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
cd "$ROOT"
LOG_TAG=ab
. "$HERE/lib/common.sh"

[ $# -ge 2 ] || { echo "usage: $0 BIN BIN [BIN ...]" >&2; exit 2; }
# a build's figures are labelled with its file name: names must differ
[ "$(for b in "$@"; do basename "$b"; done | sort -u | wc -l)" = $# ] \
  || { echo "$0: give each build its own file name (copy them apart)" >&2; exit 2; }
ROUNDS=${ROUNDS:-3}
SIZE=${SIZE:-1GiB}
CONC=${CONC:-16}
CONC_SIZE=${CONC_SIZE:-64MiB}
PORT=${PORT:-18396}
PY=${PYTHON:-python3}
PEERS_RUN=${PEERS_RUN:-/var/tmp/stowage-bench-peers}
MEASURE=$PEERS_RUN/measure.py
RESULTS=${RESULTS:-$HERE/results/ab-$(date -u +%Y-%m-%d-%H%M%S).tsv}
[ -f "$MEASURE" ] || { log "no $MEASURE: run bench/run.sh once (it copies the peers there)"; exit 1; }
WORK=$(mktemp -d /tmp/stowage-ab.XXXXXX)
SERVER_PID=
trap 'stop_pid "$SERVER_PID"; rm -rf "$WORK"' EXIT

SRC=$WORK/src
"$PY" "$HERE/api/mkdata.py" "$SRC" "$SIZE" "$CONC" "$CONC_SIZE"
mkdir -p "$(dirname "$RESULTS")"
for r in $(seq 1 "$ROUNDS"); do
  for bin in "$@"; do
    label=$(basename "$bin")
    BIN=$bin stowage_start "$label (round $r)" "$WORK/srv" "$PORT" || { log "$label: skipped"; continue; }
    common=(--reps 1 --size "$SIZE" --concurrency "$CONC" --conc-size "$CONC_SIZE" --data-dir "$SRC"
            --tmp "$WORK/measure" --timeout 900 --out "$RESULTS" -H "Authorization: Bearer $TOKEN"
            --server-pid "$SERVER_PID")
    url=http://127.0.0.1:$PORT
    "$PY" "$MEASURE" http --label "$label" --upload-url "$url/api/files/upload" --field file \
      --download-url "$url/api/files/{id}/download" --skip download "${common[@]}" \
      || log "$label: some measurements failed"
    "$PY" "$MEASURE" http --label "$label-tus" --mode tus --upload-url "$url/api/uploads/" \
      --download-url '{location}' --skip download "${common[@]}" \
      || log "$label-tus: some measurements failed"
    stop_pid "$SERVER_PID"; SERVER_PID=
    rm -rf "$WORK/srv" "$WORK/srv.server.log"
  done
done

# medians per build and metric (one row per round in RESULTS)
"$PY" "$MEASURE" summarize "$RESULTS" --out "${RESULTS%.tsv}.summary.tsv"
column -t -s $'\t' "${RESULTS%.tsv}.summary.tsv"
log "raw figures: $RESULTS; summary: ${RESULTS%.tsv}.summary.tsv"

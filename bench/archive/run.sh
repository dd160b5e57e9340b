#!/usr/bin/env bash
# Peak memory of a package archive (GET /api/files/archive) for a package of
# about 3 GiB. Run `bench/archive/run.sh --help` for the knobs.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

usage() {
  cat <<'TXT'
bench/archive/run.sh: uploads a package of FILES files of FILE_MIB MiB each
(default 2 x 1536 MiB = 3 GiB) through the API on behalf of one user, restarts
the server (so its memory high-water mark starts fresh), downloads the
package's ZIP once to /dev/null and reports the server's peak RSS during the
download (VmRSS sampled every 50 ms, and VmHWM at the end), the archive's
size and the time taken.

  bench/archive/run.sh                       # release build, then measure
  PROFILE=debug SKIP_BUILD=1 bench/archive/run.sh
  FILES=3 FILE_MIB=1024 VERIFY=1 bench/archive/run.sh   # also unzip-check

Needs: cargo, curl, python3 (standard library), a Linux /proc, and about
twice the package size of free disk (sources are sparse files; the stored
blobs are not). VERIFY=1 also writes the archive and checks every entry's
CRC with Python's zipfile.
TXT
}
[[ "${1:-}" == "--help" || "${1:-}" == "-h" ]] && { usage; exit 0; }

PROFILE=${PROFILE:-release}
FILES=${FILES:-2}
FILE_MIB=${FILE_MIB:-1536}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
if [[ -z "${SKIP_BUILD:-}" ]]; then
  if [[ "$PROFILE" == release ]]; then
    (cd "$ROOT" && cargo build --release --locked --bin stowage)
  else
    (cd "$ROOT" && cargo build --locked --bin stowage)
  fi
fi
BIN="$TARGET/$PROFILE/stowage"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/stowage-archive-bench.XXXXXX")
PID=
cleanup() {
  [[ -n "$PID" ]] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
ADMIN=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
BASE="http://127.0.0.1:$PORT"
USER_ID=bench-archive

export STOWAGE_BIND=127.0.0.1:$PORT
export STOWAGE_DATA_DIR=$WORK/data
export STOWAGE_ADMIN_TOKEN=$ADMIN
export STOWAGE_DEFAULT_QUOTA=$(( (FILES * FILE_MIB + 64) * 1024 * 1024 ))
export RUST_LOG=warn

start() {
  "$BIN" serve >"$WORK/server.log" 2>&1 &
  PID=$!
  for _ in $(seq 1 200); do
    curl -fsS "$BASE/healthz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "server did not start:"; cat "$WORK/server.log"; exit 1
}
stop() { kill "$PID"; wait "$PID" 2>/dev/null || true; PID=; }

start
for i in $(seq 1 "$FILES"); do
  f="$WORK/src-$i.png"
  # A PNG signature, then zeros: sniffs as an image, costs no disk.
  printf '\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR' >"$f"
  truncate -s "${FILE_MIB}M" "$f"
  curl -fsS -o /dev/null -H "Authorization: Bearer $ADMIN" \
    -H "Stowage-On-Behalf-Of: $USER_ID" \
    -F "file=@$f;filename=part-$i.png" -F package_name=bench "$BASE/api/files/upload"
  rm -f "$f"
done
stop

start
OUT=/dev/null
[[ -n "${VERIFY:-}" ]] && OUT="$WORK/bench.zip"
python3 - "$PID" "$BASE" "$ADMIN" "$USER_ID" "$OUT" <<'PY'
import json, subprocess, sys, threading, time
pid, base, admin, user, out = sys.argv[1:]
def status(field):
    with open(f"/proc/{pid}/status") as s:
        for line in s:
            if line.startswith(field + ":"):
                return int(line.split()[1])  # KiB
peak = [status("VmRSS")]
before = peak[0]
done = threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], status("VmRSS"))
        time.sleep(0.05)
t = threading.Thread(target=sample); t.start()
started = time.time()
r = subprocess.run(["curl", "-fsS", "-o", out, "-w", "%{size_download}",
                    "-H", f"Authorization: Bearer {admin}", "-H", f"Stowage-On-Behalf-Of: {user}",
                    f"{base}/api/files/archive?package_name=bench"], capture_output=True, text=True, check=True)
secs = time.time() - started
done.set(); t.join()
size = int(r.stdout)
print(json.dumps({
    "archive_bytes": size,
    "seconds": round(secs, 1),
    "mib_per_s": round(size / 1048576 / secs, 1),
    "rss_before_mib": round(before / 1024, 1),
    "peak_rss_mib": round(peak[0] / 1024, 1),
    "vm_hwm_mib": round(status("VmHWM") / 1024, 1),
}))
PY
if [[ -n "${VERIFY:-}" ]]; then
  python3 -c 'import sys, zipfile
z = zipfile.ZipFile(sys.argv[1]); assert z.testzip() is None
print("verified:", [(i.filename, i.file_size) for i in z.infolist()])' "$WORK/bench.zip"
fi

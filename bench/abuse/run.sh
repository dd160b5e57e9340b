#!/usr/bin/env bash
# Abuse benchmark of stowage (SPEC §9: no client can hurt anyone else).
# Run `bench/abuse/run.sh --help` for what it does and its knobs.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)

usage() {
  cat <<'EOF'
bench/abuse/run.sh: each SPEC §9 attack against a release build while a
well-behaved client keeps uploading and listing. One command, about 6-8 min.

  bench/abuse/run.sh                         # build, then every attack
  ATTACKS=slowloris,tags bench/abuse/run.sh  # some of them
  DURATION=5 SKIP_BUILD=1 bench/abuse/run.sh # shorter, reuse the binary
  STRICT=1 bench/abuse/run.sh                # exit 1 when a target is missed

Needs: cargo, python3 (standard library only), openssl, a Linux /proc.

What it does:
 1. cargo build --release --locked --bin stowage (into $CARGO_TARGET_DIR,
    default the repository's target/).
 2. Makes an RSA key pair with openssl; the script signs RS256 session tokens
    itself (good user, attacker, hostile `sub`s); an admin token is random.
 3. Per attack, a fresh `stowage serve` on a free 127.0.0.1 port, SQLite and
    files in a temporary data dir, real authentication (STOWAGE_JWT_PUBLIC_KEY;
    a JWKS endpoint the script serves for the jwks attack), default limits.
 4. Baseline: the good client alone for DURATION s: 1 MiB multipart uploads and
    `GET /api/files?limit=50`, alternating, one at a time over one keep-alive
    connection, GOOD_RPS requests a second, from 127.0.0.2. Then the same
    while the attack runs, from 127.0.1.x (other addresses, as other hosts
    would be, so per-IP limits tell them apart).
 5. Measures the server's peak RSS (VmRSS every 100 ms), CPU seconds
    (utime+stime), open fds; the good client's p50/p99 and errors (any non-2xx
    or failure); and what happened to the attack. An attack is stopped when the
    server's RSS passes RSS_CAP_MIB (reported as exceeded).
 6. Prints a markdown table and writes bench/abuse/results/abuse-<time>.json
    (raw) and .md (the table).

Attacks (ATTACKS, comma list; default all, in this order):
  preamble      chunked multipart whose preamble never reaches a boundary
  part-headers  chunked multipart whose part headers never end
  tags          PUT /api/files/<uuid>/tags with as many distinct tags as the
                JSON body limit allows (2 MiB, then the JSON limit on 413),
                TAG_PARALLEL at once
  slowloris     SLOW_CONNS connections over SLOW_IPS addresses, each sends
                half a header line, then a byte every SLOW_DRIP s
  idle          IDLE_CONNS connections over IDLE_IPS addresses: half made one
                request and stay silent, half never send a byte
  flood         FLOOD_CONNS connections from one address (past the per-IP
                cap), each a keep-alive GET /healthz held open, then one more
                every 100 ms
  tus-flood     POST /api/uploads with Upload-Length: 1, as fast as it goes
  readyz        GET /readyz from READYZ_PARALLEL connections, as fast as it goes
  admin-cookie  the admin token in the __session cookie (must be 401; the
                same token as Bearer is the control, 200)
  hostile-sub   validly signed tokens whose sub has NUL, U+001F, U+007F, is
                empty or 256 bytes (all 401), and a valid 255-byte sub of '!'
                (upload must be 201, every name under the storage root
                <= 200 bytes)
  jwks          tokens with unknown kids while the JWKS endpoint is down (it
                hangs JWKS_HANG s, then 503); starts once the refresh interval
                since the good client's fetch has passed

Targets (per attack): peak RSS <= RSS_TARGET_MIB (64); good client p99 <=
P99_FACTOR (3) x its baseline p99 and 0 errors; the attack repelled:
  body attacks: every attempt answered or closed within REPEL_SECS (5)
  tags: every request answered 4xx within TAG_ANSWER_SECS (1)
  slowloris: every connection closed within the header timeout + GRACE
  idle: every connection closed within the keep-alive timeout + GRACE
  flood: at most the per-IP cap served and held, the rest refused (a close or
    a non-200 answer) within FLOOD_REFUSE_SECS (2)
  tus-flood: at most STOWAGE_MAX_UNFINISHED_UPLOADS created, the rest 429
  readyz: only 200 (or 429) answers
  jwks: at most one JWKS fetch per refresh interval during the outage
Limits are read from the same STOWAGE_* variables the server reads (SPEC
defaults when unset); STOWAGE_* limits in the environment are passed to the
server, e.g. STOWAGE_KEEPALIVE_TIMEOUT_SECS=5 for a shorter idle run.

The run takes DURATION (baseline) + DURATION (attack) per attack, plus the
idle attack's keep-alive timeout and the jwks attack's refresh interval:
about 7 minutes with the defaults. Results in bench/abuse/results/ are meant
to be committed when they are the recorded run of docs/benchmarks.md.

Knobs (env): DURATION (10) GOOD_RPS (20) GOOD_SIZE (1048576) REQ_TIMEOUT (10)
  RSS_TARGET_MIB (64) P99_FACTOR (3) RSS_CAP_MIB (1024) GRACE (5)
  OPEN_RATE (500 connections/s) STREAM_CONNS (2) STREAM_RATE_MIB (0 = no cap,
  per connection) REPEL_SECS (5) TAG_BODY_BYTES (2 MiB - 64) TAG_PARALLEL (4)
  TAG_ANSWER_SECS (1) SLOW_CONNS (1100) SLOW_IPS (20) SLOW_DRIP (2)
  IDLE_CONNS (200) IDLE_IPS (4) FLOOD_CONNS (256) FLOOD_REFUSE_SECS (2)
  TUS_PARALLEL (2) READYZ_PARALLEL (8) PROBE_RPS (20) JWKS_PARALLEL (8)
  JWKS_HANG (2) QUIET_MAX (300: seconds, over the run, to wait for the
  machine to be less than QUIET_BUSY (30) % busy before each baseline)
  SERVER_BACKTRACE (0: RUST_BACKTRACE is not passed to the server, as
  deployed) STRICT (0) SKIP_BUILD (0) BIN (the built binary)
  CARGO_TARGET_DIR (target/) WORK (/var/tmp/stowage-abuse-<pid>, removed
  unless KEEP=1) RESULTS_DIR (bench/abuse/results) RUST_LOG (info)
EOF
}

case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  "") ;;
  *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
esac

for tool in python3 openssl; do
  command -v "$tool" >/dev/null || { echo "$tool is needed" >&2; exit 1; }
done
[ -r /proc/self/status ] || { echo "needs Linux /proc" >&2; exit 1; }

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [ "${SKIP_BUILD:-0}" != 1 ] && [ -z "${BIN:-}" ]; then
  echo "[abuse] cargo build --release --locked --bin stowage (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)" >&2
  (cd "$ROOT" && cargo build --release --locked --bin stowage)
fi
export BIN=${BIN:-$CARGO_TARGET_DIR/release/stowage}
[ -x "$BIN" ] || { echo "no binary at $BIN" >&2; exit 1; }

# 1,100 slowloris connections plus the server's own need more than the
# usual 1024 descriptors (both processes inherit this)
hard=$(ulimit -Hn)
if [ "$hard" = unlimited ] || [ "$hard" -ge 8192 ]; then ulimit -n 8192; else ulimit -n "$hard"; fi

exec python3 "$HERE/abuse.py" run

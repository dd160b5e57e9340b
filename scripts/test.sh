#!/usr/bin/env bash
# Installs whatever is missing and runs every check and test of stowage.
#
#   scripts/test.sh            # everything (what CI runs)
#   SKIP_E2E=1 scripts/test.sh # without the browser tests
#
# Idempotent: system packages are installed only when missing, npm ci runs
# only when a lockfile changed, cargo reuses its cache. Needs Debian (apt) and
# root or sudo for first-time package installs.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

log() { printf '\n==> %s\n' "$*"; }
SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then SUDO=sudo; fi
# Throwaway database servers started below stop when the script exits.
CLEANUP=()
cleanup() { local c; for c in "${CLEANUP[@]}"; do eval "$c" || true; done; }
trap cleanup EXIT

# --- system packages ---------------------------------------------------------
need=()
command -v ffmpeg >/dev/null || need+=(ffmpeg)
command -v ffprobe >/dev/null || need+=(ffmpeg)
command -v chromium >/dev/null || need+=(chromium)
command -v clamd >/dev/null || need+=(clamav-daemon)
command -v node >/dev/null || need+=(nodejs npm)
command -v pg_isready >/dev/null || need+=(postgresql-client)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
if [ ${#need[@]} -gt 0 ]; then
  log "installing system packages: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# --- PostgreSQL ----------------------------------------------------------------
# The suite creates and drops its own database on the server at
# STOWAGE_TEST_PG_URL (default postgres://postgres@127.0.0.1:5432/postgres).
# When none answers, a throwaway cluster is started for this run.
export STOWAGE_TEST_PG_URL="${STOWAGE_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
  log "no PostgreSQL on 127.0.0.1:5432; starting a throwaway cluster"
  if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
  fi
  PGBIN=$(dirname "$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")
  PGDIR=$(mktemp -d /tmp/stowage-pg.XXXXXX)
  PGPORT=54329
  RUNAS=()
  if [ "$(id -u)" = 0 ]; then chown postgres "$PGDIR"; RUNAS=(runuser -u postgres --); fi
  "${RUNAS[@]}" "$PGBIN/initdb" -D "$PGDIR/data" -U postgres -A trust >/dev/null
  "${RUNAS[@]}" "$PGBIN/pg_ctl" -D "$PGDIR/data" -o "-p $PGPORT -k $PGDIR -c listen_addresses=127.0.0.1" -l "$PGDIR/log" -w start >/dev/null
  CLEANUP+=('"${RUNAS[@]}" "$PGBIN/pg_ctl" -D "$PGDIR/data" -m fast stop >/dev/null 2>&1; rm -rf "$PGDIR"')
  export STOWAGE_TEST_PG_URL="postgres://postgres@127.0.0.1:$PGPORT/postgres"
fi

# --- MySQL/MariaDB -------------------------------------------------------------
# Likewise on the server at STOWAGE_TEST_MYSQL_URL (default
# mysql://root@127.0.0.1:3306/, user root without a password). When nothing
# answers at its host and port, a throwaway MariaDB (Debian's mariadb-server)
# is started for this run, with its own data directory, port and socket.
export STOWAGE_TEST_MYSQL_URL="${STOWAGE_TEST_MYSQL_URL:-mysql://root@127.0.0.1:3306/}"
my_hostport=${STOWAGE_TEST_MYSQL_URL#*://}; my_hostport=${my_hostport#*@}; my_hostport=${my_hostport%%/*}
my_host=${my_hostport%%:*}; my_port=${my_hostport##*:}; [ "$my_port" = "$my_hostport" ] && my_port=3306
tcp_answers() { timeout 2 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }
if ! tcp_answers "$my_host" "$my_port"; then
  log "no MySQL/MariaDB on $my_host:$my_port; starting a throwaway MariaDB"
  if ! command -v mariadb-install-db >/dev/null || ! [ -x /usr/sbin/mariadbd ]; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mariadb-server >/dev/null
  fi
  MYDIR=$(mktemp -d /tmp/stowage-my.XXXXXX)
  MYPORT=33069
  MYUSER=()
  if [ "$(id -u)" = 0 ]; then chown mysql "$MYDIR"; MYUSER=(--user=mysql); fi
  mariadb-install-db --no-defaults --datadir="$MYDIR/data" "${MYUSER[@]}" \
    --auth-root-authentication-method=normal --skip-test-db >"$MYDIR/install.log" 2>&1
  /usr/sbin/mariadbd --no-defaults --datadir="$MYDIR/data" "${MYUSER[@]}" \
    --port=$MYPORT --bind-address=127.0.0.1 --socket="$MYDIR/mysqld.sock" \
    --pid-file="$MYDIR/mysqld.pid" --log-error="$MYDIR/error.log" --skip-log-bin \
    --innodb-buffer-pool-size=128M --max-connections=500 &
  MYPID=$!
  CLEANUP+=('kill "$MYPID" 2>/dev/null; wait "$MYPID" 2>/dev/null; rm -rf "$MYDIR"')
  for _ in $(seq 60); do tcp_answers 127.0.0.1 $MYPORT && break; sleep 0.5; done
  tcp_answers 127.0.0.1 $MYPORT || { cat "$MYDIR/error.log" >&2; exit 1; }
  export STOWAGE_TEST_MYSQL_URL="mysql://root@127.0.0.1:$MYPORT/"
fi

# --- JavaScript dependencies (lockfiles pinned) ------------------------------------
npm_ci() { # dir
  local dir=$1 stamp="$1/node_modules/.lock-stamp"
  if [ ! -f "$stamp" ] || ! cmp -s "$dir/package-lock.json" "$stamp"; then
    log "npm ci in $dir"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    cp "$dir/package-lock.json" "$stamp"
  fi
}
[ -f web/package-lock.json ] && npm_ci web
[ -x tests/clients/install.sh ] && tests/clients/install.sh

# --- Garage (the object store the S3 tests run against) --------------------------
# Built once from crates.io at a pinned version and cached outside the clone;
# the first build takes about 20 minutes on 2 cores, later runs reuse it.
GARAGE_VERSION=2.5.0
GARAGE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/stowage/garage-$GARAGE_VERSION"
if [ ! -x "$GARAGE_ROOT/bin/garage" ]; then
  log "building Garage $GARAGE_VERSION (once; cached in $GARAGE_ROOT)"
  GARAGE_BUILD="${TMPDIR:-/tmp}/stowage-garage-build"
  cargo install garage --locked --version "$GARAGE_VERSION" \
    --no-default-features --features bundled-libs,lmdb \
    --root "$GARAGE_ROOT" --target-dir "$GARAGE_BUILD"
  rm -rf "$GARAGE_BUILD"
fi
export STOWAGE_GARAGE_BIN="$GARAGE_ROOT/bin/garage"

# --- Rust: format, lint, build, test -------------------------------------------
export STOWAGE_REQUIRE_FFMPEG=1 STOWAGE_REQUIRE_CLAMD=1 STOWAGE_REQUIRE_GARAGE=1 STOWAGE_REQUIRE_NGINX=1
log "cargo fmt --check"
cargo fmt --all -- --check
log "layer check"
scripts/check-layers.sh
log "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
if [ -f web/package.json ]; then
  log "web: generated API types, typecheck, unit tests, build (dist must match the sources)"
  # src/lib/openapi.ts must be what openapi-typescript makes of the committed
  # src/lib/openapi.json; that copy is compared with the server's live
  # /openapi.json by `cargo test` (tests/api/openapi.rs).
  (cd web && npm run --silent check:api && npm run --silent typecheck && npm test --silent && npm run --silent build)
  if [ -n "$(git status --porcelain -- web/dist)" ]; then
    echo "web/dist is out of date with web/src: run 'cd web && npm run build' and commit web/dist" >&2
    git status --porcelain -- web/dist >&2
    exit 1
  fi
fi
log "cargo test"
cargo build --locked --bins
cargo test --workspace --locked 2>&1 | tee /tmp/stowage-cargo-test.log
grep -q "test result: FAILED" /tmp/stowage-cargo-test.log && exit 1

if [ -f web/e2e/run.mjs ] && [ -z "${SKIP_E2E:-}" ]; then
  log "web: end-to-end tests in Chromium"
  (cd web && STOWAGE_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/stowage" node e2e/run.mjs)
  log "web: the npm package installed into a Vite + React host app, in Chromium"
  (cd web && STOWAGE_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/stowage" node e2e/package.mjs)
fi
log "all checks passed"

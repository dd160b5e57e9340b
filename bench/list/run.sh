#!/usr/bin/env bash
# Listing and search benchmark: ROWS files of one user, seeded straight into
# the database (bench/api/seed_sqlite.py, bench/api/seed_postgres.sql: the
# same rows on both engines), then the listing mix of list_mix.py through
# the HTTP API (every sort and order with cursor pages, q= that matches 10 %,
# one name, none, and a two-character q=), p50/p99 per kind, on SQLite and
# PostgreSQL, and on MariaDB with MYSQL=1. Before measuring, the query plans of the listing's SQL are
# printed (EXPLAIN QUERY PLAN / EXPLAIN) and checked: each sort must walk its
# per-user index without sorting, and q= must use the trigram index.
#
#   bench/list/run.sh                    # 100,000 rows, release build
#   ROWS=1000000 bench/list/run.sh
#   BIN=/path/to/stowage SKIP=build bench/list/run.sh
#
# Env: ROWS (100000) N (rounds of the mix, 100) PORT (18191)
#   BIN (target/release/stowage under CARGO_TARGET_DIR or ./target)
#   SKIP (comma list of build,sqlite,pg,mysql,plans) PG_URL (postgres://postgres@127.0.0.1:5432)
#   MYSQL (1: also MariaDB) MY_URL (mysql://root@127.0.0.1:3306; the mysql client as root
#   on MY_HOST/MY_PORT, 127.0.0.1/3306, seeds it)
#   LABEL (stowage) RESULTS_DIR (bench/list/results) WORK (/var/tmp/stowage-list-<pid>)
#   NAME (list-<date>)
# Writes RESULTS_DIR/NAME.{tsv,raw.tsv,plans.txt,versions.txt}; bench/run.sh
# (ONLY=list) runs this for each of its LIST_ROWS with NAME=list-<rows>.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
cd "$ROOT"

ROWS=${ROWS:-100000}
N=${N:-100}
PORT=${PORT:-18191}
SKIP=${SKIP:-}
PG_URL=${PG_URL:-postgres://postgres@127.0.0.1:5432}
PG_DB=stowage_list_bench_$$
MYSQL=${MYSQL:-}
MY_URL=${MY_URL:-mysql://root@127.0.0.1:3306}
MY_HOST=${MY_HOST:-127.0.0.1}
MY_PORT=${MY_PORT:-3306}
MY_DB=stowage_list_bench_$$
LABEL=${LABEL:-stowage}
BIN=${BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/stowage}
PY=${PYTHON:-python3}
QUOTA=1099511627776
ADMIN_TOKEN=bench-admin-$$-$RANDOM
RESULTS=${RESULTS_DIR:-$HERE/results}
WORK=${WORK:-/var/tmp/stowage-list-$$}
mkdir -p "$RESULTS" "$WORK"
NAME=${NAME:-list-$(date +%Y-%m-%d-%H%M%S)}
SUM=$RESULTS/$NAME.tsv
RAW=$RESULTS/$NAME.raw.tsv
PLANS=$RESULTS/$NAME.plans.txt
VERSIONS=$RESULTS/$NAME.versions.txt

skip() { [[ ",$SKIP," == *",$1,"* ]]; }
log() { printf '[bench-list %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

SERVER_PID=
PG_CREATED=
MY_CREATED=
my() { mysql -h "$MY_HOST" -P "$MY_PORT" -uroot "$@"; }
stop_server() {
  local pid=${SERVER_PID:-}
  SERVER_PID=
  [ -n "$pid" ] || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
on_exit() {
  local rc=$?
  stop_server
  [ -n "$PG_CREATED" ] && psql "$PG_URL/postgres" -qX -c "DROP DATABASE IF EXISTS $PG_DB" >/dev/null 2>&1
  [ -n "$MY_CREATED" ] && my -e "DROP DATABASE IF EXISTS $MY_DB" >/dev/null 2>&1
  rm -rf "$WORK"
  exit $rc
}
trap on_exit EXIT
trap 'exit 130' INT TERM

if ! skip build; then
  log "cargo build --release --bin stowage"
  cargo build --release --locked --bin stowage
fi
[ -x "$BIN" ] || { log "$BIN missing (set BIN)"; exit 1; }

{
  echo "date: $(date -Iseconds)"
  echo "host: $(uname -srm); $(nproc) cores; $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
  echo "label: $LABEL; binary: $BIN ($("$BIN" --version 2>/dev/null || echo '?'))"
  echo "tree: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src migrations || echo ' + uncommitted changes')"
  echo "rows: $ROWS; rounds: $N"
  echo "postgresql: $(psql "$PG_URL/postgres" -qXAt -c 'show server_version' 2>/dev/null || echo unavailable)"
  if [ -n "$MYSQL" ]; then echo "mysql: $(my -N -e 'SELECT VERSION()' 2>/dev/null || echo unavailable)"; fi
} >"$VERSIONS"

migrate() {
  (cd "$WORK" && env -u DATABASE_URL STOWAGE_DATA_DIR="$WORK/migrate" STOWAGE_DATABASE_URL="$1" \
    STOWAGE_STORAGE_ROOT="$WORK/migrate/users" "$BIN" migrate) >&2
}

start_server() {  # NAME DB_URL: sets SERVER_PID and TOKEN
  local dir=$WORK/$1
  mkdir -p "$dir"
  (cd "$dir" && exec env -u STOWAGE_JWT_PUBLIC_KEY -u CLERK_JWT_KEY -u STOWAGE_JWKS_URL \
    -u DATABASE_URL -u PORT -u USER_STORAGE_ROOT -u STOWAGE_CLAMD -u STOWAGE_BLOB_STORE \
    STOWAGE_BIND="127.0.0.1:$PORT" STOWAGE_DATA_DIR="$dir" STOWAGE_DATABASE_URL="$2" \
    STOWAGE_STORAGE_ROOT="$dir/users" STOWAGE_ADMIN_TOKEN="$ADMIN_TOKEN" \
    STOWAGE_RATE_LIMIT_USER=100000 STOWAGE_RATE_LIMIT_IP=100000 RUST_LOG=${RUST_LOG:-warn} \
    "$BIN" serve) >"$WORK/$1.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 300); do
    curl -fsS -o /dev/null "http://127.0.0.1:$PORT/healthz" 2>/dev/null && break
    kill -0 "$SERVER_PID" 2>/dev/null || { tail -20 "$WORK/$1.log" >&2; return 1; }
    sleep 0.1
  done
  TOKEN=$(curl -fsS -X POST "http://127.0.0.1:$PORT/api/dev/login" -H 'content-type: application/json' \
    -d '{"user_id":"bench"}' | $PY -c 'import json,sys; print(json.load(sys.stdin)["token"])')
  log "$1: stowage up (pid $SERVER_PID)"
}

# The SQL of list_files (src/meta/sql/files.rs, search.rs), spelled out for EXPLAIN (user
# 'bench', limit 51, a cursor for the keyset comparisons).
SORT_COLS="upload_date file_name file_size"
sqlite_plans() {  # DB_PATH
  local db=$1 bad=0 col dir cmp plan
  for col in $SORT_COLS; do
    for dir in ASC DESC; do
      cmp='>'; [ $dir = DESC ] && cmp='<'
      for extra in "" " AND ($col, id) $cmp ((SELECT $col FROM user_files LIMIT 1), x'00')" \
                   " AND lower(file_name) LIKE '%beach%' ESCAPE '!'"; do
        plan=$($PY - "$db" <<PYEOF
import sqlite3, sys
con = sqlite3.connect(sys.argv[1])
sql = "SELECT id FROM user_files WHERE user_id = 'bench'$extra ORDER BY $col $dir, id $dir LIMIT 51"
print(sql)
for r in con.execute("EXPLAIN QUERY PLAN " + sql):
    print("   ", r[3])
PYEOF
)
        echo "$plan"
        if echo "$plan" | grep -q 'TEMP B-TREE' || ! echo "$plan" | grep -q "idx_user_files_user_"; then
          echo "    ^^^ NOT index-backed"; bad=1
        fi
      done
    done
  done
  plan=$($PY - "$db" <<'PYEOF'
import sqlite3, sys
con = sqlite3.connect(sys.argv[1])
sql = ("SELECT user_files.id FROM (SELECT m.file_id AS hit FROM user_file_names_fts "
       "JOIN user_file_names m ON m.seq = user_file_names_fts.rowid "
       "WHERE user_file_names_fts MATCH '\"nomatch\"' AND m.user_id = 'bench') AS hits "
       "CROSS JOIN user_files ON user_files.id = hits.hit WHERE user_id = 'bench' "
       "ORDER BY upload_date DESC, id DESC LIMIT 51")
print(sql)
for r in con.execute("EXPLAIN QUERY PLAN " + sql):
    print("   ", r[3])
PYEOF
)
  echo "$plan"
  echo "$plan" | grep -q 'VIRTUAL TABLE INDEX' || { echo "    ^^^ trigram index not used"; bad=1; }
  return $bad
}
pg_plans() {  # DB_URL
  local db=$1 bad=0 col dir cmp plan
  for col in $SORT_COLS; do
    for dir in ASC DESC; do
      cmp='>'; [ $dir = DESC ] && cmp='<'
      for extra in "" " AND ($col, id) $cmp ((SELECT $col FROM user_files LIMIT 1), '00000000-0000-0000-0000-000000000000')"; do
        local sql="SELECT id FROM user_files WHERE user_id = 'bench'$extra ORDER BY $col $dir, id $dir LIMIT 51"
        plan=$(psql "$db" -qXAt -c "EXPLAIN $sql")
        printf '%s\n%s\n' "$sql" "$(echo "$plan" | sed 's/^/    /')"
        # A Sort means the index was not used for the order (migration
        # 0011 dropped the global upload_date index the planner used to take).
        if echo "$plan" | grep -Eq '(^|-> *)Sort ' || ! echo "$plan" | grep -q "Index"; then
          echo "    ^^^ NOT index-backed"; bad=1
        fi
      done
    done
  done
  for q in nomatch 000123; do
    local sql="SELECT id FROM user_files WHERE user_id = 'bench' AND lower(file_name) LIKE '%$q%' ESCAPE '!' ORDER BY upload_date DESC, id DESC LIMIT 51"
    plan=$(psql "$db" -qXAt -c "EXPLAIN $sql")
    printf '%s\n%s\n' "$sql" "$(echo "$plan" | sed 's/^/    /')"
    echo "$plan" | grep -q 'idx_user_files_name_trgm' || { echo "    ^^^ trigram index not used"; bad=1; }
  done
  local sql="SELECT id FROM user_files WHERE user_id = 'bench' AND lower(file_name) LIKE '%beach%' ESCAPE '!' ORDER BY upload_date DESC, id DESC LIMIT 51"
  printf '%s\n%s\n' "$sql" "$(psql "$db" -qXAt -c "EXPLAIN $sql" | sed 's/^/    /')"
  return $bad
}

# MySQL/MariaDB: the listing names its index (FORCE INDEX) and spells the
# cursor out as key <= ? AND (key < ? OR id < ?) (files.rs); the plan must
# not filesort, and with a cursor must be a range of that index.
my_plans() {  # DB
  local db=$1 bad=0 col dir cmp idx plan key
  for col in $SORT_COLS; do
    case $col in upload_date) idx=idx_user_files_user_date;; file_name) idx=idx_user_files_user_name;;
                 file_size) idx=idx_user_files_user_size;; esac
    for dir in ASC DESC; do
      cmp='>'; [ $dir = DESC ] && cmp='<'
      key="'$(my -N "$db" -e "SELECT $col FROM user_files WHERE user_id = 'bench' ORDER BY id LIMIT 1")'"
      for extra in "" " AND $col $cmp= $key AND ($col $cmp $key OR id $cmp x'00')"; do
        local sql="SELECT id FROM user_files FORCE INDEX ($idx) WHERE user_id = 'bench'$extra ORDER BY $col $dir, id $dir LIMIT 51"
        plan=$(my -N "$db" -e "EXPLAIN FORMAT=JSON $sql")
        printf '%s\n%s\n' "$sql" "$(echo -e "$plan" | sed 's/^/    /')"
        if echo -e "$plan" | grep -Eq 'filesort|"access_type": "ALL"' || ! echo -e "$plan" | grep -q "\"key\": \"$idx\"" \
           || { [ -n "$extra" ] && ! echo -e "$plan" | grep -q '"access_type": "range"'; }; then
          echo "    ^^^ NOT index-backed"; bad=1
        fi
      done
    done
  done
  # q=: the matches are read from the name index alone (search.rs), never
  # a row (InnoDB "Using index").
  local sql="SELECT id FROM user_files FORCE INDEX (idx_user_files_user_name) WHERE user_id = 'bench' AND lower(file_name) LIKE '%nomatch%' ESCAPE '!' LIMIT 510"
  plan=$(my -N "$db" -e "EXPLAIN FORMAT=JSON $sql")
  printf '%s\n%s\n' "$sql" "$(echo -e "$plan" | sed 's/^/    /')"
  echo -e "$plan" | grep -q '"using_index": true' || { echo "    ^^^ name index not covering"; bad=1; }
  # q= of three characters or more: each piece's count (search.rs counts
  # these rows in a derived table) is one range of the trigram table's
  # primary key (migration 0013), never a scan.
  sql="SELECT 1 FROM user_file_trigrams WHERE user_id = 'bench' AND tri = 'nom' LIMIT 512"
  plan=$(my -N "$db" -e "EXPLAIN FORMAT=JSON $sql")
  printf '%s\n%s\n' "$sql" "$(echo -e "$plan" | sed 's/^/    /')"
  if ! echo -e "$plan" | grep -q '"key": "PRIMARY"' || echo -e "$plan" | grep -q '"access_type": "ALL"'; then
    echo "    ^^^ trigram count not a primary-key range"; bad=1
  fi
  return $bad
}

# One engine's series: migrate DB_URL, seed it (SEED_FN), check its plans
# (PLANS_FN PLANS_ARG), then the mix through a server on it.
run_engine() {  # NAME DB_URL SEED_FN PLANS_FN PLANS_ARG
  local name=$1 url=$2 seed=$3 plans=$4 parg=$5 t0
  migrate "$url"
  log "$name: seeding $ROWS rows"
  t0=$(date +%s)
  "$seed" >&2
  log "$name: seeded in $(( $(date +%s) - t0 )) s"
  if ! skip plans; then
    { echo "== $name, $ROWS rows"; "$plans" "$parg" || echo "!! some plans are not index-backed"; } >>"$PLANS"
  fi
  start_server "$name" "$url"
  $PY "$HERE/list_mix.py" --url "http://127.0.0.1:$PORT" --token "$TOKEN" --label "$LABEL-$name" \
    --n "$N" --rows "$ROWS" --summary "$SUM" --raw "$RAW"
  stop_server
}

DBF=$WORK/sqlite/stowage.db
seed_sqlite() {
  $PY "$ROOT/bench/api/seed_sqlite.py" "$DBF" bench "$ROWS" "$QUOTA"
  $PY -c "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('ANALYZE'); c.commit()" "$DBF"
}
seed_pg() {
  psql "$PG_URL/$PG_DB" -qX -v ON_ERROR_STOP=1 -v user=bench -v n="$ROWS" -v max_bytes="$QUOTA" \
    -f "$ROOT/bench/api/seed_postgres.sql"
}
seed_mysql() {
  { echo "SET @user='bench', @n=$ROWS, @max_bytes=$QUOTA;"; cat "$ROOT/bench/api/seed_mysql.sql"; } | my "$MY_DB"
}

if ! skip sqlite; then
  mkdir -p "$WORK/sqlite"
  run_engine sqlite "sqlite://$DBF" seed_sqlite sqlite_plans "$DBF"
  rm -rf "$WORK/sqlite"
fi

if ! skip pg; then
  if psql "$PG_URL/postgres" -qX -c "CREATE DATABASE $PG_DB" >/dev/null; then
    PG_CREATED=1
    run_engine postgres "$PG_URL/$PG_DB" seed_pg pg_plans "$PG_URL/$PG_DB"
  else
    log "pg: PostgreSQL not reachable at $PG_URL; skipped"
  fi
fi

if [ -n "$MYSQL" ] && ! skip mysql; then
  if my -e "CREATE DATABASE $MY_DB" >/dev/null; then
    MY_CREATED=1
    run_engine mariadb "$MY_URL/$MY_DB" seed_mysql my_plans "$MY_DB"
  else
    log "mysql: MariaDB not reachable at $MY_HOST:$MY_PORT; skipped"
  fi
fi

[ -s "$PLANS" ] && { grep -c 'NOT index-backed\|not used\|not covering' "$PLANS" >/dev/null && log "plans: see $PLANS"; }
log "results: $SUM"
column -t -s $'\t' "$SUM" >&2

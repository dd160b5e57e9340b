#!/usr/bin/env bash
# favorite=true pages on PostgreSQL at the seeded size, with and without migration
# 0012's partial indexes (dropped and created again here), then with about one
# favorite in 4,000 files. DB: a database migrated by `stowage migrate` and seeded by
# bench/api/seed_postgres.sql (user=bench); it is modified. Execution times are
# EXPLAIN ANALYZE's, median and max of 7; the plan's first lines follow.
#
#   bench/list/favorites_pg.sh postgres://postgres@127.0.0.1:5432/DB
set -euo pipefail
DB=${1:-postgres://postgres@127.0.0.1:5432/favbench}
q() { psql "$DB" -qAtX -c "$1"; }
t() {  # SQL: execution time of EXPLAIN ANALYZE, 7 runs, median and max
  local v=()
  for _ in 1 2 3 4 5 6 7; do
    v+=("$(psql "$DB" -qAtX -c "EXPLAIN (ANALYZE, FORMAT JSON) $1" | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Execution Time"])')")
  done
  printf '%s\n' "${v[@]}" | sort -g | awk '{a[NR]=$1} END {printf "p50 %.3f max %.3f ms", a[4], a[NR]}'
}
plan() { psql "$DB" -qAtX -c "EXPLAIN $1" | head -3 | tr '\n' ' '; }
series() {  # LABEL
  for s in upload_date file_name file_size; do
    local sql="SELECT id, file_name FROM user_files WHERE user_id = 'bench' AND is_favorite ORDER BY $s DESC, id DESC LIMIT 51"
    echo "$1	$s desc	$(t "$sql")	$(plan "$sql")"
  done
}
fav=$(q "SELECT count(*) FROM user_files WHERE is_favorite")
echo "PostgreSQL $(q 'SHOW server_version'), $(q 'SELECT count(*) FROM user_files') files, $fav favorites"
series "with 0012"
q "DROP INDEX idx_user_files_user_fav_date; DROP INDEX idx_user_files_user_fav_name; DROP INDEX idx_user_files_user_fav_size; ANALYZE user_files" >/dev/null
series "without"
q "UPDATE user_files SET is_favorite = false WHERE is_favorite AND ('x' || substr(md5(id::text), 1, 8))::bit(32)::int % 80 <> 0; ANALYZE user_files" >/dev/null
echo "now $(q "SELECT count(*) FROM user_files WHERE is_favorite") favorites"
series "without"
q "CREATE INDEX idx_user_files_user_fav_date ON user_files(user_id, upload_date, id) WHERE is_favorite; CREATE INDEX idx_user_files_user_fav_name ON user_files(user_id, file_name, id) WHERE is_favorite; CREATE INDEX idx_user_files_user_fav_size ON user_files(user_id, file_size, id) WHERE is_favorite; ANALYZE user_files" >/dev/null
series "with 0012"

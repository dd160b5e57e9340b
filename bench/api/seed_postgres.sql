-- Inserts :n file rows for user :'user' into a migrated PostgreSQL database;
-- the same rows as seed_sqlite.py (see there). Run with
--   psql -v ON_ERROR_STOP=1 -v user=bench -v n=100000 -v max_bytes=... -f seed_postgres.sql
-- (outside a transaction block: the DO block commits every 1,000 rows)
INSERT INTO user_storage (user_id, max_bytes) VALUES (:'user', :max_bytes)
ON CONFLICT (user_id) DO UPDATE SET max_bytes = EXCLUDED.max_bytes;

-- 1,000 rows per transaction: the row trigger updates the one user_storage
-- row per insert, and in a single transaction every update walks the chain of
-- that row's earlier versions (100,000 rows in one go: ~5 min; this: seconds).
SELECT set_config('bench.user', :'user', false), set_config('bench.n', :'n', false) \g /dev/null
DO $seed$
DECLARE
  u  text := current_setting('bench.user');
  n  int  := current_setting('bench.n')::int;
  lo int  := 1;
BEGIN
  WHILE lo <= n LOOP
    WITH w AS (
      SELECT ARRAY['beach','sunset','intro','outro','family','drone','city','forest',
                   'studio','concert','holiday','wedding','mountain','river','night',
                   'morning','travel','party','sport','lecture'] AS words
    ), k AS (
      SELECT i,
             CASE WHEN i % 20 < 6 THEN 'video' WHEN i % 20 < 14 THEN 'image'
                  WHEN i % 20 < 17 THEN 'audio' WHEN i % 20 = 17 THEN 'scene' ELSE 'project' END AS t,
             CASE WHEN i % 20 < 6 THEN 'videos' WHEN i % 20 < 14 THEN 'images'
                  WHEN i % 20 < 17 THEN 'audio' WHEN i % 20 = 17 THEN 'scenes' ELSE 'projects' END AS d,
             CASE WHEN i % 20 < 6 THEN 'mp4' WHEN i % 20 < 14 THEN 'jpg'
                  WHEN i % 20 < 17 THEN 'mp3' WHEN i % 20 = 17 THEN 'json' ELSE 'zip' END AS ext,
             CASE WHEN i % 20 < 6 THEN 'video/mp4' WHEN i % 20 < 14 THEN 'image/jpeg'
                  WHEN i % 20 < 17 THEN 'audio/mpeg' WHEN i % 20 = 17 THEN 'application/json'
                  ELSE 'application/zip' END AS mime,
             md5('bench-' || i)::uuid AS id
      FROM generate_series(lo, least(lo + 999, n)) AS i
    )
    INSERT INTO user_files (id, user_id, file_name, file_type, mime_type, file_size, file_path,
                            tags, is_favorite, sha256, upload_date)
    SELECT k.id, u,
           w.words[(7 * i) % 20 + 1] || '_' || w.words[(13 * i + 5) % 20 + 1] || '_' || lpad(i::text, 6, '0') || '.' || k.ext,
           k.t, k.mime, 1024 + (104729::bigint * i) % 50000000,
           u || '/' || k.d || '/' || k.id::text || '.' || k.ext,
           '{}', i % 50 = 0, md5(i::text) || md5(i::text || 'x'),
           timestamptz '2026-01-01 00:00:00+00' + i * interval '60 seconds'
             + ((7919::bigint * i) % 1000000) * interval '1 microsecond'
    FROM k, w;
    COMMIT;
    lo := lo + 1000;
  END LOOP;
END
$seed$;

-- what autovacuum would do shortly after a bulk insert
ANALYZE user_files;
ANALYZE user_storage;

SELECT (SELECT count(*) FROM user_files WHERE user_id = :'user') AS rows,
       (SELECT file_count FROM user_storage WHERE user_id = :'user') AS file_count;

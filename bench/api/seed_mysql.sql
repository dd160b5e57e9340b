-- Inserts @n file rows for user @user into a migrated MySQL/MariaDB database;
-- the same rows as seed_sqlite.py and seed_postgres.sql (see there). MariaDB
-- only (the numbers come from its SEQUENCE engine, seq_1_to_<N>). Run with
--   (echo "SET @user='bench', @n=100000, @max_bytes=...;"; cat seed_mysql.sql) | mysql DB
INSERT INTO user_storage (user_id, max_bytes, created_at, updated_at)
VALUES (@user, @max_bytes, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))
ON DUPLICATE KEY UPDATE max_bytes = VALUES(max_bytes);

DROP PROCEDURE IF EXISTS stowage_bench_seed;
DELIMITER //
-- 1,000 rows per transaction, as in seed_postgres.sql.
CREATE PROCEDURE stowage_bench_seed(u VARCHAR(255), n INT)
BEGIN
  DECLARE lo INT DEFAULT 1;
  WHILE lo <= n DO
    INSERT INTO user_files (id, user_id, file_name, file_type, mime_type, file_size, file_path,
                            tags, is_favorite, sha256, upload_date, created_at)
    SELECT UNHEX(MD5(CONCAT('bench-', i))), u,
           CONCAT(ELT((7 * i) % 20 + 1, 'beach','sunset','intro','outro','family','drone','city',
                      'forest','studio','concert','holiday','wedding','mountain','river','night',
                      'morning','travel','party','sport','lecture'), '_',
                  ELT((13 * i + 5) % 20 + 1, 'beach','sunset','intro','outro','family','drone','city',
                      'forest','studio','concert','holiday','wedding','mountain','river','night',
                      'morning','travel','party','sport','lecture'), '_',
                  LPAD(i, 6, '0'), '.', ext),
           t, mime, 1024 + (104729 * i) % 50000000,
           CONCAT(u, '/', d, '/', LOWER(CONCAT_WS('-', SUBSTR(MD5(CONCAT('bench-', i)), 1, 8),
                  SUBSTR(MD5(CONCAT('bench-', i)), 9, 4), SUBSTR(MD5(CONCAT('bench-', i)), 13, 4),
                  SUBSTR(MD5(CONCAT('bench-', i)), 17, 4), SUBSTR(MD5(CONCAT('bench-', i)), 21))),
                  '.', ext),
           '[]', i % 50 = 0, CONCAT(MD5(i), MD5(CONCAT(i, 'x'))),
           TIMESTAMP '2026-01-01 00:00:00' + INTERVAL 60 * i SECOND
             + INTERVAL (7919 * i) % 1000000 MICROSECOND,
           UTC_TIMESTAMP(6)
    FROM (
      SELECT seq AS i,
             CASE WHEN seq % 20 < 6 THEN 'video' WHEN seq % 20 < 14 THEN 'image'
                  WHEN seq % 20 < 17 THEN 'audio' WHEN seq % 20 = 17 THEN 'scene' ELSE 'project' END AS t,
             CASE WHEN seq % 20 < 6 THEN 'videos' WHEN seq % 20 < 14 THEN 'images'
                  WHEN seq % 20 < 17 THEN 'audio' WHEN seq % 20 = 17 THEN 'scenes' ELSE 'projects' END AS d,
             CASE WHEN seq % 20 < 6 THEN 'mp4' WHEN seq % 20 < 14 THEN 'jpg'
                  WHEN seq % 20 < 17 THEN 'mp3' WHEN seq % 20 = 17 THEN 'json' ELSE 'zip' END AS ext,
             CASE WHEN seq % 20 < 6 THEN 'video/mp4' WHEN seq % 20 < 14 THEN 'image/jpeg'
                  WHEN seq % 20 < 17 THEN 'audio/mpeg' WHEN seq % 20 = 17 THEN 'application/json'
                  ELSE 'application/zip' END AS mime
      FROM seq_1_to_100000000 WHERE seq BETWEEN lo AND LEAST(lo + 999, n)
    ) AS k;
    COMMIT;
    SET lo = lo + 1000;
  END WHILE;
END//
DELIMITER ;

CALL stowage_bench_seed(@user, @n);
DROP PROCEDURE stowage_bench_seed;

-- what a later statistics refresh would see
ANALYZE TABLE user_files, user_storage;

SELECT (SELECT COUNT(*) FROM user_files WHERE user_id = @user) AS `rows`,
       (SELECT file_count FROM user_storage WHERE user_id = @user) AS file_count;

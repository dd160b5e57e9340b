-- Every listing order walks a per-user index from its keyset cursor
-- (docs/architecture.md, "Listing"). 0001 made (user_id, key, id) for each
-- sort key; a `type=` listing gets the same with the type after the user, so
-- that a type the user has few files of is not looked for across all their
-- files.
CREATE INDEX IF NOT EXISTS idx_user_files_user_type_date ON user_files(user_id, file_type, upload_date, id);
CREATE INDEX IF NOT EXISTS idx_user_files_user_type_name ON user_files(user_id, file_type, file_name, id);
CREATE INDEX IF NOT EXISTS idx_user_files_user_type_size ON user_files(user_id, file_type, file_size, id);

-- Indexes no query needs, which the planner took for filtered listings: the
-- global ones read every user's rows in upload_date order (or all of a type,
-- or all favorites) and filter them; user_id alone is the prefix of each
-- index above.
DROP INDEX IF EXISTS idx_user_files_upload_date;
DROP INDEX IF EXISTS idx_user_files_type;
DROP INDEX IF EXISTS idx_user_files_favorite;
DROP INDEX IF EXISTS idx_user_files_user_id;

-- The trigram index without its pending list: with fastupdate on, new names
-- wait in an unsorted list that every search scans until a vacuum merges
-- it, which is where the slowest searches spent their time. Inserts now
-- update the index directly.
DO $trgm$
BEGIN
  IF EXISTS (SELECT 1 FROM pg_class WHERE relname = 'idx_user_files_name_trgm' AND relkind = 'i') THEN
    EXECUTE 'ALTER INDEX idx_user_files_name_trgm SET (fastupdate = off)';
    PERFORM gin_clean_pending_list('idx_user_files_name_trgm'::regclass);
  END IF;
END
$trgm$;

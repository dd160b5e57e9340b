-- Substring search on file names (`GET /api/files?q=`): a pg_trgm GIN index
-- on lower(file_name), which `lower(file_name) LIKE '%…%'` uses for patterns
-- of three or more characters (the index finds candidates, the LIKE is
-- rechecked on each, so `%`, `_` and `\` escaped in the pattern stay exact).
--
-- pg_trgm ships with PostgreSQL's contrib (Debian: in the server package) and
-- is a trusted extension, so a database owner may create it. Where it cannot
-- be created the migration still succeeds, with a warning: searches are then
-- answered by reading the user's rows, correct but slower
-- (docs/architecture.md, "Search").
DO $search$
BEGIN
  BEGIN
    CREATE EXTENSION IF NOT EXISTS pg_trgm;
  EXCEPTION WHEN OTHERS THEN
    RAISE WARNING 'pg_trgm is not available (%); file-name search will not be index-backed', SQLERRM;
  END;
  IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm') THEN
    EXECUTE 'CREATE INDEX IF NOT EXISTS idx_user_files_name_trgm ON user_files '
         || 'USING gin (lower(file_name) gin_trgm_ops)';
  END IF;
END
$search$;

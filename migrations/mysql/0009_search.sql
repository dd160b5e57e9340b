-- Substring search on file names (`GET /api/files?q=`): MySQL/MariaDB have
-- no trigram index, so `LOWER(file_name) LIKE '%…%'` is tested on the
-- user's rows as they are read through idx_user_files_user_* (see
-- docs/architecture.md, "Search"). Nothing to create; this migration keeps
-- the numbering in step with the other engines.
SELECT 1;

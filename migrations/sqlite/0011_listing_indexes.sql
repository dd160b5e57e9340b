-- Every listing order walks a per-user index from its keyset cursor
-- (docs/architecture.md, "Listing"). 0001 made (user_id, key, id) for each
-- sort key; a `type=` listing gets the same with the type after the user, so
-- that a type the user has few files of is not looked for across all their
-- files.
CREATE INDEX idx_user_files_user_type_date ON user_files(user_id, file_type, upload_date, id);
CREATE INDEX idx_user_files_user_type_name ON user_files(user_id, file_type, file_name, id);
CREATE INDEX idx_user_files_user_type_size ON user_files(user_id, file_type, file_size, id);

-- Indexes no query needs, which a planner could take for a listing: the
-- global ones read every user's rows (upload_date, file_type, is_favorite),
-- and user_id alone is the prefix of each index above.
DROP INDEX IF EXISTS idx_user_files_upload_date;
DROP INDEX IF EXISTS idx_user_files_type;
DROP INDEX IF EXISTS idx_user_files_favorite;
DROP INDEX IF EXISTS idx_user_files_user_id;

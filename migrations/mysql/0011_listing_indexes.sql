-- Every listing order walks a per-user index from its keyset cursor
-- (docs/architecture.md, "Listing"); the listing names the index
-- (FORCE INDEX), as the planner here would rather filesort. 0001 made
-- (user_id, key, id) for each sort key; a `type=` listing gets the same with
-- the type after the user, so that a type the user has few files of is not
-- looked for across all their files. Not for file_name: (user_id,
-- file_type, file_name, id) is longer than InnoDB's 3072-byte key in
-- utf8mb4, so a `type=` listing by name walks idx_user_files_user_name.
CREATE INDEX idx_user_files_user_type_date ON user_files(user_id, file_type, upload_date, id);
CREATE INDEX idx_user_files_user_type_size ON user_files(user_id, file_type, file_size, id);

-- Global indexes no query needs, which the planner could take for a
-- listing (they read every user's rows and filter them).
DROP INDEX idx_user_files_upload_date ON user_files;
DROP INDEX idx_user_files_type ON user_files;
DROP INDEX idx_user_files_favorite ON user_files;

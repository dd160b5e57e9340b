-- A `favorite=true` listing walks an index of the user's favorites, in each
-- sort order (docs/architecture.md, "Listing"): favorites are few, and
-- walking the sort order's index of all the user's files to find them read
-- every row of a user with many files and few favorites. No partial indexes
-- here: the flag follows the user, and the listing names the index (FORCE
-- INDEX). (user_id, is_favorite, file_name, id) is one byte longer than
-- (user_id, file_name, id), within InnoDB's 3072-byte key.
CREATE INDEX idx_user_files_user_fav_date ON user_files(user_id, is_favorite, upload_date, id);
CREATE INDEX idx_user_files_user_fav_name ON user_files(user_id, is_favorite, file_name, id);
CREATE INDEX idx_user_files_user_fav_size ON user_files(user_id, is_favorite, file_size, id);

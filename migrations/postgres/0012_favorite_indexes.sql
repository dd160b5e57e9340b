-- A `favorite=true` listing walks an index of the user's favorites alone, in
-- each sort order (docs/architecture.md, "Listing"): favorites are few, and
-- walking the sort order's index of all the user's files to find them read
-- every row of a user with many files and few favorites. Partial, so the
-- files that are not favorites cost nothing here; the listing writes the
-- condition out (`AND is_favorite`, not a bound value) so that every plan
-- can use them.
CREATE INDEX IF NOT EXISTS idx_user_files_user_fav_date ON user_files(user_id, upload_date, id) WHERE is_favorite;
CREATE INDEX IF NOT EXISTS idx_user_files_user_fav_name ON user_files(user_id, file_name, id) WHERE is_favorite;
CREATE INDEX IF NOT EXISTS idx_user_files_user_fav_size ON user_files(user_id, file_size, id) WHERE is_favorite;

-- Each reservation is the quota hold of one unfinished upload (multipart or
-- tus); reserving counts a user's live ones against their cap of unfinished
-- uploads (SPEC §9), so they are looked up by user.
CREATE INDEX idx_upload_reservations_user ON upload_reservations(user_id, expires_at);

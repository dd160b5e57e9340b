-- Reservations by user, for the cap of unfinished uploads; SQLite dialect of
-- migrations/postgres/0005_reservations_by_user.sql.
CREATE INDEX idx_upload_reservations_user ON upload_reservations(user_id, expires_at);

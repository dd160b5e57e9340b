-- Signed upload URLs (SPEC §11): one row per issued URL. Its id is also the
-- id of the quota reservation taken at issue (which expires with the URL)
-- and of the file the upload becomes. `used_at` makes the URL single-use.
-- SQLite dialect of migrations/postgres/0007_signed_uploads.sql.
CREATE TABLE signed_uploads (
  id         BLOB    PRIMARY KEY,
  user_id    TEXT    NOT NULL REFERENCES user_storage(user_id) ON DELETE CASCADE,
  max_bytes  INTEGER NOT NULL CHECK (max_bytes >= 0),
  file_type  TEXT,
  file_name  TEXT,
  expires_at TEXT    NOT NULL,
  used_at    TEXT,
  created_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX idx_signed_uploads_expires ON signed_uploads(expires_at);
CREATE INDEX idx_signed_uploads_user ON signed_uploads(user_id);

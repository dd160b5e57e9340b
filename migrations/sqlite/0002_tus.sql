-- tus resumable uploads, SQLite dialect of migrations/postgres/0002_tus.sql.

CREATE TABLE tus_uploads (
  id            BLOB    PRIMARY KEY,
  user_id       TEXT    NOT NULL REFERENCES user_storage(user_id) ON DELETE CASCADE,
  upload_length INTEGER NOT NULL CHECK (upload_length >= 0),
  upload_offset INTEGER NOT NULL DEFAULT 0 CHECK (upload_offset >= 0 AND upload_offset <= upload_length),
  metadata      TEXT    NOT NULL DEFAULT '{}',
  lock_owner    BLOB,
  locked_until  TEXT,
  expires_at    TEXT    NOT NULL,
  created_at    TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX idx_tus_uploads_user ON tus_uploads(user_id);
CREATE INDEX idx_tus_uploads_expires ON tus_uploads(expires_at);

-- Core schema, SQLite dialect of migrations/postgres/0001_core.sql.
-- Ids are 16-byte BLOBs, timestamps RFC 3339 text, tags a JSON array.

CREATE TABLE user_storage (
  user_id        TEXT    PRIMARY KEY,
  total_bytes    INTEGER NOT NULL DEFAULT 0,
  reserved_bytes INTEGER NOT NULL DEFAULT 0,
  max_bytes      INTEGER NOT NULL DEFAULT 10737418240,
  file_count     INTEGER NOT NULL DEFAULT 0,
  created_at     TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
  updated_at     TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
  CHECK (total_bytes >= 0),
  CHECK (reserved_bytes >= 0),
  CHECK (max_bytes >= 0)
);

CREATE TABLE user_files (
  id             BLOB    PRIMARY KEY,
  user_id        TEXT    NOT NULL REFERENCES user_storage(user_id) ON DELETE CASCADE,
  file_name      TEXT    NOT NULL,
  file_type      TEXT    NOT NULL,
  mime_type      TEXT    NOT NULL,
  file_size      INTEGER NOT NULL CHECK (file_size >= 0),
  file_path      TEXT    NOT NULL,
  thumbnail_path TEXT,
  resolution     TEXT,
  duration       TEXT,
  package_name   TEXT,
  tags           TEXT    NOT NULL DEFAULT '[]',
  is_favorite    BOOLEAN NOT NULL DEFAULT FALSE,
  sha256         TEXT    NOT NULL,
  upload_date    TEXT    NOT NULL,
  created_at     TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE INDEX idx_user_files_user_id ON user_files(user_id);
CREATE INDEX idx_user_files_type ON user_files(file_type);
CREATE INDEX idx_user_files_upload_date ON user_files(upload_date DESC);
CREATE INDEX idx_user_files_favorite ON user_files(is_favorite) WHERE is_favorite = 1;
CREATE INDEX idx_user_files_user_date ON user_files(user_id, upload_date, id);
CREATE INDEX idx_user_files_user_name ON user_files(user_id, file_name, id);
CREATE INDEX idx_user_files_user_size ON user_files(user_id, file_size, id);

CREATE TABLE upload_reservations (
  id         BLOB    PRIMARY KEY,
  user_id    TEXT    NOT NULL REFERENCES user_storage(user_id) ON DELETE CASCADE,
  bytes      INTEGER NOT NULL CHECK (bytes >= 0),
  expires_at TEXT    NOT NULL,
  created_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX idx_upload_reservations_expires ON upload_reservations(expires_at);

CREATE TRIGGER trigger_user_files_insert AFTER INSERT ON user_files
BEGIN
  UPDATE user_storage
     SET total_bytes = total_bytes + NEW.file_size,
         file_count = file_count + 1,
         updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
   WHERE user_id = NEW.user_id;
END;

CREATE TRIGGER trigger_user_files_delete AFTER DELETE ON user_files
BEGIN
  UPDATE user_storage
     SET total_bytes = total_bytes - OLD.file_size,
         file_count = file_count - 1,
         updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
   WHERE user_id = OLD.user_id;
END;

CREATE TRIGGER trigger_user_files_update_size AFTER UPDATE OF file_size ON user_files
BEGIN
  UPDATE user_storage
     SET total_bytes = total_bytes - OLD.file_size + NEW.file_size,
         updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
   WHERE user_id = NEW.user_id;
END;

-- Durable background jobs; SQLite has one writer, so a claim is atomic.
CREATE TABLE jobs (
  id           BLOB    PRIMARY KEY,
  kind         TEXT    NOT NULL,
  payload      TEXT    NOT NULL,
  user_id      TEXT    REFERENCES user_storage(user_id) ON DELETE CASCADE,
  status       TEXT    NOT NULL DEFAULT 'queued',
  attempts     INTEGER NOT NULL DEFAULT 0,
  max_attempts INTEGER NOT NULL DEFAULT 5,
  run_at       TEXT    NOT NULL,
  locked_until TEXT,
  last_error   TEXT,
  created_at   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
  updated_at   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX idx_jobs_runnable ON jobs(status, run_at);

-- Core schema for MySQL 8 / MariaDB >= 10.6: per-user storage counters, file
-- metadata, quota reservations. The same tables as migrations/postgres, in
-- InnoDB with utf8mb4. Text that is compared for equality (user ids, names,
-- packages) uses utf8mb4_bin, so it compares exactly as on the other engines
-- (case and accents matter); ids are UUIDs as BINARY(16); times are UTC in
-- DATETIME(6) (the connection's time_zone is '+00:00').
-- user_storage.total_bytes / file_count are kept exact by the triggers below;
-- reserved_bytes is maintained by the application inside the same
-- transactions that insert and delete upload_reservations rows.

CREATE TABLE user_storage (
  user_id        VARCHAR(255) NOT NULL PRIMARY KEY,
  total_bytes    BIGINT       NOT NULL DEFAULT 0,
  reserved_bytes BIGINT       NOT NULL DEFAULT 0,
  max_bytes      BIGINT       NOT NULL DEFAULT 10737418240,
  file_count     INT          NOT NULL DEFAULT 0,
  created_at     DATETIME(6)  NOT NULL,
  updated_at     DATETIME(6)  NOT NULL,
  CONSTRAINT user_storage_total_nonneg CHECK (total_bytes >= 0),
  CONSTRAINT user_storage_reserved_nonneg CHECK (reserved_bytes >= 0),
  CONSTRAINT user_storage_max_nonneg CHECK (max_bytes >= 0)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE user_files (
  id             BINARY(16)    NOT NULL PRIMARY KEY,
  user_id        VARCHAR(255)  NOT NULL,
  file_name      VARCHAR(500)  NOT NULL,
  file_type      VARCHAR(50)   NOT NULL,
  mime_type      VARCHAR(100)  NOT NULL,
  file_size      BIGINT        NOT NULL,
  file_path      VARCHAR(1000) NOT NULL,
  thumbnail_path VARCHAR(1000),
  resolution     VARCHAR(50),
  duration       VARCHAR(20),
  package_name   VARCHAR(100),
  -- A JSON array of strings (JSON_CONTAINS answers `tag=`).
  tags           TEXT          NOT NULL,
  is_favorite    BOOLEAN       NOT NULL DEFAULT FALSE,
  sha256         CHAR(64)      NOT NULL,
  upload_date    DATETIME(6)   NOT NULL,
  created_at     DATETIME(6)   NOT NULL,
  CONSTRAINT user_files_size_nonneg CHECK (file_size >= 0),
  CONSTRAINT user_files_user FOREIGN KEY (user_id) REFERENCES user_storage(user_id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE INDEX idx_user_files_type ON user_files(file_type);
CREATE INDEX idx_user_files_upload_date ON user_files(upload_date);
CREATE INDEX idx_user_files_favorite ON user_files(is_favorite);
-- Keyset pagination: one index per sort key, scoped to the user (the first
-- also serves lookups by user).
CREATE INDEX idx_user_files_user_date ON user_files(user_id, upload_date, id);
CREATE INDEX idx_user_files_user_name ON user_files(user_id, file_name, id);
CREATE INDEX idx_user_files_user_size ON user_files(user_id, file_size, id);

CREATE TABLE upload_reservations (
  id         BINARY(16)   NOT NULL PRIMARY KEY,
  user_id    VARCHAR(255) NOT NULL,
  bytes      BIGINT       NOT NULL,
  expires_at DATETIME(6)  NOT NULL,
  created_at DATETIME(6)  NOT NULL,
  CONSTRAINT upload_reservations_bytes_nonneg CHECK (bytes >= 0),
  CONSTRAINT upload_reservations_user FOREIGN KEY (user_id) REFERENCES user_storage(user_id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX idx_upload_reservations_expires ON upload_reservations(expires_at);

-- MySQL has no statement-type argument in a trigger: one per event. (A
-- cascade from a deleted user_storage row fires none, but then the
-- counters go with the row.)
CREATE TRIGGER trigger_user_files_insert AFTER INSERT ON user_files
FOR EACH ROW
  UPDATE user_storage
     SET total_bytes = total_bytes + NEW.file_size,
         file_count = file_count + 1,
         updated_at = UTC_TIMESTAMP(6)
   WHERE user_id = NEW.user_id;

CREATE TRIGGER trigger_user_files_delete AFTER DELETE ON user_files
FOR EACH ROW
  UPDATE user_storage
     SET total_bytes = total_bytes - OLD.file_size,
         file_count = file_count - 1,
         updated_at = UTC_TIMESTAMP(6)
   WHERE user_id = OLD.user_id;

CREATE TRIGGER trigger_user_files_update AFTER UPDATE ON user_files
FOR EACH ROW
  UPDATE user_storage
     SET total_bytes = total_bytes - OLD.file_size + NEW.file_size,
         updated_at = UTC_TIMESTAMP(6)
   WHERE user_id = NEW.user_id AND OLD.file_size <> NEW.file_size;

-- Durable background jobs (thumbnails, media metadata). Claimed with
-- FOR UPDATE SKIP LOCKED (MySQL 8, MariaDB 10.6) so several processes never
-- run one job twice.
CREATE TABLE jobs (
  id           BINARY(16)   NOT NULL PRIMARY KEY,
  kind         VARCHAR(50)  NOT NULL,
  payload      MEDIUMTEXT   NOT NULL,
  user_id      VARCHAR(255),
  status       VARCHAR(20)  NOT NULL DEFAULT 'queued',
  attempts     INT          NOT NULL DEFAULT 0,
  max_attempts INT          NOT NULL DEFAULT 5,
  run_at       DATETIME(6)  NOT NULL,
  locked_until DATETIME(6),
  last_error   MEDIUMTEXT,
  created_at   DATETIME(6)  NOT NULL,
  updated_at   DATETIME(6)  NOT NULL,
  CONSTRAINT jobs_user FOREIGN KEY (user_id) REFERENCES user_storage(user_id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX idx_jobs_runnable ON jobs(status, run_at);

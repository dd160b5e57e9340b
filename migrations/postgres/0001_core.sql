-- Core schema: per-user storage counters, file metadata, quota reservations.
-- user_storage.total_bytes / file_count are kept exact by the trigger below;
-- reserved_bytes is maintained by the application inside the same transactions
-- that insert and delete upload_reservations rows (see src/meta/sql.rs).

CREATE TABLE user_storage (
  user_id        VARCHAR(255) PRIMARY KEY,
  total_bytes    BIGINT      NOT NULL DEFAULT 0,
  reserved_bytes BIGINT      NOT NULL DEFAULT 0,
  max_bytes      BIGINT      NOT NULL DEFAULT 10737418240,
  file_count     INTEGER     NOT NULL DEFAULT 0,
  created_at     TIMESTAMPTZ NOT NULL DEFAULT NOW(),
  updated_at     TIMESTAMPTZ NOT NULL DEFAULT NOW(),
  CONSTRAINT user_storage_total_nonneg CHECK (total_bytes >= 0),
  CONSTRAINT user_storage_reserved_nonneg CHECK (reserved_bytes >= 0),
  CONSTRAINT user_storage_max_nonneg CHECK (max_bytes >= 0)
);

CREATE TABLE user_files (
  id             UUID PRIMARY KEY,
  user_id        VARCHAR(255) NOT NULL REFERENCES user_storage(user_id) ON DELETE CASCADE,
  file_name      VARCHAR(500)  NOT NULL,
  file_type      VARCHAR(50)   NOT NULL,
  mime_type      VARCHAR(100)  NOT NULL,
  file_size      BIGINT        NOT NULL CHECK (file_size >= 0),
  file_path      VARCHAR(1000) NOT NULL,
  thumbnail_path VARCHAR(1000),
  resolution     VARCHAR(50),
  duration       VARCHAR(20),
  package_name   VARCHAR(100),
  tags           TEXT[]        NOT NULL DEFAULT '{}',
  is_favorite    BOOLEAN       NOT NULL DEFAULT FALSE,
  sha256         CHAR(64)      NOT NULL,
  upload_date    TIMESTAMPTZ   NOT NULL DEFAULT NOW(),
  created_at     TIMESTAMPTZ   NOT NULL DEFAULT NOW()
);

CREATE INDEX idx_user_files_user_id ON user_files(user_id);
CREATE INDEX idx_user_files_type ON user_files(file_type);
CREATE INDEX idx_user_files_upload_date ON user_files(upload_date DESC);
CREATE INDEX idx_user_files_favorite ON user_files(is_favorite) WHERE is_favorite = TRUE;
-- Keyset pagination: one index per sort key, scoped to the user.
CREATE INDEX idx_user_files_user_date ON user_files(user_id, upload_date, id);
CREATE INDEX idx_user_files_user_name ON user_files(user_id, file_name, id);
CREATE INDEX idx_user_files_user_size ON user_files(user_id, file_size, id);

CREATE TABLE upload_reservations (
  id         UUID PRIMARY KEY,
  user_id    VARCHAR(255) NOT NULL REFERENCES user_storage(user_id) ON DELETE CASCADE,
  bytes      BIGINT       NOT NULL CHECK (bytes >= 0),
  expires_at TIMESTAMPTZ  NOT NULL,
  created_at TIMESTAMPTZ  NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_upload_reservations_expires ON upload_reservations(expires_at);

CREATE OR REPLACE FUNCTION update_user_storage()
RETURNS TRIGGER AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    UPDATE user_storage
       SET total_bytes = total_bytes + NEW.file_size,
           file_count = file_count + 1,
           updated_at = NOW()
     WHERE user_id = NEW.user_id;
    RETURN NEW;
  ELSIF TG_OP = 'DELETE' THEN
    UPDATE user_storage
       SET total_bytes = total_bytes - OLD.file_size,
           file_count = file_count - 1,
           updated_at = NOW()
     WHERE user_id = OLD.user_id;
    RETURN OLD;
  ELSIF TG_OP = 'UPDATE' THEN
    UPDATE user_storage
       SET total_bytes = total_bytes - OLD.file_size + NEW.file_size,
           updated_at = NOW()
     WHERE user_id = NEW.user_id;
    RETURN NEW;
  END IF;
  RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER trigger_update_user_storage
AFTER INSERT OR DELETE OR UPDATE OF file_size ON user_files
FOR EACH ROW EXECUTE FUNCTION update_user_storage();

-- Durable background jobs (thumbnails, media metadata). Claimed with
-- FOR UPDATE SKIP LOCKED so several processes never run one job twice.
CREATE TABLE jobs (
  id           UUID PRIMARY KEY,
  kind         VARCHAR(50)  NOT NULL,
  payload      TEXT         NOT NULL,
  user_id      VARCHAR(255) REFERENCES user_storage(user_id) ON DELETE CASCADE,
  status       VARCHAR(20)  NOT NULL DEFAULT 'queued',
  attempts     INTEGER      NOT NULL DEFAULT 0,
  max_attempts INTEGER      NOT NULL DEFAULT 5,
  run_at       TIMESTAMPTZ  NOT NULL,
  locked_until TIMESTAMPTZ,
  last_error   TEXT,
  created_at   TIMESTAMPTZ  NOT NULL DEFAULT NOW(),
  updated_at   TIMESTAMPTZ  NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_jobs_runnable ON jobs(status, run_at);

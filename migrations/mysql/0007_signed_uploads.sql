-- Signed upload URLs (SPEC §11): one row per issued URL. Its id is also the
-- id of the quota reservation taken at issue (which expires with the URL)
-- and of the file the upload becomes. `used_at` makes the URL single-use.
CREATE TABLE signed_uploads (
  id         BINARY(16)   NOT NULL PRIMARY KEY,
  user_id    VARCHAR(255) NOT NULL,
  max_bytes  BIGINT       NOT NULL,
  file_type  TEXT,
  file_name  TEXT,
  expires_at DATETIME(6)  NOT NULL,
  used_at    DATETIME(6),
  created_at DATETIME(6)  NOT NULL,
  CONSTRAINT signed_uploads_max_nonneg CHECK (max_bytes >= 0),
  CONSTRAINT signed_uploads_user FOREIGN KEY (user_id) REFERENCES user_storage(user_id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX idx_signed_uploads_expires ON signed_uploads(expires_at);

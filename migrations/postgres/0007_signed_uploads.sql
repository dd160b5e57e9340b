-- Signed upload URLs (SPEC §11): one row per issued URL. Its id is also the
-- id of the quota reservation taken at issue (which expires with the URL)
-- and of the file the upload becomes. `used_at` makes the URL single-use.
CREATE TABLE signed_uploads (
  id         UUID PRIMARY KEY,
  user_id    VARCHAR(255) NOT NULL REFERENCES user_storage(user_id) ON DELETE CASCADE,
  max_bytes  BIGINT       NOT NULL CHECK (max_bytes >= 0),
  file_type  TEXT,
  file_name  TEXT,
  expires_at TIMESTAMPTZ  NOT NULL,
  used_at    TIMESTAMPTZ,
  created_at TIMESTAMPTZ  NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_signed_uploads_expires ON signed_uploads(expires_at);
CREATE INDEX idx_signed_uploads_user ON signed_uploads(user_id);

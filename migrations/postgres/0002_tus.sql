-- tus resumable uploads (src/http/tus). The row's id is also the id of the
-- upload's quota reservation and of its staging blob; the row lives from
-- creation until the upload completes, is terminated or expires.
-- lock_owner/locked_until are a lease taken by the PATCH that is appending,
-- so that two PATCHes (on one process or several) never write at once; a
-- crashed holder's lease simply runs out.

CREATE TABLE tus_uploads (
  id            UUID PRIMARY KEY,
  user_id       VARCHAR(255) NOT NULL REFERENCES user_storage(user_id) ON DELETE CASCADE,
  upload_length BIGINT       NOT NULL CHECK (upload_length >= 0),
  upload_offset BIGINT       NOT NULL DEFAULT 0 CHECK (upload_offset >= 0 AND upload_offset <= upload_length),
  metadata      TEXT         NOT NULL DEFAULT '{}',
  lock_owner    UUID,
  locked_until  TIMESTAMPTZ,
  expires_at    TIMESTAMPTZ  NOT NULL,
  created_at    TIMESTAMPTZ  NOT NULL DEFAULT NOW()
);
CREATE INDEX idx_tus_uploads_user ON tus_uploads(user_id);
CREATE INDEX idx_tus_uploads_expires ON tus_uploads(expires_at);

-- tus resumable uploads (src/http/tus). The row's id is also the id of the
-- upload's quota reservation and of its staging blob; the row lives from
-- creation until the upload completes, is terminated or expires.
-- lock_owner/locked_until are a lease taken by the PATCH that is appending,
-- so that two PATCHes (on one process or several) never write at once; a
-- crashed holder's lease simply runs out.

CREATE TABLE tus_uploads (
  id            BINARY(16)   NOT NULL PRIMARY KEY,
  user_id       VARCHAR(255) NOT NULL,
  upload_length BIGINT       NOT NULL,
  upload_offset BIGINT       NOT NULL DEFAULT 0,
  metadata      MEDIUMTEXT   NOT NULL,
  lock_owner    BINARY(16),
  locked_until  DATETIME(6),
  expires_at    DATETIME(6)  NOT NULL,
  created_at    DATETIME(6)  NOT NULL,
  CONSTRAINT tus_uploads_length_nonneg CHECK (upload_length >= 0),
  CONSTRAINT tus_uploads_offset_range CHECK (upload_offset >= 0 AND upload_offset <= upload_length),
  CONSTRAINT tus_uploads_user FOREIGN KEY (user_id) REFERENCES user_storage(user_id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX idx_tus_uploads_expires ON tus_uploads(expires_at);

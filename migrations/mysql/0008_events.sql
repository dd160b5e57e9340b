-- The event outbox (SPEC §11): every change records its event in the same
-- transaction as the change (see src/meta/sql/mysql/events.rs), and the
-- webhook worker delivers pending ones. `body` is the exact JSON sent.
-- Rows are not tied to user_storage: a user's deletion records its
-- `file.deleted` events here and they outlive the user.
CREATE TABLE events (
  seq             BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
  id              BINARY(16)   NOT NULL UNIQUE,
  event_type      VARCHAR(50)  NOT NULL,
  user_id         VARCHAR(255) NOT NULL,
  created_at      DATETIME(6)  NOT NULL,
  body            MEDIUMTEXT   NOT NULL,
  -- 'pending', 'delivered' or 'failed' (retries given up).
  status          VARCHAR(20)  NOT NULL DEFAULT 'pending',
  attempts        INT          NOT NULL DEFAULT 0,
  next_attempt_at DATETIME(6)  NOT NULL,
  queued_at       DATETIME(6)  NOT NULL,
  last_error      MEDIUMTEXT,
  delivered_at    DATETIME(6)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX events_due ON events (status, next_attempt_at, seq);
CREATE INDEX events_by_type ON events (event_type, seq);
CREATE INDEX events_by_created ON events (created_at);

-- The highest quota threshold (0, 80, 95, 100 percent) the user's usage
-- has reached, read and written under the user row's lock.
ALTER TABLE user_storage ADD COLUMN last_threshold INT NOT NULL DEFAULT 0;

-- The event outbox (SPEC §11): every change records its event in the same
-- transaction as the change (see src/meta/events.rs), and the webhook
-- worker (src/jobs/webhooks.rs) delivers pending ones. `body` is the exact
-- JSON sent, so every retry carries the same bytes and the same `id`.
-- Rows are not tied to user_storage: a user's deletion records its
-- `file.deleted` events here and they outlive the user.
CREATE TABLE events (
  seq             BIGSERIAL    PRIMARY KEY,
  id              UUID         NOT NULL UNIQUE,
  event_type      VARCHAR(50)  NOT NULL,
  user_id         VARCHAR(255) NOT NULL,
  created_at      TIMESTAMPTZ  NOT NULL,
  body            TEXT         NOT NULL,
  -- 'pending', 'delivered' or 'failed' (retries given up).
  status          VARCHAR(20)  NOT NULL DEFAULT 'pending',
  attempts        INTEGER      NOT NULL DEFAULT 0,
  -- When a pending event is due; retries push it forward.
  next_attempt_at TIMESTAMPTZ  NOT NULL,
  -- Start of the retry window: creation, or the last replay.
  queued_at       TIMESTAMPTZ  NOT NULL,
  last_error      TEXT,
  delivered_at    TIMESTAMPTZ
);
CREATE INDEX events_due ON events (status, next_attempt_at, seq);
CREATE INDEX events_by_type ON events (event_type, seq);
CREATE INDEX events_by_created ON events (created_at);

-- The highest quota threshold (0, 80, 95, 100 percent) the user's usage
-- has reached, so `quota.threshold` fires once per upward crossing. It is
-- read and written under the user row's lock in the transaction that
-- changes usage.
ALTER TABLE user_storage ADD COLUMN last_threshold INTEGER NOT NULL DEFAULT 0;

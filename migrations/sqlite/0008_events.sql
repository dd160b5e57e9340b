-- The event outbox; SQLite dialect of migrations/postgres/0008_events.sql.
CREATE TABLE events (
  seq             INTEGER PRIMARY KEY AUTOINCREMENT,
  id              BLOB    NOT NULL UNIQUE,
  event_type      TEXT    NOT NULL,
  user_id         TEXT    NOT NULL,
  created_at      TEXT    NOT NULL,
  body            TEXT    NOT NULL,
  status          TEXT    NOT NULL DEFAULT 'pending',
  attempts        INTEGER NOT NULL DEFAULT 0,
  next_attempt_at TEXT    NOT NULL,
  queued_at       TEXT    NOT NULL,
  last_error      TEXT,
  delivered_at    TEXT
);
CREATE INDEX events_due ON events (status, next_attempt_at, seq);
CREATE INDEX events_by_type ON events (event_type, seq);
CREATE INDEX events_by_created ON events (created_at);

ALTER TABLE user_storage ADD COLUMN last_threshold INTEGER NOT NULL DEFAULT 0;

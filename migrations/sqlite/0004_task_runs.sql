-- History of the periodic tasks `serve` runs; SQLite dialect of
-- migrations/postgres/0004_task_runs.sql.
CREATE TABLE task_runs (
  id          INTEGER PRIMARY KEY AUTOINCREMENT,
  name        TEXT NOT NULL,
  holder      TEXT NOT NULL,
  started_at  TEXT NOT NULL,
  finished_at TEXT,
  outcome     TEXT,
  summary     TEXT
);
CREATE INDEX task_runs_by_name ON task_runs (name, started_at);

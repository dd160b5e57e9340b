-- Leases for periodic operator tasks (cleanup, audit) run by `serve`; SQLite
-- dialect of migrations/postgres/0003_ops.sql.
CREATE TABLE task_leases (
  name       TEXT PRIMARY KEY,
  holder     TEXT NOT NULL,
  expires_at TEXT NOT NULL
);

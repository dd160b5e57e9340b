-- Leases for periodic operator tasks (cleanup, audit) run by `serve`: one
-- row per task; a process runs the task only while it holds an unexpired
-- lease, taken with a single conditional upsert (see src/ops/lease.rs), so
-- several processes sharing this database never run a task at once.
CREATE TABLE task_leases (
  name       VARCHAR(100) PRIMARY KEY,
  holder     VARCHAR(255) NOT NULL,
  expires_at TIMESTAMPTZ  NOT NULL
);

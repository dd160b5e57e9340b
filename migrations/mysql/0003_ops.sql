-- Leases for periodic operator tasks (cleanup, audit) run by `serve`: one
-- row per task; a process runs the task only while it holds an unexpired
-- lease (see src/meta/sql/mysql/leases.rs), so several processes sharing
-- this database never run a task at once.
CREATE TABLE task_leases (
  name       VARCHAR(100) NOT NULL PRIMARY KEY,
  holder     VARCHAR(255) NOT NULL,
  expires_at DATETIME(6)  NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

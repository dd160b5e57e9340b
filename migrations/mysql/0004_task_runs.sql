-- History of the periodic tasks `serve` runs (cleanup, audit): one row per
-- run, written by the process that held the task's lease. Rows older than
-- 30 days are pruned when a run starts.
CREATE TABLE task_runs (
  id          BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
  name        VARCHAR(100) NOT NULL,
  holder      VARCHAR(255) NOT NULL,
  started_at  DATETIME(6)  NOT NULL,
  -- NULL while running, or when the process died during the run.
  finished_at DATETIME(6),
  -- 'ok', 'problems' (an audit that is not clean) or 'failed'.
  outcome     VARCHAR(20),
  summary     MEDIUMTEXT
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
CREATE INDEX task_runs_by_name ON task_runs (name, started_at);

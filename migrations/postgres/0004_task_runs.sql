-- History of the periodic tasks `serve` runs (cleanup, audit): one row per
-- run, written by the process that held the task's lease. Operators read it
-- with `stowage tasks`; it also shows that runs never overlap across nodes.
-- Rows older than 30 days are pruned when a run starts.
CREATE TABLE task_runs (
  id          BIGSERIAL    PRIMARY KEY,
  name        VARCHAR(100) NOT NULL,
  holder      VARCHAR(255) NOT NULL,
  started_at  TIMESTAMPTZ  NOT NULL,
  -- NULL while running, or when the process died during the run.
  finished_at TIMESTAMPTZ,
  -- 'ok', 'problems' (an audit that is not clean) or 'failed'.
  outcome     VARCHAR(20),
  summary     TEXT
);
CREATE INDEX task_runs_by_name ON task_runs (name, started_at);

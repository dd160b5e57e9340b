-- Takeover of a tus upload's lease and its running hash; SQLite dialect of
-- migrations/postgres/0010_tus_takeover.sql (which explains the columns).
ALTER TABLE tus_uploads ADD COLUMN takeover INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tus_uploads ADD COLUMN completing BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE tus_uploads ADD COLUMN hash_state BLOB;

-- Takeover of a tus upload's lease and its running hash (src/http/tus/lease.rs).
--
-- takeover: 0 while the lease holder writes undisturbed; 1 once a later
--   request (HEAD, PATCH, DELETE) asked it to stop; 2 once the holder saw
--   the request and is releasing (fsync, offset, unlock). A holder that
--   leaves it at 1 for 2 s is taken for dead and its lease is taken away.
-- completing: the holder is completing the upload (hash, scan, publish,
--   commit); nobody takes its lease away while it is renewed.
-- hash_state: the sha256 state over the first upload_offset bytes, saved
--   with the offset, so completion never re-reads the staged data.
ALTER TABLE tus_uploads ADD COLUMN takeover SMALLINT NOT NULL DEFAULT 0;
ALTER TABLE tus_uploads ADD COLUMN completing BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE tus_uploads ADD COLUMN hash_state BYTEA;

-- Takeover of a tus upload's lease and its running hash (src/http/tus/lease.rs).
-- takeover: 0 undisturbed; 1 a later request asked the holder to stop; 2 the
--   holder saw the request and is releasing.
-- completing: the holder is completing the upload.
-- hash_state: the sha256 state over the first upload_offset bytes.
ALTER TABLE tus_uploads ADD COLUMN takeover SMALLINT NOT NULL DEFAULT 0;
ALTER TABLE tus_uploads ADD COLUMN completing BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE tus_uploads ADD COLUMN hash_state LONGBLOB;

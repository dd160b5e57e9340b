-- Substring search on file names (`GET /api/files?q=`), backed by an FTS5
-- index with the trigram tokenizer: every three consecutive characters of a
-- name, case-folded, are a term, so a quoted phrase of three or more
-- characters finds every name that contains it (spaces, `%`, `_` and `\`
-- included, as plain characters).
--
-- user_files' rowid is not an INTEGER PRIMARY KEY, so VACUUM (and a backup
-- made with VACUUM INTO) may renumber it; the index is therefore keyed by
-- user_file_names.seq, which is stable. Triggers on user_files keep
-- user_file_names in step (insert, delete, rename, and the cascade of a
-- deleted user); triggers on user_file_names keep the index in step.

CREATE TABLE user_file_names (
  seq       INTEGER PRIMARY KEY,
  file_id   BLOB    NOT NULL UNIQUE,
  user_id   TEXT    NOT NULL,
  file_name TEXT    NOT NULL
);

CREATE VIRTUAL TABLE user_file_names_fts USING fts5(
  file_name,
  content = 'user_file_names',
  content_rowid = 'seq',
  tokenize = 'trigram case_sensitive 0'
);

CREATE TRIGGER user_file_names_fts_insert AFTER INSERT ON user_file_names
BEGIN
  INSERT INTO user_file_names_fts (rowid, file_name) VALUES (NEW.seq, NEW.file_name);
END;

CREATE TRIGGER user_file_names_fts_delete AFTER DELETE ON user_file_names
BEGIN
  INSERT INTO user_file_names_fts (user_file_names_fts, rowid, file_name)
  VALUES ('delete', OLD.seq, OLD.file_name);
END;

CREATE TRIGGER user_file_names_fts_update AFTER UPDATE OF file_name ON user_file_names
BEGIN
  INSERT INTO user_file_names_fts (user_file_names_fts, rowid, file_name)
  VALUES ('delete', OLD.seq, OLD.file_name);
  INSERT INTO user_file_names_fts (rowid, file_name) VALUES (NEW.seq, NEW.file_name);
END;

CREATE TRIGGER trigger_user_files_name_insert AFTER INSERT ON user_files
BEGIN
  INSERT INTO user_file_names (file_id, user_id, file_name)
  VALUES (NEW.id, NEW.user_id, NEW.file_name);
END;

CREATE TRIGGER trigger_user_files_name_delete AFTER DELETE ON user_files
BEGIN
  DELETE FROM user_file_names WHERE file_id = OLD.id;
END;

CREATE TRIGGER trigger_user_files_name_update AFTER UPDATE OF file_name ON user_files
BEGIN
  UPDATE user_file_names SET file_name = NEW.file_name WHERE file_id = NEW.id;
END;

INSERT INTO user_file_names (file_id, user_id, file_name)
SELECT id, user_id, file_name FROM user_files;

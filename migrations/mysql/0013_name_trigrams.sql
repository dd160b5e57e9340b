-- Substring search on file names (`GET /api/files?q=`) for texts of three
-- characters or more. MySQL/MariaDB have no trigram index (MariaDB has no
-- ngram full-text parser either), so this is one of their own: a row per
-- distinct three-character piece of each lower-cased name, keyed by user
-- and piece, so the names of a user that hold a piece are one range of the
-- primary key. The listing looks up the text's rarest pieces, keeps the
-- files that hold all of them, then tests those files' names with the same
-- `LOWER(file_name) LIKE` as before (src/meta/sql/search.rs): the table
-- narrows the search, it never decides a match, so a piece it lacks could
-- only make a search slower, never wrong.
--
-- Pieces are compared as bytes (VARBINARY, no pad), as the names'
-- utf8mb4_bin LIKE compares them. Triggers keep the table in step: a new
-- file's pieces are added, a deleted file's removed (by primary key, from
-- its name), a renamed file's replaced, and a deleted user's removed all
-- at once (their files go by the foreign key's cascade, which fires no
-- trigger). No foreign key of its own: its index on file_id alone would
-- almost double the table and the time to write it (measured at 100,000
-- files: 252 MB and 134 s against 136 MB and 80 s).

CREATE TABLE user_file_trigrams (
  user_id VARCHAR(255)  NOT NULL,
  tri     VARBINARY(12) NOT NULL,
  file_id BINARY(16)    NOT NULL,
  PRIMARY KEY (user_id, tri, file_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Adds (`add` true) or removes the pieces of one file's name. Its text
-- parameters and variable name their character set: a routine's default
-- is the database's, which need not be utf8mb4.
CREATE PROCEDURE stowage_name_trigrams(
  IN p_add BOOLEAN,
  IN p_user VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
  IN p_file BINARY(16),
  IN p_name VARCHAR(500) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin
)
MODIFIES SQL DATA
BEGIN
  DECLARE lname VARCHAR(500) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin DEFAULT LOWER(p_name);
  DECLARE i INT DEFAULT 1;
  DECLARE n INT DEFAULT CHAR_LENGTH(lname) - 2;
  WHILE i <= n DO
    IF p_add THEN
      INSERT INTO user_file_trigrams (user_id, tri, file_id)
      VALUES (p_user, CAST(SUBSTRING(lname, i, 3) AS BINARY), p_file)
      ON DUPLICATE KEY UPDATE file_id = file_id;
    ELSE
      DELETE FROM user_file_trigrams
       WHERE user_id = p_user AND tri = CAST(SUBSTRING(lname, i, 3) AS BINARY) AND file_id = p_file;
    END IF;
    SET i = i + 1;
  END WHILE;
END;

CREATE TRIGGER trigger_user_files_trigrams_insert AFTER INSERT ON user_files
FOR EACH ROW CALL stowage_name_trigrams(TRUE, NEW.user_id, NEW.id, NEW.file_name);

CREATE TRIGGER trigger_user_files_trigrams_delete AFTER DELETE ON user_files
FOR EACH ROW CALL stowage_name_trigrams(FALSE, OLD.user_id, OLD.id, OLD.file_name);

-- Compared as bytes: under the columns' PAD SPACE collation "a.png" and
-- "a.png " are equal, and the second has a piece the first lacks.
CREATE TRIGGER trigger_user_files_trigrams_update AFTER UPDATE ON user_files
FOR EACH ROW
BEGIN
  IF CAST(OLD.file_name AS BINARY) <> CAST(NEW.file_name AS BINARY)
     OR CAST(OLD.user_id AS BINARY) <> CAST(NEW.user_id AS BINARY) THEN
    CALL stowage_name_trigrams(FALSE, OLD.user_id, OLD.id, OLD.file_name);
    CALL stowage_name_trigrams(TRUE, NEW.user_id, NEW.id, NEW.file_name);
  END IF;
END;

CREATE TRIGGER trigger_user_storage_trigrams_delete BEFORE DELETE ON user_storage
FOR EACH ROW DELETE FROM user_file_trigrams WHERE user_id = OLD.user_id;

-- The files already there (names are at most 500 characters).
INSERT INTO user_file_trigrams (user_id, tri, file_id)
WITH RECURSIVE pos (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM pos WHERE i < 498)
SELECT DISTINCT f.user_id, CAST(SUBSTRING(LOWER(f.file_name), pos.i, 3) AS BINARY), f.id
FROM user_files f JOIN pos ON pos.i <= CHAR_LENGTH(f.file_name) - 2;

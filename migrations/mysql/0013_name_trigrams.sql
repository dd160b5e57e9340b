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
-- utf8mb4_bin LIKE compares them. Rows go with their file by the foreign
-- key (cascades fire no triggers here, so a user's deletion removing their
-- files could not be followed by one); triggers on user_files add a new
-- file's pieces and renew them on a rename.

CREATE TABLE user_file_trigrams (
  user_id VARCHAR(255)  NOT NULL,
  tri     VARBINARY(12) NOT NULL,
  file_id BINARY(16)    NOT NULL,
  PRIMARY KEY (user_id, tri, file_id),
  KEY idx_user_file_trigrams_file (file_id),
  CONSTRAINT user_file_trigrams_file FOREIGN KEY (file_id) REFERENCES user_files(id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- Its text parameters and variable name their character set: a routine's
-- default is the database's, which need not be utf8mb4.
CREATE PROCEDURE stowage_index_name_trigrams(
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
    INSERT INTO user_file_trigrams (user_id, tri, file_id)
    VALUES (p_user, CAST(SUBSTRING(lname, i, 3) AS BINARY), p_file)
    ON DUPLICATE KEY UPDATE file_id = file_id;
    SET i = i + 1;
  END WHILE;
END;

CREATE TRIGGER trigger_user_files_trigrams_insert AFTER INSERT ON user_files
FOR EACH ROW CALL stowage_index_name_trigrams(NEW.user_id, NEW.id, NEW.file_name);

-- Compared as bytes: under the columns' PAD SPACE collation "a.png" and
-- "a.png " are equal, and the second has a piece the first lacks.
CREATE TRIGGER trigger_user_files_trigrams_update AFTER UPDATE ON user_files
FOR EACH ROW
BEGIN
  IF CAST(OLD.file_name AS BINARY) <> CAST(NEW.file_name AS BINARY)
     OR CAST(OLD.user_id AS BINARY) <> CAST(NEW.user_id AS BINARY) THEN
    DELETE FROM user_file_trigrams WHERE file_id = OLD.id;
    CALL stowage_index_name_trigrams(NEW.user_id, NEW.id, NEW.file_name);
  END IF;
END;

-- The files already there (names are at most 500 characters).
INSERT INTO user_file_trigrams (user_id, tri, file_id)
WITH RECURSIVE pos (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM pos WHERE i < 498)
SELECT DISTINCT f.user_id, CAST(SUBSTRING(LOWER(f.file_name), pos.i, 3) AS BINARY), f.id
FROM user_files f JOIN pos ON pos.i <= CHAR_LENGTH(f.file_name) - 2;

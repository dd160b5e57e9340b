-- MySQL/MariaDB's own trigram table for `q=` (see migrations/mysql/0013).
-- This engine has its trigram index already (0009); nothing to create, the
-- numbering stays in step with the other engines.
SELECT 1;

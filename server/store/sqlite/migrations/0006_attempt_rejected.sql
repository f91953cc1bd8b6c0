-- Version 6: an attempt may be 'rejected': its agent's allowlist refused
-- it, nothing ran, and it is final (also as a late outcome).
--
-- SQLite cannot alter a CHECK constraint. The constraint only becomes
-- looser (one more allowed value), which every stored row satisfies
-- already, so the table's definition is edited in place: the procedure
-- SQLite documents for removing CHECK constraints
-- (https://www.sqlite.org/lang_altertable.html#otheralter), inside this
-- migration's transaction, instead of copying the whole attempts table
-- (which foreign keys, on for every connection, would not let this
-- transaction drop). writable_schema = RESET makes this connection re-read
-- the schema; creating and dropping a table bumps the schema cookie, so
-- that every other connection re-reads it too.
PRAGMA writable_schema = ON;
UPDATE sqlite_schema
SET sql = replace(replace(sql,
    'state = ''timed_out'' OR state = ''cancelled'' OR
                                             state = ''lost''),',
    'state = ''timed_out'' OR state = ''cancelled'' OR
                                             state = ''lost'' OR state = ''rejected''),'),
    'late_state = ''cancelled''),',
    'late_state = ''cancelled'' OR
                                                        late_state = ''rejected''),')
WHERE type = 'table' AND name = 'attempts';
PRAGMA writable_schema = RESET;
CREATE TABLE schema_bump_0006 (x INTEGER);
DROP TABLE schema_bump_0006;

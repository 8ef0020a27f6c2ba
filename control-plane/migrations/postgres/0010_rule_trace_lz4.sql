-- SQLite's 0010 stores a long rule trace LZ4-compressed in its own column. PostgreSQL already
-- compresses a long text value itself (TOAST, for rows past about 2 KB), so the trace stays in
-- `rule_trace`; this makes that storage explicit (EXTENDED: compressed, then out of line) and
-- keeps the two migration lists numbered alike.
ALTER TABLE request_logs ALTER COLUMN rule_trace SET STORAGE EXTENDED;

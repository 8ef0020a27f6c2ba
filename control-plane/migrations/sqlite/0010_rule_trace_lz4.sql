-- A long rule trace is stored as an LZ4 block (its length prepended) instead of text: every row
-- repeats its rules' names, conditions and expected values, which made the trace most of a
-- row's bytes and of the WAL written per stored usage record. New rows with a trace of 512
-- bytes or more keep `rule_trace` empty and fill this column; older rows keep their text
-- (store/sqlite.rs, `pack_trace` / `unpack_trace`).
ALTER TABLE request_logs ADD COLUMN rule_trace_lz4 BLOB;

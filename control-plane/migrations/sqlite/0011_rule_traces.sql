-- A long rule trace is stored once (store/traces.rs): most requests are decided by the same
-- rules alike and carry the same trace, which was still most of a row's bytes after 0010.
-- `rule_traces` holds each distinct trace of 512 bytes or more, addressed by the SHA-256 of its
-- text and stored as in 0010 (an LZ4 block, its length prepended); a new row names it by
-- `rule_trace_id` and keeps `rule_trace` empty and `rule_trace_lz4` NULL. Older rows keep
-- their own trace. Rows of `rule_traces` are never deleted (ids are cached by the writer).
CREATE TABLE rule_traces (
    id        INTEGER PRIMARY KEY,
    digest    BLOB NOT NULL UNIQUE,
    trace_lz4 BLOB NOT NULL
);
ALTER TABLE request_logs ADD COLUMN rule_trace_id INTEGER;

-- A long rule trace is stored once (store/traces.rs): most requests are decided by the same
-- rules alike and carry the same trace, which was most of a row's bytes. `rule_traces` holds
-- each distinct trace of 512 bytes or more, addressed by the SHA-256 of its text (PostgreSQL
-- compresses the text itself); a new row names it by `rule_trace_id` and keeps `rule_trace`
-- empty. Older rows keep their own trace. Rows of `rule_traces` are never deleted (ids are
-- cached by every writer).
CREATE TABLE rule_traces (
    id     BIGSERIAL PRIMARY KEY,
    digest BYTEA NOT NULL UNIQUE,
    trace  TEXT NOT NULL
);
ALTER TABLE request_logs ADD COLUMN rule_trace_id BIGINT;

-- Request logs for analytics (sync.v1.UsageRecord fields 48–55), stored bodies, and per-key
-- body recording (config.v1.ApiKey.store_bodies).

ALTER TABLE request_logs ADD COLUMN metadata_json TEXT NOT NULL DEFAULT '';    -- the request's metadata object (compact JSON), '' = none
ALTER TABLE request_logs ADD COLUMN idempotency_key TEXT NOT NULL DEFAULT '';  -- Idempotency-Key header, '' = none
ALTER TABLE request_logs ADD COLUMN replay_of TEXT NOT NULL DEFAULT '';        -- request id replayed, '' = not a replay
ALTER TABLE request_logs ADD COLUMN key_name TEXT NOT NULL DEFAULT '';         -- key name when the request was made
ALTER TABLE request_logs ADD COLUMN workspace_id TEXT NOT NULL DEFAULT '';

-- Bodies are large and rarely read: kept out of the hot log table, one row per request that
-- has any (keys with store_bodies).
CREATE TABLE request_bodies (
    request_id    TEXT PRIMARY KEY,
    request_body  BYTEA,
    response_body BYTEA,
    truncated     BOOLEAN NOT NULL DEFAULT FALSE
);

ALTER TABLE api_keys ADD COLUMN store_bodies BOOLEAN NOT NULL DEFAULT FALSE;

-- Usage summaries and per-key totals can be answered from these indexes alone (index-only
-- scans): the columns they filter on first, then every column they add up. They replace the two
-- narrower indexes of 0001, as on SQLite.
DROP INDEX request_logs_received;
CREATE INDEX request_logs_received ON request_logs
    (received_at_ms, status, replay_of, input_tokens, output_tokens, cost_picos, key_id, provider,
     model);
DROP INDEX request_logs_key;
CREATE INDEX request_logs_key ON request_logs
    (key_id, received_at_ms, status, replay_of, input_tokens, output_tokens, cost_picos);

-- The log's other filters (model, provider, status, metadata) have no index of their own: the
-- list reads newest first (the unique index on seq) and stops after a page of matches.

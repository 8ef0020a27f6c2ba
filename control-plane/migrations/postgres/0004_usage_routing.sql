-- How each request was routed, per request log row (sync.v1.UsageRecord fields 42–47).

ALTER TABLE request_logs ADD COLUMN mode TEXT NOT NULL DEFAULT '';          -- cost|quality|latency|balance, '' = none
ALTER TABLE request_logs ADD COLUMN tier TEXT NOT NULL DEFAULT '';          -- classifier tier, '' = none
ALTER TABLE request_logs ADD COLUMN rule_trace TEXT NOT NULL DEFAULT '';    -- JSON array as sent in x-tokenrouter-rule-trace, '' = none
-- JSON array of {"provider","model","status","latency_ms","error"?}, in attempt order; the
-- last one produced the response. '[]' for rows stored before attempts were recorded.
ALTER TABLE request_logs ADD COLUMN attempts_json TEXT NOT NULL DEFAULT '[]';
ALTER TABLE request_logs ADD COLUMN ttfb_ms BIGINT NOT NULL DEFAULT 0;      -- 0 = none
ALTER TABLE request_logs ADD COLUMN retry_after_s BIGINT NOT NULL DEFAULT 0; -- largest 429 Retry-After, 0 = none

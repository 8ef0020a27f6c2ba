-- The configuration version at which each key last changed in a way the edges see (created,
-- revoked, updated, became metered), so a publish reads only the keys changed since the
-- previous one instead of every key (ARCHITECTURE.md, "Publishing").
ALTER TABLE api_keys ADD COLUMN changed_version BIGINT NOT NULL DEFAULT 0;
CREATE INDEX api_keys_changed_version ON api_keys (changed_version);

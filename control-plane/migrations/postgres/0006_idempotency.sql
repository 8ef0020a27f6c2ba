-- `Idempotency-Key`: one entry per (key, idempotency key). A request claims its entry
-- (`running`) before any provider is called; its usage record turns it `done` with the
-- response the client got (replayed for 24 h), or deletes it when the request failed in a way
-- a retry should repeat (5xx, 429, no response).
CREATE TABLE idempotency_keys (
    key_id          TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    -- SHA-256 of method, path and body: a reuse with another request is refused.
    request_sha256  BYTEA NOT NULL,
    request_id      TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('running', 'done')),
    status          BIGINT,
    content_type    TEXT,
    body            BYTEA,
    created_at_ms   BIGINT NOT NULL,
    -- A running claim lapses after a few minutes (its edge died); a done one after 24 h.
    expires_at_ms   BIGINT NOT NULL,
    PRIMARY KEY (key_id, idempotency_key)
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at_ms);

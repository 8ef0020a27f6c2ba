-- tokenrouter control plane, SQLite schema v1.
-- Booleans are INTEGER 0/1, times are Unix milliseconds, money is integer (micro- or pico-dollars).

CREATE TABLE workspaces (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
);
INSERT INTO workspaces (id, name, created_at_ms) VALUES ('default', 'default', 0);

CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,           -- key_<hex>
    name          TEXT NOT NULL,
    key_prefix    TEXT NOT NULL,              -- sk-tr-abcd, for display only
    sha256        BLOB NOT NULL UNIQUE,       -- the only form of the raw key we keep
    workspace_id  TEXT NOT NULL REFERENCES workspaces (id),
    status        TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
    created_at_ms INTEGER NOT NULL,
    revoked_at_ms INTEGER
);

CREATE TABLE providers (
    name              TEXT PRIMARY KEY,
    kind              TEXT NOT NULL,
    base_url          TEXT NOT NULL,
    credential_sealed BLOB,                   -- AES-256-GCM: nonce || ciphertext || tag
    enabled           INTEGER NOT NULL DEFAULT 1,
    created_at_ms     INTEGER NOT NULL
);

CREATE TABLE models (
    provider_kind                      TEXT NOT NULL,
    id                                 TEXT NOT NULL,
    upstream_model                     TEXT NOT NULL,
    input_price_micros_per_mtok        INTEGER NOT NULL,
    output_price_micros_per_mtok       INTEGER NOT NULL,
    cached_input_price_micros_per_mtok INTEGER NOT NULL,
    context_window                     INTEGER NOT NULL,
    enabled                            INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (provider_kind, id)
);

-- One row; bumped in the same transaction as every configuration write.
CREATE TABLE config_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT INTO config_version (id, version) VALUES (1, 0);

-- One row per gateway request, idempotent by request_id (edges resend unacknowledged batches).
-- Insertion order (rowid) breaks ties between rows received in the same millisecond.
CREATE TABLE request_logs (
    request_id         TEXT PRIMARY KEY,
    started_at_ms      INTEGER NOT NULL,
    key_id             TEXT NOT NULL,
    client_api         TEXT NOT NULL,
    requested_model    TEXT NOT NULL,
    provider           TEXT NOT NULL,
    model              TEXT NOT NULL,
    status             INTEGER NOT NULL,
    input_tokens       INTEGER NOT NULL,
    output_tokens      INTEGER NOT NULL,
    cached_tokens      INTEGER NOT NULL,
    reasoning_tokens   INTEGER NOT NULL,
    latency_ms         INTEGER NOT NULL,
    cost_picos         INTEGER NOT NULL,
    stream             INTEGER NOT NULL,
    error_type         TEXT NOT NULL,
    node_id            TEXT NOT NULL,
    received_at_ms     INTEGER NOT NULL
);
CREATE INDEX request_logs_received ON request_logs (received_at_ms);
CREATE INDEX request_logs_key ON request_logs (key_id, received_at_ms);

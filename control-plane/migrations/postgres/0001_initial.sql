-- tokenrouter control plane, PostgreSQL schema v1 (the same schema as migrations/sqlite/, one
-- migration per SQLite one with the same number).
-- Booleans are BOOLEAN, times are Unix milliseconds (BIGINT), money is integer (BIGINT micro- or
-- pico-dollars), binary values are BYTEA, JSON is TEXT (stored and compared as written).
-- SQLite's implicit `rowid` orders models and request logs by insertion; here an identity
-- column `seq` does.

CREATE TABLE workspaces (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL
);
INSERT INTO workspaces (id, name, created_at_ms) VALUES ('default', 'default', 0);

CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,           -- key_<hex>
    name          TEXT NOT NULL,
    key_prefix    TEXT NOT NULL,              -- sk-tr-abcd, for display only
    sha256        BYTEA NOT NULL UNIQUE,      -- the only form of the raw key we keep
    workspace_id  TEXT NOT NULL REFERENCES workspaces (id),
    status        TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
    created_at_ms BIGINT NOT NULL,
    revoked_at_ms BIGINT
);

CREATE TABLE providers (
    name              TEXT PRIMARY KEY,
    kind              TEXT NOT NULL,
    base_url          TEXT NOT NULL,
    credential_sealed BYTEA,                  -- AES-256-GCM: nonce || ciphertext || tag
    enabled           BOOLEAN NOT NULL DEFAULT TRUE,
    created_at_ms     BIGINT NOT NULL
);

CREATE TABLE models (
    provider_kind                      TEXT NOT NULL,
    id                                 TEXT NOT NULL,
    upstream_model                     TEXT NOT NULL,
    input_price_micros_per_mtok        BIGINT NOT NULL,
    output_price_micros_per_mtok       BIGINT NOT NULL,
    cached_input_price_micros_per_mtok BIGINT NOT NULL,
    context_window                     BIGINT NOT NULL,
    enabled                            BOOLEAN NOT NULL DEFAULT TRUE,
    -- Seeding order = catalogue order (bare-model resolution relies on it); an upsert keeps it.
    seq                                BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    PRIMARY KEY (provider_kind, id)
);

-- One row; bumped in the same transaction as every configuration write (whose row lock also
-- serialises configuration writes across processes).
CREATE TABLE config_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO config_version (id, version) VALUES (1, 0);

-- One row per gateway request, idempotent by request_id (edges resend unacknowledged batches).
-- Insertion order (seq) breaks ties between rows received in the same millisecond.
CREATE TABLE request_logs (
    request_id         TEXT PRIMARY KEY,
    started_at_ms      BIGINT NOT NULL,
    key_id             TEXT NOT NULL,
    client_api         TEXT NOT NULL,
    requested_model    TEXT NOT NULL,
    provider           TEXT NOT NULL,
    model              TEXT NOT NULL,
    status             BIGINT NOT NULL,
    input_tokens       BIGINT NOT NULL,
    output_tokens      BIGINT NOT NULL,
    cached_tokens      BIGINT NOT NULL,
    reasoning_tokens   BIGINT NOT NULL,
    latency_ms         BIGINT NOT NULL,
    cost_picos         BIGINT NOT NULL,
    stream             BOOLEAN NOT NULL,
    error_type         TEXT NOT NULL,
    node_id            TEXT NOT NULL,
    received_at_ms     BIGINT NOT NULL,
    seq                BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE
);
CREATE INDEX request_logs_received ON request_logs (received_at_ms);
CREATE INDEX request_logs_key ON request_logs (key_id, received_at_ms);

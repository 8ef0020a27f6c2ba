-- Balances, limits and top-ups.
--
-- Money is integer pico-dollars (1e-12 USD; i64 holds up to ~9.2 million USD per owner).
-- A NULL balance means "not metered": the owner's requests are never refused for credit.
-- Limits: NULL = inherit (key: its workspace's; workspace: the server default), 0 = off.
ALTER TABLE api_keys ADD COLUMN balance_picos INTEGER;
ALTER TABLE api_keys ADD COLUMN rps_limit INTEGER;
ALTER TABLE api_keys ADD COLUMN hour_total_tokens INTEGER;
ALTER TABLE api_keys ADD COLUMN hour_input_tokens INTEGER;
ALTER TABLE api_keys ADD COLUMN hour_output_tokens INTEGER;

ALTER TABLE workspaces ADD COLUMN balance_picos INTEGER;
ALTER TABLE workspaces ADD COLUMN rps_limit INTEGER;
ALTER TABLE workspaces ADD COLUMN hour_total_tokens INTEGER;
ALTER TABLE workspaces ADD COLUMN hour_input_tokens INTEGER;
ALTER TABLE workspaces ADD COLUMN hour_output_tokens INTEGER;

-- A provider's fallback credentials: AES-256-GCM over a JSON array of strings (same AAD as
-- the primary); NULL = none.
ALTER TABLE providers ADD COLUMN fallbacks_sealed BLOB;
ALTER TABLE providers ADD COLUMN fallback_count INTEGER NOT NULL DEFAULT 0;

-- Every credit ever added. `external_id` (a payment backend's event id) makes a webhook
-- delivered twice credit once.
CREATE TABLE credit_ledger (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    owner_kind    TEXT NOT NULL CHECK (owner_kind IN ('key', 'workspace')),
    owner_id      TEXT NOT NULL,
    amount_picos  INTEGER NOT NULL,
    source        TEXT NOT NULL,
    external_id   TEXT UNIQUE,
    note          TEXT NOT NULL DEFAULT '',
    created_at_ms INTEGER NOT NULL
);
CREATE INDEX credit_ledger_owner ON credit_ledger (owner_kind, owner_id);

-- Checkout sessions handed out by `topup` (paid or not: credit comes only from the webhook).
CREATE TABLE topup_sessions (
    session_id    TEXT PRIMARY KEY,
    key_id        TEXT NOT NULL REFERENCES api_keys (id),
    amount_picos  INTEGER NOT NULL,
    checkout_url  TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL
);

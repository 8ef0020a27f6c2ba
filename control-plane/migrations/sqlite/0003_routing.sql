-- Model capabilities, routing rules (seed 003's `routing_rules`) and per-key routing
-- configurations (one per key).

-- What the catalogue says about a model beyond its prices (filter/engine/src/catalogue.rs).
-- Rows seeded before this migration get the built-in values on the next start: seeding fills
-- these columns of a built-in model only while its `price_source` is '' and `updated_at_ms` 0
-- (never edited through the API), so it happens once and never undoes an operator's edit.
ALTER TABLE models ADD COLUMN tools INTEGER NOT NULL DEFAULT 0;
ALTER TABLE models ADD COLUMN vision INTEGER NOT NULL DEFAULT 0;
ALTER TABLE models ADD COLUMN json_mode INTEGER NOT NULL DEFAULT 0;
ALTER TABLE models ADD COLUMN streaming INTEGER NOT NULL DEFAULT 1;
ALTER TABLE models ADD COLUMN embeddings INTEGER NOT NULL DEFAULT 0;
ALTER TABLE models ADD COLUMN quality INTEGER NOT NULL DEFAULT 0;           -- 0–100
ALTER TABLE models ADD COLUMN tier TEXT NOT NULL DEFAULT '';                -- simple|medium|complex|reasoning
ALTER TABLE models ADD COLUMN max_output_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE models ADD COLUMN price_source TEXT NOT NULL DEFAULT '';
ALTER TABLE models ADD COLUMN price_as_of TEXT NOT NULL DEFAULT '';         -- YYYY-MM-DD
ALTER TABLE models ADD COLUMN display_name TEXT NOT NULL DEFAULT '';
ALTER TABLE models ADD COLUMN updated_at_ms INTEGER NOT NULL DEFAULT 0;     -- 0 = as seeded

CREATE TABLE routing_rules (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: traces name rules by id
    name          TEXT NOT NULL UNIQUE,
    priority      INTEGER NOT NULL,                   -- higher first
    is_enabled    INTEGER NOT NULL,
    match_json    TEXT NOT NULL,                      -- JSON object, validated by the engine
    action_json   TEXT NOT NULL,                      -- JSON object, validated by the engine
    key_id        TEXT NOT NULL,                      -- '' = every key
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);

CREATE TABLE routing_configs (
    key_id        TEXT PRIMARY KEY REFERENCES api_keys (id),
    active        INTEGER NOT NULL,
    strategy      TEXT NOT NULL,                      -- fallback | split | rules (engine-validated)
    backends_json TEXT NOT NULL,                      -- [{"model","priority","weight"}]
    rules_json    TEXT NOT NULL,                      -- [{"name","match_json","backends"}]
    updated_at_ms INTEGER NOT NULL
);

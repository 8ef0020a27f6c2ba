-- Firewall rules (ARCHITECTURE.md, "Firewall"), and what the firewall did per request.

CREATE TABLE firewall_rules (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    name            TEXT NOT NULL UNIQUE,
    priority        INTEGER NOT NULL,
    is_enabled      INTEGER NOT NULL,
    scope           TEXT NOT NULL CHECK (scope IN ('prompt', 'response', 'metadata')),
    type            TEXT NOT NULL CHECK (type IN ('substring', 'regex')),
    pattern         TEXT NOT NULL,
    action          TEXT NOT NULL CHECK (action IN ('block', 'mask', 'warn')),
    replacement     TEXT NOT NULL,             -- '' = the default, [REDACTED]
    key_id          TEXT NOT NULL,             -- '' = every key
    max_match_chars INTEGER NOT NULL,          -- regex only; 0 = the default
    "check"         TEXT NOT NULL,             -- '' or 'luhn'
    template        TEXT NOT NULL,             -- template it came from, '' for none
    created_at_ms   INTEGER NOT NULL,
    updated_at_ms   INTEGER NOT NULL
);

-- JSON arrays of strings: "action:scope:name" per applied rule, and the warnings.
ALTER TABLE request_logs ADD COLUMN firewall_actions TEXT NOT NULL DEFAULT '[]';
ALTER TABLE request_logs ADD COLUMN warnings TEXT NOT NULL DEFAULT '[]';

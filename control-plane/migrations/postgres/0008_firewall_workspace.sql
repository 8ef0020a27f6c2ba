-- Firewall rules scoped to a workspace (ARCHITECTURE.md, "Firewall"): '' = every workspace,
-- else only requests of keys in that workspace (`key_id`, when set, narrows it to one key).
ALTER TABLE firewall_rules ADD COLUMN workspace_id TEXT NOT NULL DEFAULT '';

-- A token may be confined to a device selector (docs/adr/0031): the selector, as the rollout
-- request's JSON; null for a token that reaches the whole fleet.
ALTER TABLE access_tokens ADD COLUMN IF NOT EXISTS scope jsonb;

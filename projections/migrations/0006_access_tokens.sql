-- The credential store: API tokens and device credentials, by the SHA-256 of their secret.
-- The ledger's ota.access-events records who issued and revoked what; this table is what a
-- request is checked against (the secret itself is kept nowhere).
CREATE TABLE IF NOT EXISTS access_tokens (
    token_id text PRIMARY KEY,
    name text NOT NULL,
    role text NOT NULL,
    secret_sha256 bytea NOT NULL,
    issued_by text NOT NULL,
    issued_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,
    revoked_at timestamptz
);
-- One live token per name (a device has one live credential).
CREATE UNIQUE INDEX IF NOT EXISTS access_tokens_live_name ON access_tokens (name)
    WHERE revoked_at IS NULL;

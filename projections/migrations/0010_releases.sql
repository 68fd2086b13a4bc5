-- The release catalogue and the image repository (docs/adr/0038). The API writes a release row
-- in the same transaction in which it appends the ReleaseRegistered or ReleaseStateChanged event,
-- as it does for credentials. TUF metadata files are kept by role and version exactly as signed
-- (the bytes clients verify); the latest version of a role is the one served as current.
CREATE TABLE IF NOT EXISTS releases (
    release_id text PRIMARY KEY,
    version text NOT NULL,
    models text[] NOT NULL,
    hardware_revs text[] NOT NULL,
    sha256 text NOT NULL,
    length bigint NOT NULL,
    notes text NOT NULL,
    registered_by text NOT NULL,
    registered_at timestamptz NOT NULL DEFAULT now(),
    state text NOT NULL DEFAULT 'draft' CHECK (state IN ('draft', 'published', 'deprecated')),
    targets_version bigint,
    changed_at timestamptz
);
CREATE TABLE IF NOT EXISTS tuf_metadata (
    role text NOT NULL CHECK (role IN ('root', 'targets', 'snapshot', 'timestamp')),
    version bigint NOT NULL,
    body bytea NOT NULL,
    expires_at timestamptz NOT NULL,
    stored_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (role, version)
);
-- The director's statement counter: one sequence, so every device's statements only grow.
CREATE SEQUENCE IF NOT EXISTS director_counter;

-- Snapshots of the fleet as of a time (`otaledger rebuild --until T --into NAME`): each is a
-- schema of its own; the summary's `as_of` answers from the newest at or before the time asked.
CREATE TABLE snapshots (
    name       text PRIMARY KEY,
    until      timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

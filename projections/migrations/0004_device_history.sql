-- Each device's history for GET /v1/devices/{id}/history: registrations and install reports
-- one row each, heartbeats summarised as runs on one firmware version (a new run after a
-- version change or a silence longer than the run gap).
CREATE TABLE device_history (
    device_id   text        NOT NULL,
    partition   int         NOT NULL,
    "offset"    bigint      NOT NULL,
    occurred_at timestamptz NOT NULL,
    event_type  text        NOT NULL,
    summary     text        NOT NULL,
    -- Heartbeat runs: the version, the last heartbeat and how many.
    version     text,
    until_at    timestamptz,
    count       bigint      NOT NULL DEFAULT 1,
    PRIMARY KEY (device_id, partition, "offset")
);
CREATE INDEX device_history_time ON device_history (device_id, occurred_at, partition, "offset");

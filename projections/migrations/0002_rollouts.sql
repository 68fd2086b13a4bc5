-- Joiners are found by first-seen time.
CREATE INDEX devices_first_seen ON devices (first_seen_at);

-- Rollouts, folded from ota.rollout-events.
CREATE TABLE rollouts (
    rollout_id   text PRIMARY KEY,
    state        text        NOT NULL,
    state_reason text,
    requested_by text        NOT NULL,
    release      jsonb       NOT NULL,
    selector     jsonb       NOT NULL,
    strategy     jsonb       NOT NULL,
    current_wave int         NOT NULL DEFAULT 0,
    targeted     bigint      NOT NULL DEFAULT 0,
    requested_at timestamptz NOT NULL,
    started_at   timestamptz,
    finished_at  timestamptz,
    updated_at   timestamptz NOT NULL
);
CREATE INDEX rollouts_requested ON rollouts (requested_at DESC, rollout_id);

-- Each targeted device's state in a rollout.
CREATE TABLE rollout_devices (
    rollout_id   text        NOT NULL,
    device_id    text        NOT NULL,
    wave         int         NOT NULL,
    state        text        NOT NULL,
    attempt      int         NOT NULL DEFAULT 0,
    command_id   uuid,
    from_version text,
    reason       text,
    updated_at   timestamptz NOT NULL,
    PRIMARY KEY (rollout_id, device_id)
);
CREATE INDEX rollout_devices_state ON rollout_devices (rollout_id, state, device_id);

-- The explained timeline: requests and every rollout-level decision with its inputs.
CREATE TABLE rollout_decisions (
    rollout_id  text        NOT NULL,
    partition   int         NOT NULL,
    "offset"    bigint      NOT NULL,
    event_id    uuid        NOT NULL,
    event_type  text        NOT NULL,
    occurred_at timestamptz NOT NULL,
    summary     text        NOT NULL,
    detail      jsonb       NOT NULL,
    PRIMARY KEY (rollout_id, partition, "offset")
);

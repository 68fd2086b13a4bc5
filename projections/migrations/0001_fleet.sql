-- The fleet view: one row per device, folded from ota.device-events.
CREATE TABLE devices (
    device_id         text PRIMARY KEY,
    model             text,
    site              text,
    tags              text[],
    gateway_id        text,
    hardware_rev      text,
    firmware_version  text,
    first_seen_at     timestamptz NOT NULL,
    last_seen_at      timestamptz NOT NULL,
    last_heartbeat_at timestamptz,
    uptime_s          bigint,
    cpu_pct           real,
    mem_pct           real,
    temperature_c     real,
    error_count       int,
    signal_dbm        int,
    events            bigint NOT NULL,
    -- Position of the last applied event: redelivered events at or before it are ignored.
    last_partition    int    NOT NULL,
    last_offset       bigint NOT NULL
);

CREATE INDEX devices_firmware ON devices (firmware_version, device_id);
CREATE INDEX devices_model ON devices (model, device_id);
CREATE INDEX devices_site ON devices (site, device_id);
CREATE INDEX devices_tags ON devices USING gin (tags);
CREATE INDEX devices_last_seen ON devices (last_seen_at);

-- Device counts per firmware version, model and site, kept by the projector in the same
-- transaction as the rows, so the fleet summary never scans the fleet.
CREATE TABLE fleet_counts (
    dimension text   NOT NULL,
    value     text   NOT NULL,
    devices   bigint NOT NULL,
    PRIMARY KEY (dimension, value)
);

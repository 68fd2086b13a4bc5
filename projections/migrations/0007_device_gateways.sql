-- Which gateway reports for which device, set only by provisioning (ota.access-events'
-- DeviceAttached): the AMQP bridge accepts a gateway's report for a device only while the
-- device is attached to it (docs/adr/0029). A device absent here reports directly.
CREATE TABLE IF NOT EXISTS device_gateways (
    device_id text PRIMARY KEY,
    gateway_id text NOT NULL,
    attached_by text NOT NULL,
    attached_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS device_gateways_gateway ON device_gateways (gateway_id);

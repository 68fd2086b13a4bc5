-- Heartbeats change last_seen_at and the health columns of a device, nothing else. With
-- last_seen_at indexed, each one was a non-HOT update: a new entry in all seven indexes of
-- devices (one GIN) and dead tuples for vacuum. Without that index, and with room left on
-- each page, a heartbeat rewrites its row in place (ADR 0015).
DROP INDEX devices_last_seen;
ALTER TABLE devices SET (fillfactor = 70);

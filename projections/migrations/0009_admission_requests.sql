-- Devices that asked to be admitted while admission.pending is on (docs/adr/0032), one row per
-- device and key: the fingerprint is the SHA-256 (hex) of a secret the device made itself and
-- sends only to claim its credential. An admin accepts or rejects a row; an accepted row is
-- claimed once, when the device's credential is minted. Requests stay out of the ledger (anyone
-- can make one); decisions are AdmissionDecided events.
CREATE TABLE IF NOT EXISTS admission_requests (
    device_id text NOT NULL,
    fingerprint text NOT NULL,
    model text,
    requested_at timestamptz NOT NULL DEFAULT now(),
    state text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'accepted', 'rejected', 'claimed')),
    decided_by text,
    decided_at timestamptz,
    PRIMARY KEY (device_id, fingerprint)
);
CREATE INDEX IF NOT EXISTS admission_requests_pending ON admission_requests (requested_at)
    WHERE state = 'pending';

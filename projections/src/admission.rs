//! Devices asking to be admitted (`admission.pending`, ADR 0032). A device that was not
//! provisioned makes a secret of its own and asks with the secret's SHA-256 (its fingerprint);
//! an admin who sees the same fingerprint on the device accepts it; the device then claims its
//! credential with the secret itself, once. Requests are bounded: a stranger can fill the
//! table, never the ledger.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool};

use crate::{DbContext, Result};

/// Requests one device id may have waiting at once (different keys: a device that lost its
/// secret asks again; a squatter's request waits beside the real one for the admin to tell
/// apart by fingerprint).
pub const MAX_PER_DEVICE: i64 = 4;
/// Days a request waits for a decision before it is dropped.
pub const PENDING_DAYS: i32 = 30;

row_type! {
    /// A device's request to be admitted.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
    pub struct AdmissionRow {
        pub device_id: String,
        /// SHA-256 (hex) of the secret the device will claim its credential with.
        pub fingerprint: String,
        pub model: Option<String>,
        pub requested_at: DateTime<Utc>,
        /// pending, accepted, rejected or claimed.
        pub state: String,
        pub decided_by: Option<String>,
        pub decided_at: Option<DateTime<Utc>>,
    }
}

const COLUMNS: &str = "device_id, fingerprint, model, requested_at, state, decided_by, decided_at";

/// What became of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requested {
    /// Recorded now, or already (a device asking again with the same key gets its row back).
    Recorded(AdmissionRow),
    /// The device already holds a live credential: there is nothing to admit.
    Provisioned,
    /// Too many requests are waiting (in all, or for this device id).
    Full,
}

/// The fingerprint of a device's secret: its SHA-256, in hex.
#[must_use]
pub fn fingerprint(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Records `device`'s request to be admitted with the key `fingerprint`, unless `max_pending`
/// requests are waiting already. Requests older than [`PENDING_DAYS`] are dropped first.
pub async fn request(
    pool: &PgPool,
    device: &str,
    fingerprint: &str,
    model: Option<&str>,
    max_pending: i64,
) -> Result<Requested> {
    let mut tx = pool.begin().await.db("beginning an admission request")?;
    // One writer at a time, so the bound is exact under a flood (the table is small and a
    // request is rare beside reports).
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('otaledger admission_requests'))")
        .execute(&mut *tx)
        .await
        .db("locking admission requests")?;
    let provisioned: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM access_tokens WHERE name = $1 AND role = 'device'
             AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now()))",
    )
    .bind(device)
    .fetch_one(&mut *tx)
    .await
    .db("reading a device's credential")?;
    if provisioned {
        return Ok(Requested::Provisioned);
    }
    sqlx::query(
        "DELETE FROM admission_requests
         WHERE state = 'pending' AND requested_at < now() - make_interval(days => $1)",
    )
    .bind(PENDING_DAYS)
    .execute(&mut *tx)
    .await
    .db("dropping stale admission requests")?;
    let existing = sqlx::query_as::<_, AdmissionRow>(&format!(
        "SELECT {COLUMNS} FROM admission_requests WHERE device_id = $1 AND fingerprint = $2"
    ))
    .bind(device)
    .bind(fingerprint)
    .fetch_optional(&mut *tx)
    .await
    .db("reading an admission request")?;
    if let Some(row) = existing {
        return Ok(Requested::Recorded(row));
    }
    let (all, this_device): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE device_id = $1)
         FROM admission_requests WHERE state = 'pending'",
    )
    .bind(device)
    .fetch_one(&mut *tx)
    .await
    .db("counting admission requests")?;
    if all >= max_pending || this_device >= MAX_PER_DEVICE {
        return Ok(Requested::Full);
    }
    let row = sqlx::query_as::<_, AdmissionRow>(&format!(
        "INSERT INTO admission_requests (device_id, fingerprint, model) VALUES ($1, $2, $3)
         RETURNING {COLUMNS}"
    ))
    .bind(device)
    .bind(fingerprint)
    .bind(model)
    .fetch_one(&mut *tx)
    .await
    .db("recording an admission request")?;
    tx.commit().await.db("committing an admission request")?;
    Ok(Requested::Recorded(row))
}

/// Requests, oldest first; `pending` leaves out decided ones. At most `limit`.
pub async fn list(pool: &PgPool, pending: bool, limit: i64) -> Result<Vec<AdmissionRow>> {
    sqlx::query_as::<_, AdmissionRow>(&format!(
        "SELECT {COLUMNS} FROM admission_requests WHERE NOT $1 OR state = 'pending'
         ORDER BY requested_at, device_id, fingerprint LIMIT $2"
    ))
    .bind(pending)
    .bind(limit)
    .fetch_all(pool)
    .await
    .db("listing admission requests")
}

/// The request of `device` with key `fingerprint`.
pub async fn get(pool: &PgPool, device: &str, fingerprint: &str) -> Result<Option<AdmissionRow>> {
    sqlx::query_as::<_, AdmissionRow>(&format!(
        "SELECT {COLUMNS} FROM admission_requests WHERE device_id = $1 AND fingerprint = $2"
    ))
    .bind(device)
    .bind(fingerprint)
    .fetch_optional(pool)
    .await
    .db("reading an admission request")
}

/// Accepts or rejects a pending request in the caller's transaction; `None` when there is no
/// pending request of that device and key.
pub async fn decide(
    tx: &mut PgConnection,
    device: &str,
    fingerprint: &str,
    accept: bool,
    by: &str,
) -> Result<Option<AdmissionRow>> {
    sqlx::query_as::<_, AdmissionRow>(&format!(
        "UPDATE admission_requests
         SET state = CASE WHEN $3 THEN 'accepted' ELSE 'rejected' END,
             decided_by = $4, decided_at = now()
         WHERE device_id = $1 AND fingerprint = $2 AND state = 'pending'
         RETURNING {COLUMNS}"
    ))
    .bind(device)
    .bind(fingerprint)
    .bind(accept)
    .bind(by)
    .fetch_optional(&mut *tx)
    .await
    .db("deciding an admission request")
}

/// Marks an accepted request claimed in the caller's transaction (the row stays locked until
/// it ends, so two claims of one request cannot both pass); `None` when the request is not
/// accepted (pending, rejected, claimed already, or unknown).
pub async fn claim(
    tx: &mut PgConnection,
    device: &str,
    fingerprint: &str,
) -> Result<Option<AdmissionRow>> {
    sqlx::query_as::<_, AdmissionRow>(&format!(
        "UPDATE admission_requests SET state = 'claimed'
         WHERE device_id = $1 AND fingerprint = $2 AND state = 'accepted'
         RETURNING {COLUMNS}"
    ))
    .bind(device)
    .bind(fingerprint)
    .fetch_optional(&mut *tx)
    .await
    .db("claiming an admission")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_fingerprint_is_the_secrets_sha256_in_hex() {
        // echo -n abc | sha256sum
        assert_eq!(
            super::fingerprint("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}

//! The release catalogue and the image repository's metadata files (ADR 0038).

use chrono::{DateTime, Utc};
use otaledger_domain::events::ReleaseRegistered;
use otaledger_domain::release::ReleaseState;
use sqlx::{PgConnection, PgPool};

use crate::{DbContext, Result};

row_type! {
    /// A release as the catalogue holds it.
    #[derive(Debug, Clone, PartialEq)]
    pub struct ReleaseRow {
        pub release_id: String,
        pub version: String,
        pub models: Vec<String>,
        pub hardware_revs: Vec<String>,
        pub sha256: String,
        pub length: i64,
        pub notes: String,
        pub registered_by: String,
        pub registered_at: DateTime<Utc>,
        pub state: String,
        pub targets_version: Option<i64>,
    }
}

impl ReleaseRow {
    /// The registration this row holds.
    #[must_use]
    pub fn registered(&self) -> ReleaseRegistered {
        ReleaseRegistered {
            release_id: self.release_id.clone(),
            version: self.version.clone(),
            models: self.models.clone(),
            hardware_revs: self.hardware_revs.clone(),
            sha256: self.sha256.clone(),
            length: self.length,
            notes: self.notes.clone(),
            registered_by: self.registered_by.clone(),
        }
    }

    #[must_use]
    pub fn state(&self) -> ReleaseState {
        ReleaseState::parse(&self.state).unwrap_or(ReleaseState::Draft)
    }
}

const COLUMNS: &str = "release_id, version, models, hardware_revs, sha256, length, notes, \
                       registered_by, registered_at, state, targets_version";

/// Adds a draft; false when the id is taken.
pub async fn insert(conn: &mut PgConnection, r: &ReleaseRegistered) -> Result<bool> {
    let n = sqlx::query(
        "INSERT INTO releases (release_id, version, models, hardware_revs, sha256, length, notes,
                               registered_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (release_id) DO NOTHING",
    )
    .bind(&r.release_id)
    .bind(&r.version)
    .bind(&r.models)
    .bind(&r.hardware_revs)
    .bind(&r.sha256)
    .bind(r.length)
    .bind(&r.notes)
    .bind(&r.registered_by)
    .execute(conn)
    .await
    .db("registering a release")?;
    Ok(n.rows_affected() == 1)
}

/// One release, locked for the transaction's change of state when `for_update`.
pub async fn get(
    conn: &mut PgConnection,
    release_id: &str,
    for_update: bool,
) -> Result<Option<ReleaseRow>> {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM releases WHERE release_id = $1{lock}"
    ))
    .bind(release_id)
    .fetch_optional(conn)
    .await
    .db("reading a release")
}

/// Every release, newest first, in `state` when given.
pub async fn list(pool: &PgPool, state: Option<ReleaseState>) -> Result<Vec<ReleaseRow>> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM releases WHERE ($1::text IS NULL OR state = $1)
         ORDER BY registered_at DESC, release_id"
    ))
    .bind(state.map(ReleaseState::as_str))
    .fetch_all(pool)
    .await
    .db("listing releases")
}

/// Moves a release to `state` (the caller checked the transition).
pub async fn set_state(
    conn: &mut PgConnection,
    release_id: &str,
    state: ReleaseState,
    targets_version: Option<i64>,
) -> Result<()> {
    sqlx::query(
        "UPDATE releases SET state = $2, targets_version = coalesce($3, targets_version),
                changed_at = now() WHERE release_id = $1",
    )
    .bind(release_id)
    .bind(state.as_str())
    .bind(targets_version)
    .execute(conn)
    .await
    .db("changing a release's state")?;
    Ok(())
}

/// Serialises changes of the image repository across API instances for the transaction: two
/// publishers (or a publisher and the timestamp refresher) must not sign the same version. The
/// lock is the schema's: ledgers in other schemas of the database (tenants, tests) have their
/// own repository and must not wait on it (a shared key made one test's refresh skip while
/// another test published).
pub async fn lock_repository(conn: &mut PgConnection) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.tuf_metadata'))")
        .execute(conn)
        .await
        .db("locking the image repository")?;
    Ok(())
}

/// As [`lock_repository`], but without waiting: false when another transaction holds it.
pub async fn try_lock_repository(conn: &mut PgConnection) -> Result<bool> {
    sqlx::query_scalar(
        "SELECT pg_try_advisory_xact_lock(hashtext(current_schema() || '.tuf_metadata'))",
    )
    .fetch_one(conn)
    .await
    .db("trying the image repository's lock")
}

/// A metadata file as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataFile {
    pub version: i64,
    pub body: Vec<u8>,
    pub expires_at: DateTime<Utc>,
}

/// The latest version of `role`.
pub async fn latest(conn: &mut PgConnection, role: &str) -> Result<Option<MetadataFile>> {
    let row: Option<(i64, Vec<u8>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT version, body, expires_at FROM tuf_metadata WHERE role = $1
         ORDER BY version DESC LIMIT 1",
    )
    .bind(role)
    .fetch_optional(conn)
    .await
    .db("reading the latest metadata")?;
    Ok(row.map(|(version, body, expires_at)| MetadataFile {
        version,
        body,
        expires_at,
    }))
}

/// Version `version` of `role`.
pub async fn version(pool: &PgPool, role: &str, version: i64) -> Result<Option<Vec<u8>>> {
    sqlx::query_scalar("SELECT body FROM tuf_metadata WHERE role = $1 AND version = $2")
        .bind(role)
        .bind(version)
        .fetch_optional(pool)
        .await
        .db("reading metadata")
}

/// Stores a new version of `role`.
pub async fn put(conn: &mut PgConnection, role: &str, file: &MetadataFile) -> Result<()> {
    sqlx::query(
        "INSERT INTO tuf_metadata (role, version, body, expires_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(role)
    .bind(file.version)
    .bind(&file.body)
    .bind(file.expires_at)
    .execute(conn)
    .await
    .db("storing metadata")?;
    Ok(())
}

/// `n` new director statement numbers, ascending.
pub async fn director_counters(pool: &PgPool, n: usize) -> Result<Vec<i64>> {
    sqlx::query_scalar(
        "SELECT nextval('director_counter') FROM generate_series(1, $1::int) ORDER BY 1",
    )
    .bind(i32::try_from(n).unwrap_or(i32::MAX))
    .fetch_all(pool)
    .await
    .db("numbering director statements")
}

/// The model and hardware revision of each of `ids` the fleet view knows.
pub async fn hardware(
    pool: &PgPool,
    ids: &[String],
) -> Result<Vec<(String, String, Option<String>)>> {
    sqlx::query_as("SELECT device_id, coalesce(model, ''), hardware_rev FROM devices WHERE device_id = ANY($1)")
        .bind(ids)
        .fetch_all(pool)
        .await
        .db("looking up hardware")
}

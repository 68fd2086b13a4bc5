//! The image repository (TUF, ADR 0038): root and targets are signed offline by their owners
//! (`otaledger keys generate`, `otaledger release sign`); the server verifies them and signs only
//! `snapshot` and `timestamp`, with its online key, and re-signs `timestamp` before it expires.
//! Every metadata file is served under its version (`3.targets.json`, consistent snapshots) and
//! `timestamp.json` as the entry point; targets are the artifacts, by hash.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use otaledger_domain::tuf::metadata::{snapshot_json, timestamp_json};
use otaledger_domain::tuf::{Root, Signed, SigningKey, TufError};
use otaledger_projections::releases::{self, MetadataFile};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Principal;
use crate::params::Params;
use crate::{ApiError, AppState, ErrorBody};

/// How long a timestamp and a snapshot the server signs stay valid, in seconds. A timestamp
/// is re-signed once less than half of its life is left, so a client never meets an expired one
/// while the server runs; one that stops being re-signed freezes clients within a day at most.
pub const TIMESTAMP_LIFE_S: i64 = 24 * 3600;
pub const SNAPSHOT_LIFE_S: i64 = 7 * 24 * 3600;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(metadata))
        .routes(routes!(target))
        .routes(routes!(keys))
        .routes(routes!(put_root))
        .routes(routes!(renew_targets))
}

/// The server's online key (snapshot, timestamp) and the director's key, from secrets every
/// instance shares (the saga signs with the director's too).
pub async fn online_key(pool: &PgPool) -> Result<SigningKey, ApiError> {
    key(pool, "tuf_online_key").await
}

pub async fn director_key(pool: &PgPool) -> Result<SigningKey, ApiError> {
    key(pool, "director_key").await
}

async fn key(pool: &PgPool, table: &'static str) -> Result<SigningKey, ApiError> {
    let seed = otaledger_ledger::db::stored_secret(pool, table)
        .await
        .map_err(|e| ApiError::unavailable(&e))?;
    SigningKey::from_seed(seed).map_err(|e| ApiError::unavailable(&e))
}

pub(crate) fn refused(status: StatusCode, error: &'static str, e: &TufError) -> ApiError {
    ApiError {
        status,
        error,
        reason: e.to_string(),
    }
}

fn at(unix: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(unix, 0).unwrap_or_default()
}

/// The current root, parsed (`None` before the first).
pub(crate) async fn current_root(conn: &mut PgConnection) -> Result<Option<Root>, ApiError> {
    let Some(file) = releases::latest(conn, "root").await? else {
        return Ok(None);
    };
    let m = Signed::parse(&file.body).map_err(|e| ApiError::unavailable(&e))?;
    Root::parse(&m)
        .map(Some)
        .map_err(|e| ApiError::unavailable(&e))
}

/// Signs a new snapshot naming the latest targets (when `snapshot` or none is current) and a
/// new timestamp naming the latest snapshot, in the caller's transaction, which holds the
/// repository's lock. Nothing before the first targets: there is nothing to name.
pub(crate) async fn sign_online(
    conn: &mut PgConnection,
    key: &SigningKey,
    now: i64,
    snapshot: bool,
) -> Result<(), ApiError> {
    let Some(targets) = releases::latest(conn, "targets").await? else {
        return Ok(());
    };
    let current = releases::latest(conn, "snapshot").await?;
    let snapshot_version = match current {
        Some(s) if !snapshot => s.version,
        s => {
            let version = s.map_or(1, |s| s.version + 1);
            let expires = now + SNAPSHOT_LIFE_S;
            let body = snapshot_json(version as u64, expires, targets.version as u64);
            let file = MetadataFile {
                version,
                body: Signed::sign(body, &[key]).to_bytes(),
                expires_at: at(expires),
            };
            releases::put(conn, "snapshot", &file).await?;
            version
        }
    };
    let version = releases::latest(conn, "timestamp")
        .await?
        .map_or(1, |t| t.version + 1);
    let expires = now + TIMESTAMP_LIFE_S;
    let file = MetadataFile {
        version,
        body: Signed::sign(
            timestamp_json(version as u64, expires, snapshot_version as u64),
            &[key],
        )
        .to_bytes(),
        expires_at: at(expires),
    };
    releases::put(conn, "timestamp", &file).await?;
    Ok(())
}

/// Re-signs what would expire within half its life at `now`: the snapshot (and so the
/// timestamp), or the timestamp alone. Returns whether it signed anything. Run by every API
/// instance each minute; the repository's lock makes one of them do it.
pub async fn refresh(pool: &PgPool, key: &SigningKey, now: i64) -> Result<bool, ApiError> {
    let mut tx = pool.begin().await.map_err(|e| ApiError::unavailable(&e))?;
    // Another instance (or a publish) holds the repository: it signs; this one waits a minute.
    if !releases::try_lock_repository(&mut tx).await? {
        return Ok(false);
    }
    let due = |f: &Option<MetadataFile>, life: i64| {
        f.as_ref()
            .is_some_and(|f| f.expires_at.timestamp() - now < life / 2)
    };
    let snapshot = releases::latest(&mut tx, "snapshot").await?;
    let timestamp = releases::latest(&mut tx, "timestamp").await?;
    let resign_snapshot = due(&snapshot, SNAPSHOT_LIFE_S);
    if !resign_snapshot && !due(&timestamp, TIMESTAMP_LIFE_S) {
        // Ended now, not when sqlx gets round to a dropped transaction: until then it holds
        // the repository's lock, and the next refresh or publish on another connection finds
        // the lock taken (a test's refresh skipped so in CI).
        tx.rollback().await.map_err(|e| ApiError::unavailable(&e))?;
        return Ok(false);
    }
    sign_online(&mut tx, key, now, resign_snapshot).await?;
    tx.commit().await.map_err(|e| ApiError::unavailable(&e))?;
    tracing::info!(
        snapshot = resign_snapshot,
        "re-signed the repository's timestamp"
    );
    Ok(true)
}

/// Re-signs the timestamp (and snapshot) before they expire, every `every`, until shutdown.
pub async fn refresher(
    pool: PgPool,
    every: std::time::Duration,
    mut stop: otaledger_ledger::shutdown::ShutdownSignal,
) {
    let mut key = None;
    loop {
        if key.is_none() {
            key = online_key(&pool).await.ok();
        }
        if let Some(k) = &key {
            let now = otaledger_domain::time::now_micros() / 1_000_000;
            if let Err(e) = refresh(&pool, k, now).await {
                tracing::warn!(error = %e.reason, "could not re-sign the repository's timestamp");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = stop.wait() => return,
        }
    }
}

/// A metadata file's name: `timestamp.json`, `<role>.json` (the latest) or
/// `<version>.<role>.json`.
fn file_name(name: &str) -> Option<(&str, Option<i64>)> {
    let stem = name.strip_suffix(".json")?;
    let (version, role) = match stem.split_once('.') {
        Some((v, role)) => (Some(v.parse::<i64>().ok().filter(|v| *v >= 1)?), role),
        None => (None, stem),
    };
    otaledger_domain::tuf::metadata::ROLES
        .contains(&role)
        .then_some((role, version))
}

/// `{file}` in a metadata path.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
struct FilePath {
    /// `timestamp.json`, `<version>.root.json`, `<version>.snapshot.json`,
    /// `<version>.targets.json`, or `<role>.json` for a role's latest version.
    #[param(schema_with = file_schema, required = true)]
    file: String,
}

fn file_schema() -> utoipa::openapi::schema::ObjectBuilder {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .pattern(Some(
            r"^([1-9][0-9]{0,17}\.)?(root|targets|snapshot|timestamp)\.json$",
        ))
}

/// A metadata file of the image repository, exactly as signed. Open to everyone, as TUF
/// metadata is meant to be: it is signed, and says which images exist, not who has them; the
/// images themselves are not open.
#[utoipa::path(get, path = "/v1/tuf/{file}", operation_id = "getTufMetadata", tag = "releases",
    params(FilePath),
    responses(
        (status = 200, description = "The metadata file", body = serde_json::Value),
        (status = 404, description = "No such file (yet)", body = ErrorBody),
        crate::Unavailable,
    ))]
async fn metadata(
    State(s): State<AppState>,
    Path(file): Path<String>,
) -> Result<Response, ApiError> {
    let Some((role, version)) = file_name(&file) else {
        return Err(ApiError::not_found("no such metadata file"));
    };
    let body = match version {
        Some(v) => releases::version(&s.pool, role, v).await?,
        None => {
            let mut conn = s
                .pool
                .acquire()
                .await
                .map_err(|e| ApiError::unavailable(&e))?;
            releases::latest(&mut conn, role).await?.map(|f| f.body)
        }
    };
    let Some(body) = body else {
        return Err(ApiError::not_found(format!("the repository has no {file}")));
    };
    // A versioned file never changes; the entry points do.
    let cache = if version.is_some() {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    Ok((
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, cache),
        ],
        body,
    )
        .into_response())
}

/// `{file}` in a target's path.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
struct TargetPath {
    /// `<sha256>.<target name>`, as TUF clients ask for a target with consistent snapshots.
    #[param(schema_with = target_schema, required = true)]
    file: String,
}

fn target_schema() -> utoipa::openapi::schema::ObjectBuilder {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .pattern(Some(r"^[0-9a-fA-F]{64}\.[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"))
}

/// A target (an image) by hash, as TUF clients fetch it: the artifact, with the same rules as
/// `GET /v1/artifacts/{sha256}` (ranges, `ETag`; a commanded device, its gateway, an operator,
/// or a signed link).
#[utoipa::path(get, path = "/v1/tuf/targets/{file}", operation_id = "getTufTarget",
    security(("download_link" = [])), tag = "releases", params(TargetPath, crate::artifacts::LinkQuery),
    responses(
        (status = 200, description = "The image", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, description = "One byte range of it", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 304, description = "Not modified (If-None-Match)"),
        (status = 400, description = "A bad link", body = ErrorBody),
        (status = 401, description = "Neither a bearer token nor a signed link", body = ErrorBody),
        (status = 403, description = "Not commanded to install it, or a bad or expired link", body = ErrorBody),
        (status = 404, description = "No such target", body = ErrorBody),
        (status = 416, description = "The range is past its end", body = ErrorBody),
        crate::Unavailable,
    ))]
async fn target(
    State(s): State<AppState>,
    Path(file): Path<String>,
    Params(q): Params<crate::artifacts::LinkQuery>,
    headers: HeaderMap,
) -> Result<Response, Response> {
    let Some((hash, _name)) = file.split_once('.') else {
        return Err(ApiError::not_found("a target is <sha256>.<name>").into_response());
    };
    crate::artifacts::serve(&s, hash, &q, &headers).await
}

/// A public key in TUF's format, with its key id.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeyOut {
    pub keyid: String,
    /// `{"keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": "<hex>"}}`
    pub key: serde_json::Value,
}

/// The server's public keys: what a root must name for snapshot and timestamp, and what
/// devices are provisioned with to check the director's statements.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct KeysOut {
    pub online: KeyOut,
    pub director: KeyOut,
    /// The current root's version, if a root was installed.
    pub root_version: Option<i64>,
}

/// The server's online key (snapshot and timestamp roles) and director key, for
/// `otaledger keys generate` and for provisioning devices.
#[utoipa::path(get, path = "/v1/tuf/keys", operation_id = "getTufKeys", security(("token" = ["viewer"])), tag = "releases",
    responses((status = 200, description = "The server's public keys", body = KeysOut), crate::Unavailable))]
async fn keys(State(s): State<AppState>) -> Result<Json<KeysOut>, ApiError> {
    public_keys(&s.pool).await.map(Json)
}

/// The server's public keys and its root's version, as `GET /v1/tuf/keys` answers them.
pub async fn public_keys(pool: &PgPool) -> Result<KeysOut, ApiError> {
    let out = |k: SigningKey| KeyOut {
        keyid: k.public().key_id(),
        key: k.public().to_tuf(),
    };
    let mut conn = pool
        .acquire()
        .await
        .map_err(|e| ApiError::unavailable(&e))?;
    let root_version = releases::latest(&mut conn, "root")
        .await?
        .map(|f| f.version);
    Ok(KeysOut {
        online: out(online_key(pool).await?),
        director: out(director_key(pool).await?),
        root_version,
    })
}

/// TUF metadata as signed: what is signed, and its signatures. Which role, its version, its
/// keys and thresholds are checked by the server.
#[allow(dead_code)]
pub struct SignedIn;

impl utoipa::PartialSchema for SignedIn {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use otaledger_domain::json_schema::array_of;
        use utoipa::openapi::schema::{ObjectBuilder, Type};
        let text = || ObjectBuilder::new().schema_type(Type::String);
        let signature = ObjectBuilder::new()
            .schema_type(Type::Object)
            .property("keyid", text())
            .required("keyid")
            .property("sig", text())
            .required("sig");
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some("Signed TUF metadata (root, or targets for a release)"))
            .property("signed", ObjectBuilder::new().schema_type(Type::Object))
            .required("signed")
            .property("signatures", array_of(signature.build(), None))
            .required("signatures")
            .into()
    }
}
impl utoipa::ToSchema for SignedIn {}

/// What installing a root or renewing the targets answers: the version now current.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RootOut {
    pub version: i64,
}

/// Install the image repository's root: the first (version 1, signed by a threshold of its own
/// root keys), or the next one, signed by a threshold of the current root's root keys and its
/// own (key rotation). It must give snapshot and timestamp to the server's online key alone.
#[utoipa::path(post, path = "/v1/tuf/root", operation_id = "putTufRoot", security(("token" = ["admin"])), tag = "releases",
    request_body(content = SignedIn, content_type = "application/json", description = "A signed TUF root"),
    responses(
        (status = 201, description = "Installed", body = RootOut),
        (status = 400, description = "Not TUF root metadata", body = ErrorBody),
        (status = 422, description = "It does not verify (signatures, threshold, version, expiry, online key)", body = ErrorBody),
        crate::Unavailable,
    ))]
async fn put_root(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let offered = Signed::parse(&body)
        .map_err(|e| refused(StatusCode::BAD_REQUEST, "invalid_metadata", &e))?;
    let online = online_key(&s.pool).await?;
    let now = otaledger_domain::time::now_micros() / 1_000_000;
    let mut tx = s
        .pool
        .begin()
        .await
        .map_err(|e| ApiError::unavailable(&e))?;
    releases::lock_repository(&mut tx).await?;
    let current = current_root(&mut tx).await?;
    let unverified = |e: TufError| refused(StatusCode::UNPROCESSABLE_ENTITY, "unverified", &e);
    let root = Root::accept(current.as_ref(), &offered, now).map_err(unverified)?;
    let id = online.public().key_id();
    for role in ["snapshot", "timestamp"] {
        if root.keyids(role) != [id.clone()] {
            return Err(unverified(TufError::Mismatch(format!(
                "the root must give {role} to the server's online key {id} alone (GET /v1/tuf/keys)"
            ))));
        }
    }
    let version = i64::try_from(root.version).unwrap_or(i64::MAX);
    let file = MetadataFile {
        version,
        body: offered.to_bytes(),
        expires_at: at(root.expires),
    };
    releases::put(&mut tx, "root", &file).await?;
    tx.commit().await.map_err(|e| ApiError::unavailable(&e))?;
    tracing::info!(version, by = %who.name, "installed a TUF root");
    Ok((StatusCode::CREATED, Json(RootOut { version })).into_response())
}

/// Renew the targets metadata before it expires: the same targets, the next version, signed
/// offline with the release keys (`otaledger release renew`). Then a new snapshot and timestamp.
#[utoipa::path(post, path = "/v1/tuf/targets", operation_id = "renewTufTargets", security(("token" = ["approver"])), tag = "releases",
    request_body(content = SignedIn, content_type = "application/json", description = "Signed TUF targets metadata"),
    responses(
        (status = 201, description = "Installed", body = RootOut),
        (status = 400, description = "Not TUF targets metadata", body = ErrorBody),
        (status = 409, description = "No targets to renew yet", body = ErrorBody),
        (status = 422, description = "It does not verify, or lists other targets", body = ErrorBody),
        crate::Unavailable,
    ))]
async fn renew_targets(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let offered = Signed::parse(&body)
        .map_err(|e| refused(StatusCode::BAD_REQUEST, "invalid_metadata", &e))?;
    let online = online_key(&s.pool).await?;
    let now = otaledger_domain::time::now_micros() / 1_000_000;
    let mut tx = s
        .pool
        .begin()
        .await
        .map_err(|e| ApiError::unavailable(&e))?;
    releases::lock_repository(&mut tx).await?;
    let nothing = || ApiError {
        status: StatusCode::CONFLICT,
        error: "no_targets",
        reason: "the repository has no targets to renew yet: publish a release".into(),
    };
    let root = current_root(&mut tx).await?.ok_or_else(nothing)?;
    let file = releases::latest(&mut tx, "targets")
        .await?
        .ok_or_else(nothing)?;
    let current = Signed::parse(&file.body).map_err(|e| ApiError::unavailable(&e))?;
    let listed = otaledger_domain::tuf::metadata::targets_of(&current.signed)
        .map_err(|e| ApiError::unavailable(&e))?;
    let version = otaledger_domain::release::check_renewal(
        &offered,
        &root,
        (u64::try_from(file.version).unwrap_or(0), &listed),
        now,
    )
    .map_err(|e| refused(StatusCode::UNPROCESSABLE_ENTITY, "unverified", &e))?;
    let h = offered
        .header("targets")
        .map_err(|e| ApiError::unavailable(&e))?;
    let version = i64::try_from(version).unwrap_or(i64::MAX);
    let renewed = MetadataFile {
        version,
        body: offered.to_bytes(),
        expires_at: at(h.expires),
    };
    releases::put(&mut tx, "targets", &renewed).await?;
    sign_online(&mut tx, &online, now, true).await?;
    tx.commit().await.map_err(|e| ApiError::unavailable(&e))?;
    tracing::info!(version, by = %who.name, "renewed the targets metadata");
    Ok((StatusCode::CREATED, Json(RootOut { version })).into_response())
}

#[cfg(test)]
mod tests {
    use super::file_name;

    #[test]
    fn metadata_file_names() {
        assert_eq!(file_name("timestamp.json"), Some(("timestamp", None)));
        assert_eq!(file_name("3.targets.json"), Some(("targets", Some(3))));
        assert_eq!(file_name("1.root.json"), Some(("root", Some(1))));
        assert_eq!(file_name("0.root.json"), None);
        assert_eq!(file_name("x.root.json"), None);
        assert_eq!(file_name("3.other.json"), None);
        assert_eq!(file_name("root.txt"), None);
    }
}

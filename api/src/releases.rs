//! The release catalogue (ADR 0038): `POST /v1/releases` registers a draft (its artifact must
//! be in the store with the release's digest and length); `…/publish` takes targets metadata
//! signed offline by the release keys (`otaledger release sign`) and publishes the release only
//! if it verifies; `…/deprecate` ends its rollouts. Each change is an event of
//! `ota.release-events`, appended in the transaction that writes the catalogue row.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use otaledger_domain::events::{ReleaseRegistered, ReleaseStateChanged};
use otaledger_domain::ids::new_trace_id;
use otaledger_domain::json_schema;
use otaledger_domain::release::{self, RegisterIn, ReleaseState};
use otaledger_domain::tuf::metadata::targets_of;
use otaledger_domain::tuf::{Signed, TufError};
use otaledger_domain::{Event, Payload};
use otaledger_projections::releases::{self as store, MetadataFile, ReleaseRow};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Principal;
use crate::params::Params;
use crate::tuf::refused;
use crate::{ApiError, AppState, ErrorBody};

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register, list))
        .routes(routes!(get_one))
        .routes(routes!(publish))
        .routes(routes!(deprecate))
}

/// A release of the catalogue.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReleaseOut {
    pub release_id: String,
    pub version: String,
    pub models: Vec<String>,
    pub hardware_revs: Vec<String>,
    pub sha256: String,
    pub length: i64,
    pub notes: String,
    pub registered_by: String,
    /// `draft`, `published` or `deprecated`.
    pub state: String,
    /// The version of the targets metadata that published it.
    pub targets_version: Option<i64>,
}

impl From<ReleaseRow> for ReleaseOut {
    fn from(r: ReleaseRow) -> Self {
        ReleaseOut {
            release_id: r.release_id,
            version: r.version,
            models: r.models,
            hardware_revs: r.hardware_revs,
            sha256: r.sha256,
            length: r.length,
            notes: r.notes,
            registered_by: r.registered_by,
            state: r.state,
            targets_version: r.targets_version,
        }
    }
}

/// The catalogue.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReleaseList {
    pub releases: Vec<ReleaseOut>,
}

/// `{release_id}` in a path.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub(crate) struct ReleasePath {
    #[param(schema_with = json_schema::release_id, required = true)]
    release_id: String,
}

/// The catalogue's filter.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// `draft`, `published` or `deprecated`.
    #[param(schema_with = state_schema)]
    state: Option<String>,
}

fn state_schema() -> utoipa::openapi::schema::ObjectBuilder {
    json_schema::one_of_words(["draft", "published", "deprecated"])
}

fn conflict(error: &'static str, reason: impl Into<String>) -> ApiError {
    ApiError {
        status: StatusCode::CONFLICT,
        error,
        reason: reason.into(),
    }
}

#[allow(clippy::needless_pass_by_value)] // the shape `map_err` takes
fn db(e: sqlx::Error) -> ApiError {
    ApiError::unavailable(&e)
}

/// Register a release as a draft: appends `ReleaseRegistered`. Its artifact must be in the
/// store with its digest and length.
#[utoipa::path(post, path = "/v1/releases", operation_id = "registerRelease", security(("token" = ["operator"])), tag = "releases",
    request_body(content = RegisterIn, content_type = "application/json"),
    responses(
        (status = 201, description = "Registered as a draft", body = ReleaseOut),
        (status = 400, description = "A bad field, named", body = ErrorBody),
        (status = 409, description = "The id is taken, or the store lacks the artifact", body = ErrorBody),
        crate::Unavailable,
    ))]
async fn register(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let input: RegisterIn = crate::body::object(&body)?;
    let r: ReleaseRegistered = input
        .parse(&who.name)
        .map_err(|e| ApiError::bad_request("invalid_field", e.to_string()))?;
    crate::artifacts::check_release(
        &s,
        &otaledger_domain::events::Release {
            version: r.version.clone(),
            artifact_uri: format!(
                "{}{}",
                otaledger_domain::rollout_request::ARTIFACT_STORE_PATH,
                r.sha256
            ),
            sha256: r.sha256.clone(),
            size_bytes: r.length,
            signature: String::new(),
        },
    )
    .await?;
    let mut tx = s.pool.begin().await.map_err(db)?;
    if !store::insert(&mut tx, &r).await? {
        return Err(conflict(
            "release_exists",
            format!("the catalogue has a release {} already", r.release_id),
        ));
    }
    append(&s, Payload::ReleaseRegistered(r.clone())).await?;
    let row = store::get(&mut tx, &r.release_id, false).await?;
    tx.commit().await.map_err(db)?;
    tracing::info!(release_id = %r.release_id, by = %who.name, "release registered");
    let row = row.ok_or_else(|| ApiError::not_found("the release vanished"))?;
    Ok((StatusCode::CREATED, Json(ReleaseOut::from(row))).into_response())
}

async fn append(s: &AppState, payload: Payload) -> Result<(), ApiError> {
    s.producer
        .append(&Event::now(payload, new_trace_id()))
        .await
        .map(|_| ())
        .map_err(|e| ApiError::unavailable(&e))
}

/// The catalogue, newest first.
#[utoipa::path(get, path = "/v1/releases", operation_id = "listReleases", security(("token" = ["viewer"])), tag = "releases",
    params(ListQuery),
    responses(
        (status = 200, description = "The releases", body = ReleaseList),
        (status = 400, description = "A bad state", body = ErrorBody),
        crate::Unavailable,
    ))]
async fn list(
    State(s): State<AppState>,
    Params(q): Params<ListQuery>,
) -> Result<Json<ReleaseList>, ApiError> {
    let state = match q.state.as_deref() {
        None => None,
        Some(v) => Some(ReleaseState::parse(v).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_parameter",
                "state must be draft, published or deprecated",
            )
        })?),
    };
    let rows = store::list(&s.pool, state).await?;
    Ok(Json(ReleaseList {
        releases: rows.into_iter().map(ReleaseOut::from).collect(),
    }))
}

/// One release.
#[utoipa::path(get, path = "/v1/releases/{release_id}", operation_id = "getRelease", security(("token" = ["viewer"])), tag = "releases",
    params(ReleasePath),
    responses(
        (status = 200, description = "The release", body = ReleaseOut),
        (status = 404, description = "No such release", body = ErrorBody),
        crate::Unavailable,
    ))]
async fn get_one(
    State(s): State<AppState>,
    Path(p): Path<ReleasePath>,
) -> Result<Json<ReleaseOut>, ApiError> {
    let mut conn = s.pool.acquire().await.map_err(db)?;
    store::get(&mut conn, &p.release_id, false)
        .await?
        .map(|r| Json(r.into()))
        .ok_or_else(|| ApiError::not_found("no such release"))
}

/// The published release a rollout names, or why it cannot be rolled out.
pub(crate) async fn published(s: &AppState, release_id: &str) -> Result<ReleaseRow, ApiError> {
    let mut conn = s.pool.acquire().await.map_err(db)?;
    let row = store::get(&mut conn, release_id, false)
        .await?
        .ok_or_else(|| {
            conflict(
                "unknown_release",
                format!("release_id: the catalogue has no release {release_id}"),
            )
        })?;
    if row.state() != ReleaseState::Published {
        return Err(conflict(
            "release_not_published",
            format!(
                "release {release_id} is {}; only a published release can be rolled out",
                row.state
            ),
        ));
    }
    Ok(row)
}

/// Publish a draft: the body is targets metadata, signed by a threshold of the release keys the
/// repository's root names, one version after the current, listing the release exactly as the
/// catalogue holds it and keeping every target already listed. The server then signs a new
/// snapshot and timestamp, and appends `ReleaseStateChanged`.
#[utoipa::path(post, path = "/v1/releases/{release_id}/publish", operation_id = "publishRelease", security(("token" = ["approver"])), tag = "releases",
    params(ReleasePath),
    request_body(content = crate::tuf::SignedIn, content_type = "application/json", description = "Signed TUF targets metadata"),
    responses(
        (status = 200, description = "Published", body = ReleaseOut),
        (status = 400, description = "Not TUF targets metadata", body = ErrorBody),
        (status = 404, description = "No such release", body = ErrorBody),
        (status = 409, description = "Not a draft, or the repository has no root yet", body = ErrorBody),
        (status = 422, description = "The metadata does not verify; the release stays a draft", body = ErrorBody),
        crate::Unavailable,
    ))]
async fn publish(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(p): Path<ReleasePath>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let offered = Signed::parse(&body)
        .map_err(|e| refused(StatusCode::BAD_REQUEST, "invalid_metadata", &e))?;
    let online = crate::tuf::online_key(&s.pool).await?;
    let now = otaledger_domain::time::now_micros() / 1_000_000;
    let mut tx = s.pool.begin().await.map_err(db)?;
    store::lock_repository(&mut tx).await?;
    let row = store::get(&mut tx, &p.release_id, true)
        .await?
        .ok_or_else(|| ApiError::not_found("no such release"))?;
    let next = row
        .state()
        .to(ReleaseState::Published)
        .map_err(|e| conflict("invalid_state", e.to_string()))?;
    let root = crate::tuf::current_root(&mut tx).await?.ok_or_else(|| {
        conflict(
            "no_root",
            "the image repository has no root yet: install one (POST /v1/tuf/root)",
        )
    })?;
    let current = match store::latest(&mut tx, "targets").await? {
        Some(f) => {
            let m = Signed::parse(&f.body).map_err(|e| ApiError::unavailable(&e))?;
            Some((
                f.version as u64,
                targets_of(&m.signed).map_err(|e| ApiError::unavailable(&e))?,
            ))
        }
        None => None,
    };
    let registered = row.registered();
    let version = release::check_targets(
        &registered,
        &offered,
        &root,
        current.as_ref().map(|(v, t)| (*v, t)),
        now,
    )
    .map_err(|e: TufError| refused(StatusCode::UNPROCESSABLE_ENTITY, "unverified", &e))?;
    let h = offered
        .header("targets")
        .map_err(|e| ApiError::unavailable(&e))?;
    let version = i64::try_from(version).unwrap_or(i64::MAX);
    store::put(
        &mut tx,
        "targets",
        &MetadataFile {
            version,
            body: offered.to_bytes(),
            expires_at: chrono::DateTime::from_timestamp(h.expires, 0).unwrap_or_default(),
        },
    )
    .await?;
    crate::tuf::sign_online(&mut tx, &online, now, true).await?;
    let changed = ReleaseStateChanged {
        release_id: p.release_id.clone(),
        from: row.state.clone(),
        to: next.as_str().into(),
        by: who.name.clone(),
        targets_version: Some(version),
        reason: None,
    };
    let answer = change_state(&s, tx, next, changed).await?;
    tracing::info!(release_id = %p.release_id, targets_version = version, by = %who.name, "release published");
    Ok(answer)
}

/// Moves a release to `next` in the caller's transaction (which locked its row), appends the
/// change to the ledger, commits, and answers the release as it now is.
async fn change_state(
    s: &AppState,
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    next: ReleaseState,
    changed: ReleaseStateChanged,
) -> Result<Response, ApiError> {
    let id = changed.release_id.clone();
    let targets_version = changed.targets_version;
    store::set_state(&mut tx, &id, next, targets_version).await?;
    append(s, Payload::ReleaseStateChanged(changed)).await?;
    let row = store::get(&mut tx, &id, false).await?;
    tx.commit().await.map_err(db)?;
    let row = row.ok_or_else(|| ApiError::not_found("the release vanished"))?;
    Ok(Json(ReleaseOut::from(row)).into_response())
}

/// Why a release is deprecated.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct DeprecateIn {
    reason: String,
}

impl utoipa::PartialSchema for DeprecateIn {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        json_schema::closed_object("Why; recorded in the ledger.")
            .property("reason", json_schema::text(1024))
            .required("reason")
            .into()
    }
}
impl utoipa::ToSchema for DeprecateIn {}

/// Deprecate a release: no new rollout may name it (its image stays in the repository, for
/// devices that run it). Appends `ReleaseStateChanged`.
#[utoipa::path(post, path = "/v1/releases/{release_id}/deprecate", operation_id = "deprecateRelease", security(("token" = ["operator"])), tag = "releases",
    params(ReleasePath),
    request_body(content = DeprecateIn, content_type = "application/json"),
    responses(
        (status = 200, description = "Deprecated", body = ReleaseOut),
        (status = 400, description = "No reason", body = ErrorBody),
        (status = 404, description = "No such release", body = ErrorBody),
        (status = 409, description = "Deprecated already", body = ErrorBody),
        crate::Unavailable,
    ))]
async fn deprecate(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(p): Path<ReleasePath>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let input: DeprecateIn = crate::body::object(&body)?;
    if input.reason.trim().is_empty() || input.reason.chars().count() > 1024 {
        return Err(ApiError::bad_request(
            "invalid_field",
            "reason: 1 to 1024 characters",
        ));
    }
    let mut tx = s.pool.begin().await.map_err(db)?;
    let row = store::get(&mut tx, &p.release_id, true)
        .await?
        .ok_or_else(|| ApiError::not_found("no such release"))?;
    let next = row
        .state()
        .to(ReleaseState::Deprecated)
        .map_err(|e| conflict("invalid_state", e.to_string()))?;
    let changed = ReleaseStateChanged {
        release_id: p.release_id.clone(),
        from: row.state.clone(),
        to: next.as_str().into(),
        by: who.name.clone(),
        targets_version: None,
        reason: Some(input.reason),
    };
    change_state(&s, tx, next, changed).await
}

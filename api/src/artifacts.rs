//! Firmware artifacts (ADR 0037): uploaded by operators as raw bytes into the artifact store
//! under their SHA-256, and downloaded with byte ranges (resume), `ETag` and `If-None-Match`, by
//! - a device that was commanded to install that artifact by a running (or paused) rollout;
//! - a gateway, for a device attached to it that was;
//! - an operator;
//! - anyone holding a short-lived signed link an operator asked for, so a CDN or an edge can
//!   serve it.
//!
//! Nobody else: a device that was not commanded gets 403.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures_util::TryStreamExt as _;
use otaledger_artifacts::{Store, StoreError};
use otaledger_domain::access::Role;
use otaledger_domain::byte_range::{self, RangeAnswer};
use otaledger_domain::digest::Sha256;
use otaledger_domain::download_link::LinkKey;
use otaledger_domain::json_schema;
use otaledger_domain::time::now_micros;
use otaledger_ledger::metrics::REGISTRY;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Principal;
use crate::params::Params;
use crate::{ApiError, AppState, ErrorBody};

/// The shortest and longest life of a download link, in seconds, and the default.
const LINK_TTL_S: std::ops::RangeInclusive<i64> = 60..=7 * 24 * 3600;
const DEFAULT_LINK_TTL_S: i64 = 3600;
/// The longest artifact name.
const MAX_NAME_LEN: usize = 256;

/// The store and its limits, shared by the handlers.
#[derive(Debug)]
pub struct Artifacts {
    store: Arc<dyn Store>,
    max_bytes: u64,
    /// Loaded from PostgreSQL on first use (every API instance shares it).
    link_key: tokio::sync::OnceCell<LinkKey>,
}

impl Artifacts {
    #[must_use]
    pub fn new(store: Arc<dyn Store>, max_bytes: u64) -> Self {
        Artifacts {
            store,
            max_bytes,
            link_key: tokio::sync::OnceCell::new(),
        }
    }

    async fn link_key(&self, pool: &PgPool) -> Result<&LinkKey, ApiError> {
        self.link_key
            .get_or_try_init(|| load_link_key(pool))
            .await
            .map_err(|e| ApiError::unavailable(&e))
    }
}

/// The key for download links, kept in PostgreSQL where every API instance finds it (as the
/// saga keeps its command key).
async fn load_link_key(pool: &PgPool) -> Result<LinkKey, otaledger_ledger::Error> {
    Ok(LinkKey::new(
        otaledger_ledger::db::stored_secret(pool, "api_download_link_key").await?,
    ))
}

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(upload, list))
        .routes(routes!(download))
        .routes(routes!(link))
}

fn enabled(s: &AppState) -> Result<&Artifacts, ApiError> {
    s.artifacts.as_deref().ok_or_else(|| ApiError {
        status: StatusCode::NOT_FOUND,
        error: "artifacts_off",
        reason: "this API instance has no artifact store".into(),
    })
}

fn parse_digest(text: &str) -> Result<Sha256, ApiError> {
    Sha256::try_from(text)
        .map_err(|e| ApiError::bad_request("invalid_parameter", format!("sha256: {e}")))
}

/// A rollout of an artifact in otaledger's store (`/v1/artifacts/<sha256>`) must name the
/// release's digest and length, and the store must hold it: otherwise every device would refuse
/// it. 409 with the reason when not; nothing to check for an artifact elsewhere.
pub(crate) async fn check_release(
    s: &AppState,
    release: &otaledger_domain::events::Release,
) -> Result<(), ApiError> {
    let Some(named) = release
        .artifact_uri
        .strip_prefix(otaledger_domain::rollout_request::ARTIFACT_STORE_PATH)
    else {
        return Ok(());
    };
    let conflict = |reason: String| ApiError {
        status: StatusCode::CONFLICT,
        error: "artifact_mismatch",
        reason,
    };
    if !named.eq_ignore_ascii_case(&release.sha256) {
        return Err(conflict(format!(
            "release.artifact_uri names artifact {named}, not the release's sha256 {}",
            release.sha256
        )));
    }
    let artifacts = s.artifacts.as_deref().ok_or_else(|| {
        conflict("release.artifact_uri names otaledger's artifact store, which this API instance does not have".into())
    })?;
    let digest = parse_digest(named)?;
    let length = artifacts
        .store
        .length(&digest)
        .await
        .map_err(|e| ApiError::unavailable(&e))?;
    match length {
        None => Err(conflict(format!(
            "the artifact store holds no artifact {digest}: upload it first (POST /v1/artifacts)"
        ))),
        Some(n) if i64::try_from(n).ok() != Some(release.size_bytes) => Err(conflict(format!(
            "artifact {digest} has {n} bytes, not the release's size_bytes {}",
            release.size_bytes
        ))),
        Some(_) => Ok(()),
    }
}

/// An artifact the store holds.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ArtifactOut {
    /// Its SHA-256, 64 lowercase hexadecimal digits: its name in the store.
    pub sha256: String,
    /// Its length in bytes.
    pub length: u64,
}

/// An upload's result.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UploadOut {
    pub sha256: String,
    pub length: u64,
    /// False when the store held these bytes already (an upload of the same bytes again).
    pub created: bool,
}

/// The artifacts in the store.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ArtifactList {
    pub artifacts: Vec<ArtifactOut>,
}

/// An upload's optional query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct UploadQuery {
    /// The SHA-256 the bytes must have (64 hexadecimal digits): an upload whose bytes differ is
    /// refused and nothing is stored.
    #[param(schema_with = json_schema::sha256)]
    sha256: Option<String>,
    /// A name for the logs, such as the file's (at most 256 characters).
    #[param(schema_with = name_schema)]
    name: Option<String>,
}

fn name_schema() -> utoipa::openapi::schema::ObjectBuilder {
    json_schema::text(MAX_NAME_LEN)
}

/// Upload an artifact: the request body is its bytes (`application/octet-stream`), streamed
/// into the store with its SHA-256 computed while writing; visible only once whole. The same
/// bytes again answer 200 with `created: false`.
#[utoipa::path(post, path = "/v1/artifacts", operation_id = "uploadArtifact",
    security(("token" = ["operator"])), tag = "artifacts", params(UploadQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses(
        (status = 201, description = "Stored", body = UploadOut),
        (status = 200, description = "The store held these bytes already", body = UploadOut),
        (status = 400, description = "A bad request", body = ErrorBody),
        (status = 404, description = "This instance has no artifact store", body = ErrorBody),
        (status = 413, description = "Larger than the store's limit", body = ErrorBody),
        (status = 409, description = "The bytes' SHA-256 is not the one the query named; nothing was stored", body = ErrorBody),
        crate::Unavailable,
    ))]
async fn upload(
    State(s): State<AppState>,
    Extension(principal): Extension<Principal>,
    Params(q): Params<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let artifacts = enabled(&s)?;
    let expected = q.sha256.as_deref().map(parse_digest).transpose()?;
    let name = crate::params::text("name", q.name)?;
    if let Some(name) = &name {
        if name.chars().count() > MAX_NAME_LEN {
            return Err(ApiError::bad_request(
                "invalid_parameter",
                format!("name must be at most {MAX_NAME_LEN} characters"),
            ));
        }
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // Refused before a byte is read when the client says how long it is.
    if declared.is_some_and(|n| n > artifacts.max_bytes) {
        return Err(too_large(artifacts.max_bytes));
    }
    let mut reader =
        tokio_util::io::StreamReader::new(body.into_data_stream().map_err(std::io::Error::other));
    let stored = artifacts
        .store
        .put(&mut reader, artifacts.max_bytes, expected.as_ref())
        .await
        .map_err(|e| match e {
            StoreError::TooLarge { max } => too_large(max),
            // The bytes conflict with the digest the request named for them.
            StoreError::Mismatch { .. } => ApiError {
                status: StatusCode::CONFLICT,
                error: "digest_mismatch",
                reason: e.to_string(),
            },
            StoreError::Upload(_) => ApiError::bad_request("upload_failed", e.to_string()),
            StoreError::Io { .. } => ApiError::unavailable(&e),
        })?;
    tracing::info!(
        sha256 = %stored.sha256,
        length = stored.length,
        created = stored.created,
        name = name.as_deref().unwrap_or(""),
        by = %principal.name,
        "artifact uploaded"
    );
    REGISTRY
        .counter(
            "otaledger_artifact_uploads_total",
            "Artifact uploads stored, by whether the bytes were new",
            &[("created", if stored.created { "true" } else { "false" })],
        )
        .inc();
    let status = if stored.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let location = format!("/v1/artifacts/{}", stored.sha256);
    Ok((
        status,
        [(header::LOCATION, location)],
        Json(UploadOut {
            sha256: stored.sha256.into_string(),
            length: stored.length,
            created: stored.created,
        }),
    )
        .into_response())
}

fn too_large(max: u64) -> ApiError {
    ApiError {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        error: "too_large",
        reason: format!("an artifact may be at most {max} bytes (artifacts.max_bytes)"),
    }
}

/// List the artifacts in the store.
#[utoipa::path(get, path = "/v1/artifacts", operation_id = "listArtifacts",
    security(("token" = ["viewer"])), tag = "artifacts",
    responses(
        (status = 200, description = "Every artifact, ordered by digest", body = ArtifactList),
        (status = 404, description = "This instance has no artifact store", body = ErrorBody),
        crate::Unavailable,
    ))]
async fn list(State(s): State<AppState>) -> Result<Json<ArtifactList>, ApiError> {
    let artifacts = enabled(&s)?
        .store
        .list()
        .await
        .map_err(|e| ApiError::unavailable(&e))?;
    Ok(Json(ArtifactList {
        artifacts: artifacts
            .into_iter()
            .map(|(sha256, length)| ArtifactOut {
                sha256: sha256.into_string(),
                length,
            })
            .collect(),
    }))
}

/// `{sha256}` in an artifact's path.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
struct DigestPath {
    /// The artifact's SHA-256.
    #[param(schema_with = json_schema::sha256, required = true)]
    sha256: String,
}

/// A download link's query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct LinkQuery {
    /// When the link expires, in seconds since the epoch.
    expires: Option<i64>,
    /// The link's signature (64 hexadecimal digits).
    sig: Option<String>,
}

/// Whether the caller may download `artifact`: a valid signed link, or a bearer token of an
/// operator, of a device commanded to install it, or of a gateway of such a device.
async fn may_download(
    s: &AppState,
    artifacts: &Artifacts,
    artifact: &Sha256,
    q: &LinkQuery,
    headers: &HeaderMap,
) -> Result<(), Response> {
    if let (Some(expires), Some(sig)) = (q.expires, q.sig.as_deref()) {
        let key = artifacts
            .link_key(&s.pool)
            .await
            .map_err(IntoResponse::into_response)?;
        return key
            .check(artifact, expires, sig, now_micros())
            .map_err(|refusal| {
                crate::auth::refused(StatusCode::FORBIDDEN, "bad_link", refusal.to_string())
            });
    }
    let holder = crate::auth::identify(s, headers).await?;
    let allowed = match holder.role {
        Role::Device | Role::Gateway => otaledger_projections::rollouts::commanded_artifact(
            &s.pool,
            artifact.as_str(),
            &holder.name,
            holder.role == Role::Gateway,
        )
        .await
        .map_err(|e| ApiError::from(e).into_response())?,
        role => role.allows(Role::Operator),
    };
    if allowed {
        Ok(())
    } else {
        Err(crate::auth::refused(
            StatusCode::FORBIDDEN,
            "not_commanded",
            format!(
                "{} {} was not commanded to install this artifact by a running rollout",
                holder.role, holder.name
            ),
        ))
    }
}

/// Download an artifact, whole or one byte range (`Range: bytes=…`, 206; 416 past its end), with
/// its digest as a strong `ETag` (`If-None-Match` answers 304; `If-Range` resumes only the same
/// bytes). Open to a device a running rollout commanded to install it, a gateway of such a device
/// and operators, with their bearer tokens, and to anyone with a signed link (`expires`, `sig`).
#[utoipa::path(get, path = "/v1/artifacts/{sha256}", operation_id = "downloadArtifact",
    security(("download_link" = [])), tag = "artifacts", params(DigestPath, LinkQuery),
    responses(
        (status = 200, description = "The artifact", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, description = "One byte range of it", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 304, description = "Not modified (If-None-Match)"),
        (status = 400, description = "A bad digest or link", body = ErrorBody),
        (status = 401, description = "Neither a bearer token nor a signed link", body = ErrorBody),
        (status = 403, description = "Not commanded to install it, or a bad or expired link", body = ErrorBody),
        (status = 404, description = "No such artifact", body = ErrorBody),
        (status = 416, description = "The range is past its end", body = ErrorBody),
        crate::Unavailable,
    ))]
async fn download(
    State(s): State<AppState>,
    Path(sha256): Path<String>,
    Params(q): Params<LinkQuery>,
    headers: HeaderMap,
) -> Result<Response, Response> {
    serve(&s, &sha256, &q, &headers).await
}

/// Serves artifact `sha256` to whoever may download it (also as a TUF target).
pub(crate) async fn serve(
    s: &AppState,
    sha256: &str,
    q: &LinkQuery,
    headers: &HeaderMap,
) -> Result<Response, Response> {
    let artifacts = enabled(s).map_err(IntoResponse::into_response)?;
    let artifact = parse_digest(sha256).map_err(IntoResponse::into_response)?;
    may_download(s, artifacts, &artifact, q, headers).await?;
    let Some(length) = artifacts
        .store
        .length(&artifact)
        .await
        .map_err(|e| ApiError::unavailable(&e).into_response())?
    else {
        return Err(ApiError::not_found("no artifact has this SHA-256").into_response());
    };
    let etag = format!("\"{artifact}\"");
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    if text(header::IF_NONE_MATCH).is_some_and(|tags| {
        tags.split(',')
            .map(str::trim)
            .any(|t| t == "*" || t.trim_start_matches("W/") == etag)
    }) {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    // A resume asks for the rest of the same bytes; with other bytes it gets them whole.
    let range = match text(header::IF_RANGE) {
        Some(tag) if tag != etag => None,
        _ => text(header::RANGE),
    };
    let (status, start, end) = match byte_range::answer(range, length) {
        RangeAnswer::Whole => (StatusCode::OK, 0, length),
        RangeAnswer::Part { start, end } => (StatusCode::PARTIAL_CONTENT, start, end + 1),
        RangeAnswer::Unsatisfiable => {
            let mut refusal = ApiError {
                status: StatusCode::RANGE_NOT_SATISFIABLE,
                error: "range_not_satisfiable",
                reason: format!("the artifact has {length} bytes"),
            }
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{length}")) {
                refusal.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Err(refusal);
        }
    };
    let reader = artifacts
        .store
        .read(&artifact, start, end - start)
        .await
        .map_err(|e| ApiError::unavailable(&e).into_response())?;
    REGISTRY
        .counter(
            "otaledger_artifact_bytes_served_total",
            "Artifact bytes sent to downloads (as planned when the response starts)",
            &[],
        )
        .add(end - start);
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
        reader,
        256 * 1024,
    ));
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let h = response.headers_mut();
    let set = |h: &mut HeaderMap, name, value: String| {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    };
    set(h, header::CONTENT_TYPE, "application/octet-stream".into());
    set(h, header::CONTENT_LENGTH, (end - start).to_string());
    set(h, header::ACCEPT_RANGES, "bytes".into());
    set(h, header::ETAG, etag);
    // Content-addressed, so never stale; a link's response may be kept by shared caches, a
    // bearer-token download only by the client.
    let cache = if q.sig.is_some() { "public" } else { "private" };
    set(
        h,
        header::CACHE_CONTROL,
        format!("{cache}, max-age=31536000, immutable"),
    );
    if status == StatusCode::PARTIAL_CONTENT {
        set(
            h,
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{length}", end - 1),
        );
    }
    Ok(response)
}

/// What a download link is asked for.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LinkIn {
    /// How long the link opens the artifact, in seconds (60 to 604800; 3600 when absent).
    #[schema(minimum = 60, maximum = 604_800)]
    #[serde(default, deserialize_with = "otaledger_domain::json_number::opt_int")]
    pub ttl_s: Option<i64>,
}

/// A signed download link.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LinkOut {
    /// The path and query to download the artifact with, no token needed, until `expires`.
    pub url: String,
    /// When it stops opening the artifact, in seconds since the epoch.
    pub expires: i64,
}

/// Make a short-lived signed download link for an artifact, for a CDN, an edge cache or a
/// device without an HTTP credential.
#[utoipa::path(post, path = "/v1/artifacts/{sha256}/links", operation_id = "linkArtifact",
    security(("token" = ["operator"])), tag = "artifacts", params(DigestPath),
    request_body(content = LinkIn, content_type = "application/json"),
    responses(
        (status = 201, description = "The link", body = LinkOut),
        (status = 400, description = "A bad request", body = ErrorBody),
        (status = 404, description = "No such artifact", body = ErrorBody),
        crate::Unavailable,
    ))]
async fn link(
    State(s): State<AppState>,
    Path(sha256): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let artifacts = enabled(&s)?;
    let artifact = parse_digest(&sha256)?;
    // A body is required, as the document says: `{}` takes the defaults.
    let asked: LinkIn = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))?;
    let ttl = asked.ttl_s.unwrap_or(DEFAULT_LINK_TTL_S);
    if !LINK_TTL_S.contains(&ttl) {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!(
                "ttl_s must be {} to {} seconds",
                LINK_TTL_S.start(),
                LINK_TTL_S.end()
            ),
        ));
    }
    if artifacts
        .store
        .length(&artifact)
        .await
        .map_err(|e| ApiError::unavailable(&e))?
        .is_none()
    {
        return Err(ApiError::not_found("no artifact has this SHA-256"));
    }
    let expires = now_micros() / 1_000_000 + ttl;
    let sig = artifacts.link_key(&s.pool).await?.sign(&artifact, expires);
    Ok((
        StatusCode::CREATED,
        Json(LinkOut {
            url: format!("/v1/artifacts/{artifact}?expires={expires}&sig={sig}"),
            expires,
        }),
    )
        .into_response())
}

//! Devices that were not provisioned asking to be admitted, as Mender's pending devices (ADR
//! 0032). With `admission.pending` on:
//! - a device makes a secret of its own and asks with its SHA-256, the fingerprint
//!   (`POST /v1/admission/requests`, open: the device has no credential yet);
//! - an admin compares the fingerprint with the one the device shows (its label, its installer)
//!   and accepts or rejects the request (`…/{id}/accept|reject`, an `AdmissionDecided` event);
//! - the device claims its credential with the secret itself (`POST /v1/admission/claim`,
//!   open), once: only then is its credential minted and its MQTT login added, exactly as
//!   provisioning does.
//!
//! A stranger can make requests (bounded in number, kept out of the ledger) and can claim
//! nothing: a claim needs the secret behind a fingerprint an admin accepted.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use otaledger_domain::events::AdmissionDecided;
use otaledger_domain::ids::new_trace_id;
use otaledger_domain::json_schema;
use otaledger_domain::{Event, Payload};
use otaledger_projections::admission::{self, AdmissionRow, Requested};
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::Type;
use utoipa::openapi::{RefOr, Schema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Principal;
use crate::params::{DeviceIdPath, Params};
use crate::tokens::{AccessError, IssuedToken};
use crate::{ApiError, AppState, ErrorBody};

/// The shortest secret a device may claim with, in characters (a guessable secret would let
/// anyone who saw the fingerprint accepted claim the credential).
pub const MIN_SECRET_LEN: usize = 32;
/// The longest secret and model name.
const MAX_SECRET_LEN: usize = 256;
const MAX_MODEL_LEN: usize = 128;
/// Most requests one listing answers.
const MAX_LISTED: i64 = 1000;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(request, list))
        .routes(routes!(claim))
        .routes(routes!(accept))
        .routes(routes!(reject))
}

/// 404 while `admission.pending` is off: the open routes do not exist then.
fn max_pending(s: &AppState) -> Result<i64, ApiError> {
    s.admission_max_pending.ok_or_else(|| ApiError {
        status: StatusCode::NOT_FOUND,
        error: "admission_off",
        reason: "devices that were not provisioned cannot ask to be admitted here \
                 (admission.pending is off); an admin provisions them (POST /v1/devices)"
            .into(),
    })
}

fn parse_fingerprint(text: &str) -> Result<String, ApiError> {
    if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(text.to_ascii_lowercase())
    } else {
        Err(ApiError::bad_request(
            "invalid_field",
            "fingerprint: must be the SHA-256 of the device's secret, 64 hexadecimal digits",
        ))
    }
}

/// A device's request to be admitted.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestIn {
    device_id: String,
    fingerprint: String,
    #[serde(default)]
    model: Option<String>,
}

impl utoipa::PartialSchema for RequestIn {
    fn schema() -> RefOr<Schema> {
        json_schema::closed_object("A device asking to be admitted.")
            .property("device_id", json_schema::device_id())
            .required("device_id")
            .property(
                "fingerprint",
                json_schema::sha256().description(Some(
                    "SHA-256 of a secret of at least 32 characters the device made itself and \
                     will claim its credential with; the admin compares it with the one the \
                     device shows.",
                )),
            )
            .required("fingerprint")
            .property(
                "model",
                json_schema::or_null(json_schema::text(MAX_MODEL_LEN), Type::String),
            )
            .into()
    }
}
impl utoipa::ToSchema for RequestIn {}

/// Ask to be admitted (a device that was not provisioned; `admission.pending` must be on).
/// Asking again with the same fingerprint answers the same request.
#[utoipa::path(post, path = "/v1/admission/requests", operation_id = "requestAdmission",
    tag = "access",
    request_body(content = RequestIn, content_type = "application/json"),
    responses(
        (status = 202, description = "Recorded; an admin decides", body = AdmissionRow),
        (status = 400, description = "A bad request", body = ErrorBody),
        (status = 404, description = "Admission requests are off", body = ErrorBody),
        (status = 409, description = "The device is provisioned already", body = ErrorBody),
        (status = 415, description = "A body that is not application/json", body = ErrorBody),
        (status = 429, description = "Too many requests are waiting", body = ErrorBody),
        crate::Unavailable,
    ))]
async fn request(State(s): State<AppState>, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let max_pending = max_pending(&s)?;
    let input: RequestIn = crate::body::object(&body)?;
    crate::params::id("device", &input.device_id)?;
    let fingerprint = parse_fingerprint(&input.fingerprint)?;
    if let Some(model) = &input.model {
        if model.trim().is_empty() || model.chars().count() > MAX_MODEL_LEN {
            return Err(ApiError::bad_request(
                "invalid_field",
                format!("model: must be 1 to {MAX_MODEL_LEN} characters, not blank"),
            ));
        }
    }
    let counted = |outcome: &str| {
        otaledger_ledger::metrics::REGISTRY
            .counter(
                "otaledger_admission_requests_total",
                "Admission requests of unprovisioned devices by outcome",
                &[("outcome", outcome)],
            )
            .inc();
    };
    match admission::request(
        &s.pool,
        &input.device_id,
        &fingerprint,
        input.model.as_deref(),
        max_pending,
    )
    .await?
    {
        Requested::Recorded(row) => {
            counted("recorded");
            Ok((StatusCode::ACCEPTED, Json(row)).into_response())
        }
        Requested::Provisioned => {
            counted("provisioned");
            Err(ApiError {
                status: StatusCode::CONFLICT,
                error: "already_provisioned",
                reason: format!(
                    "{:?} holds a credential already; an admin revokes it before the device \
                     may ask again",
                    input.device_id
                ),
            })
        }
        Requested::Full => {
            counted("full");
            Err(ApiError {
                status: StatusCode::TOO_MANY_REQUESTS,
                error: "admission_full",
                reason: format!(
                    "too many admission requests are waiting (at most {max_pending} in all, \
                     {} a device); retry after an admin decided some",
                    admission::MAX_PER_DEVICE
                ),
            })
        }
    }
}

/// `?state=` of the listing.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// `pending` (the default) or `all`.
    #[param(schema_with = state_schema)]
    state: Option<String>,
}

fn state_schema() -> utoipa::openapi::schema::ObjectBuilder {
    json_schema::one_of_words(["pending", "all"]).default(Some("pending".into()))
}

/// List admission requests, oldest first (at most 1000).
#[utoipa::path(get, path = "/v1/admission/requests", operation_id = "listAdmissionRequests",
    security(("token" = ["admin"])), tag = "access", params(ListQuery),
    responses(
        (status = 200, description = "The requests", body = Vec<AdmissionRow>),
        (status = 400, description = "A bad state", body = ErrorBody),
        crate::Unavailable,
    ))]
async fn list(
    State(s): State<AppState>,
    Params(q): Params<ListQuery>,
) -> Result<Json<Vec<AdmissionRow>>, ApiError> {
    let pending = match q.state.as_deref() {
        None | Some("pending") => true,
        Some("all") => false,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_parameter",
                "state must be pending or all",
            ))
        }
    };
    Ok(Json(admission::list(&s.pool, pending, MAX_LISTED).await?))
}

/// Which of a device's requests a decision is about.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionIn {
    fingerprint: String,
}

impl utoipa::PartialSchema for DecisionIn {
    fn schema() -> RefOr<Schema> {
        json_schema::closed_object("The request decided, by the fingerprint the device shows.")
            .property("fingerprint", json_schema::sha256())
            .required("fingerprint")
            .into()
    }
}
impl utoipa::ToSchema for DecisionIn {}

/// Accepts or rejects the pending request of `device` with key `fingerprint` (lowercase hex)
/// and records the decision in the ledger (`AdmissionDecided`, by `by`); `None` when there is
/// no such pending request. The row commits only once Kafka holds the event.
pub async fn decide(
    pool: &sqlx::PgPool,
    producer: &otaledger_ledger::kafka::EventProducer,
    device: &str,
    fingerprint: &str,
    accepted: bool,
    by: &str,
) -> Result<Option<AdmissionRow>, AccessError> {
    let db = |context| move |source| otaledger_projections::Error::Db { context, source };
    let mut tx = pool.begin().await.map_err(db("beginning a decision"))?;
    let Some(row) = admission::decide(&mut tx, device, fingerprint, accepted, by).await? else {
        return Ok(None);
    };
    let event = Event::now(
        Payload::AdmissionDecided(AdmissionDecided {
            device_id: device.to_owned(),
            fingerprint: fingerprint.to_owned(),
            accepted,
            decided_by: by.to_owned(),
        }),
        new_trace_id(),
    );
    producer.append(&event).await?;
    tx.commit().await.map_err(db("committing a decision"))?;
    Ok(Some(row))
}

async fn decide_route(
    s: &AppState,
    who: &Principal,
    device: &str,
    body: &[u8],
    accepted: bool,
) -> Result<Json<AdmissionRow>, ApiError> {
    crate::params::id("device", device)?;
    let input: DecisionIn = crate::body::object(body)?;
    let fingerprint = parse_fingerprint(&input.fingerprint)?;
    decide(
        &s.pool,
        &s.producer,
        device,
        &fingerprint,
        accepted,
        &who.name,
    )
    .await?
    .map(Json)
    .ok_or_else(|| {
        ApiError::not_found(format!(
            "no pending admission request of {device:?} with that fingerprint"
        ))
    })
}

/// Accept a device's pending request: the device that holds the secret behind the fingerprint
/// may now claim its credential, once.
#[utoipa::path(post, path = "/v1/admission/requests/{id}/accept", operation_id = "acceptAdmission",
    security(("token" = ["admin"])), tag = "access", params(DeviceIdPath),
    request_body(content = DecisionIn, content_type = "application/json"),
    responses(
        (status = 200, description = "Accepted", body = AdmissionRow),
        (status = 400, description = "A bad request", body = ErrorBody),
        (status = 404, description = "No pending request of that device and fingerprint", body = ErrorBody),
        crate::Unavailable,
    ))]
async fn accept(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<AdmissionRow>, ApiError> {
    decide_route(&s, &who, &id, &body, true).await
}

/// Reject a device's pending request.
#[utoipa::path(post, path = "/v1/admission/requests/{id}/reject", operation_id = "rejectAdmission",
    security(("token" = ["admin"])), tag = "access", params(DeviceIdPath),
    request_body(content = DecisionIn, content_type = "application/json"),
    responses(
        (status = 200, description = "Rejected", body = AdmissionRow),
        (status = 400, description = "A bad request", body = ErrorBody),
        (status = 404, description = "No pending request of that device and fingerprint", body = ErrorBody),
        crate::Unavailable,
    ))]
async fn reject(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<AdmissionRow>, ApiError> {
    decide_route(&s, &who, &id, &body, false).await
}

/// A device claiming its credential.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClaimIn {
    device_id: String,
    secret: String,
}

impl utoipa::PartialSchema for ClaimIn {
    fn schema() -> RefOr<Schema> {
        json_schema::closed_object("A device claiming the credential its request was accepted for.")
            .property("device_id", json_schema::device_id())
            .required("device_id")
            .property(
                "secret",
                utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(Type::String)
                    .min_length(Some(MIN_SECRET_LEN))
                    .max_length(Some(MAX_SECRET_LEN))
                    .pattern(Some(format!(
                        r"^[!-~]{{{MIN_SECRET_LEN},{MAX_SECRET_LEN}}}$"
                    )))
                    .description(Some(
                        "The secret whose SHA-256 the request named: visible ASCII characters.",
                    )),
            )
            .required("secret")
            .into()
    }
}
impl utoipa::ToSchema for ClaimIn {}

/// A request still waiting for an admin.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Waiting {
    /// `pending`.
    state: &'static str,
}

/// Claim the credential an admin accepted the request for, once: answered with the device's
/// credential (a token of role `device`, also its MQTT password), as `POST /v1/devices` answers
/// an admin. A device polls this while its request is pending.
#[utoipa::path(post, path = "/v1/admission/claim", operation_id = "claimAdmission",
    tag = "access",
    request_body(content = ClaimIn, content_type = "application/json"),
    responses(
        (status = 201, description = "Admitted; the credential is shown this once", body = IssuedToken),
        (status = 202, description = "Still waiting for an admin", body = Waiting),
        (status = 400, description = "A bad request", body = ErrorBody),
        (status = 403, description = "No accepted request of this device for this secret", body = ErrorBody),
        (status = 404, description = "Admission requests are off", body = ErrorBody),
        (status = 415, description = "A body that is not application/json", body = ErrorBody),
        crate::Unavailable,
    ))]
async fn claim(State(s): State<AppState>, body: axum::body::Bytes) -> Result<Response, ApiError> {
    max_pending(&s)?;
    let input: ClaimIn = crate::body::object(&body)?;
    crate::params::id("device", &input.device_id)?;
    let visible = input.secret.bytes().all(|b| b.is_ascii_graphic());
    if !visible || !(MIN_SECRET_LEN..=MAX_SECRET_LEN).contains(&input.secret.len()) {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!(
                "secret: must be {MIN_SECRET_LEN} to {MAX_SECRET_LEN} visible ASCII characters"
            ),
        ));
    }
    let device = input.device_id.as_str();
    let fingerprint = admission::fingerprint(&input.secret);
    let refused = || {
        otaledger_ledger::metrics::REGISTRY
            .counter(
                "otaledger_admission_claims_refused_total",
                "Credential claims with no accepted request behind them",
                &[],
            )
            .inc();
        ApiError {
            status: StatusCode::FORBIDDEN,
            error: "not_admitted",
            reason: "no accepted admission request of this device for this secret (unknown, \
                     rejected, or claimed already)"
                .into(),
        }
    };
    let failed = |context| {
        move |source| ApiError::from(otaledger_projections::Error::Db { context, source })
    };
    let mut tx = s.pool.begin().await.map_err(failed("beginning a claim"))?;
    let Some(row) = admission::claim(&mut tx, device, &fingerprint).await? else {
        drop(tx);
        let pending = admission::get(&s.pool, device, &fingerprint)
            .await?
            .is_some_and(|r| r.state == "pending");
        if pending {
            return Ok((StatusCode::ACCEPTED, Json(Waiting { state: "pending" })).into_response());
        }
        return Err(refused());
    };
    // The credential is issued in the admin's name: the admin let the device in.
    let by = row.decided_by.unwrap_or_default();
    let issued = crate::tokens::provision_device(
        &s.pool,
        &s.producer,
        s.brokers(),
        device,
        None,
        &by,
        false,
    )
    .await?;
    // Committed after the credential: a failed provisioning leaves the request claimable.
    tx.commit().await.map_err(failed("committing a claim"))?;
    Ok((StatusCode::CREATED, Json(issued)).into_response())
}

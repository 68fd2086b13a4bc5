//! Rollout requests: `POST /v1/rollouts` validates every field and appends `UpdateRequested`
//! (202 with the rollout id once Kafka has it); `POST /v1/rollouts/{id}/pause|resume|abort`
//! append operator requests. A bad request gets 400 naming the field and appends nothing.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use otaledger_domain::events::{OperatorRequest, UpdateRequested};
use otaledger_domain::ids::{new_trace_id, validate_device_id};
use otaledger_domain::rollout_request::RolloutRequest;
pub use otaledger_domain::rollout_request::{
    ReleaseIn, RolloutIn, SelectorIn, StrategyIn, WindowIn,
};
use otaledger_domain::{Event, Payload};
use serde::{Deserialize, Serialize};

use crate::{ApiError, AppState};

pub(crate) fn routes(state: AppState) -> Router {
    Router::new()
        .route("/v1/rollouts", post(create))
        .route("/v1/rollouts/{id}/pause", post(pause))
        .route("/v1/rollouts/{id}/resume", post(resume))
        .route("/v1/rollouts/{id}/abort", post(abort))
        .with_state(state)
}

fn bad(field: &str, why: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request("invalid_field", format!("{field}: {why}"))
}

/// Checks every field (the rules live in the domain's `RolloutRequest`) and builds the event.
pub fn validate(input: RolloutIn, operator: &str) -> Result<UpdateRequested, ApiError> {
    RolloutRequest::parse(input, operator)
        .map(UpdateRequested::from)
        .map_err(|e| ApiError::bad_request("invalid_field", e.to_string()))
}

fn operator(headers: &HeaderMap) -> String {
    headers
        .get("x-otaledger-operator")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 256)
        .unwrap_or("api")
        .to_owned()
}

#[derive(Debug, Serialize)]
struct Accepted {
    rollout_id: String,
    event_id: String,
}

async fn append(
    state: &AppState,
    rollout_id: String,
    payload: Payload,
) -> Result<Response, ApiError> {
    let e = Event::now(payload, new_trace_id());
    state
        .producer
        .append(&e)
        .await
        .map_err(|err| ApiError::unavailable(&err))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            rollout_id,
            event_id: e.meta.event_id.to_string(),
        }),
    )
        .into_response())
}

async fn create(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    // The path names the field when a value has the wrong type (`strategy.max_retries: …`).
    let input: RolloutIn =
        serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(&body))
            .map_err(|e| {
                let inner = e.inner();
                let kind = if inner.is_syntax() || inner.is_eof() {
                    "invalid_json"
                } else {
                    "invalid_field"
                };
                ApiError::bad_request(kind, format!("{}: {inner}", e.path()))
            })?;
    refuse_nul(&body)?;
    let request = validate(input, &operator(&headers))?;
    append(
        &s,
        request.rollout_id.clone(),
        Payload::UpdateRequested(request),
    )
    .await
}

/// Refuses a body whose text holds a NUL character (PostgreSQL cannot store it: the rollout
/// projector would stop on it).
fn refuse_nul(body: &[u8]) -> Result<(), ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    match otaledger_domain::device_json::nul_in(&value) {
        Some(at) => Err(ApiError::bad_request(
            "invalid_text",
            format!("{at} contains a NUL character"),
        )),
        None => Ok(()),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ReasonIn {
    reason: String,
}

async fn operator_request(
    s: &AppState,
    id: String,
    headers: &HeaderMap,
    body: &Bytes,
    make: fn(OperatorRequest) -> Payload,
) -> Result<Response, ApiError> {
    validate_device_id(&id)
        .map_err(|e| ApiError::bad_request("invalid_parameter", format!("rollout id: {e}")))?;
    let reason = if body.is_empty() {
        ReasonIn::default()
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))?
    };
    refuse_nul(body)?;
    if reason.reason.len() > 1024 {
        return Err(bad("reason", "must be at most 1024 characters"));
    }
    let req = OperatorRequest {
        rollout_id: id.clone(),
        requested_by: operator(headers),
        reason: reason.reason,
    };
    append(s, id, make(req)).await
}

async fn pause(
    State(s): State<AppState>,
    Path(id): Path<String>,
    h: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    operator_request(&s, id, &h, &body, Payload::PauseRequested).await
}

async fn resume(
    State(s): State<AppState>,
    Path(id): Path<String>,
    h: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    operator_request(&s, id, &h, &body, Payload::ResumeRequested).await
}

async fn abort(
    State(s): State<AppState>,
    Path(id): Path<String>,
    h: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    operator_request(&s, id, &h, &body, Payload::AbortRequested).await
}

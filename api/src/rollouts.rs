//! Rollout requests: `POST /v1/rollouts` validates every field and appends `UpdateRequested`
//! (202 with the rollout id once Kafka has it); `POST /v1/rollouts/{id}/pause|resume|abort`
//! append operator requests. A bad request gets 400 naming the field and appends nothing.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use otaledger_domain::events::{
    MaintenanceWindow, OperatorRequest, Release, RollbackPolicy, Strategy, TargetSelector,
    UpdateRequested,
};
use otaledger_domain::ids::{new_event_id, new_trace_id, validate_device_id};
use otaledger_domain::time::now_micros;
use otaledger_domain::{Event, EventMeta, Payload};
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseIn {
    pub version: String,
    pub artifact_uri: String,
    pub sha256: String,
    pub size_bytes: i64,
    pub signature: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SelectorIn {
    pub models: Vec<String>,
    pub sites: Vec<String>,
    pub tags: Vec<String>,
    pub current_versions: Vec<String>,
    pub device_ids: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowIn {
    pub start_minute: i32,
    pub duration_minutes: i32,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StrategyIn {
    pub waves_pct: Vec<f64>,
    pub success_threshold_pct: f64,
    pub failure_threshold_pct: f64,
    pub min_devices_for_verdict: i32,
    pub device_timeout_s: i64,
    pub max_retries: i32,
    pub retry_backoff_s: i64,
    pub max_in_flight: i32,
    pub health_gate_window_s: i64,
    /// Milliseconds since the epoch; absent: start now.
    pub scheduled_start_ms: Option<i64>,
    pub maintenance_window: Option<WindowIn>,
    /// `none`, `on_abort` or `on_failure`.
    pub rollback_policy: String,
}

impl Default for StrategyIn {
    fn default() -> Self {
        StrategyIn {
            waves_pct: vec![1.0, 10.0, 50.0, 100.0],
            success_threshold_pct: 95.0,
            failure_threshold_pct: 5.0,
            min_devices_for_verdict: 5,
            device_timeout_s: 1800,
            max_retries: 2,
            retry_backoff_s: 60,
            max_in_flight: 500,
            health_gate_window_s: 300,
            scheduled_start_ms: None,
            maintenance_window: None,
            rollback_policy: "on_abort".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutIn {
    /// Optional, for idempotent retries by the caller; a new UUID otherwise.
    pub rollout_id: Option<String>,
    pub requested_by: Option<String>,
    pub release: ReleaseIn,
    pub selector: SelectorIn,
    #[serde(default)]
    pub strategy: StrategyIn,
}

fn bad(field: &str, why: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request("invalid_field", format!("{field}: {why}"))
}

fn text(field: &str, v: &str, max: usize) -> Result<(), ApiError> {
    if v.trim().is_empty() || v.len() > max {
        return Err(bad(field, format!("must be 1 to {max} characters")));
    }
    Ok(())
}

fn semver(v: &str) -> bool {
    let core = v.split(['-', '+']).next().unwrap_or("");
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

fn range<T: PartialOrd + std::fmt::Display + Copy>(
    field: &str,
    v: T,
    lo: T,
    hi: T,
) -> Result<(), ApiError> {
    if v < lo || v > hi {
        return Err(bad(
            field,
            format!("must be between {lo} and {hi}, got {v}"),
        ));
    }
    Ok(())
}

/// Checks every field and builds the domain request.
pub fn validate(input: RolloutIn, operator: &str) -> Result<UpdateRequested, ApiError> {
    let r = &input.release;
    if !semver(&r.version) {
        return Err(bad(
            "release.version",
            format!(
                "{:?} is not a semantic version (MAJOR.MINOR.PATCH)",
                r.version
            ),
        ));
    }
    if !r.artifact_uri.starts_with("https://")
        || r.artifact_uri.len() > 2048
        || r.artifact_uri.len() <= 8
    {
        return Err(bad(
            "release.artifact_uri",
            "must be an https:// URI of at most 2048 characters",
        ));
    }
    if r.sha256.len() != 64 || !r.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad("release.sha256", "must be 64 hexadecimal digits"));
    }
    range(
        "release.size_bytes",
        r.size_bytes,
        1,
        64 * 1024 * 1024 * 1024,
    )?;
    text("release.signature", &r.signature, 8192)?;

    let sel = &input.selector;
    if sel.models.is_empty()
        && sel.sites.is_empty()
        && sel.tags.is_empty()
        && sel.current_versions.is_empty()
        && sel.device_ids.is_empty()
    {
        return Err(bad(
            "selector",
            "must name at least one of models, sites, tags, current_versions, device_ids",
        ));
    }
    for (name, list) in [
        ("selector.models", &sel.models),
        ("selector.sites", &sel.sites),
        ("selector.tags", &sel.tags),
        ("selector.current_versions", &sel.current_versions),
    ] {
        for v in list {
            text(name, v, 256)?;
        }
    }
    for id in &sel.device_ids {
        validate_device_id(id).map_err(|e| bad("selector.device_ids", e))?;
    }

    let s = &input.strategy;
    if s.waves_pct.is_empty() || s.waves_pct.len() > 20 {
        return Err(bad("strategy.waves_pct", "must list 1 to 20 waves"));
    }
    let increasing = s.waves_pct.windows(2).all(|w| w[0] < w[1]);
    let in_range = s.waves_pct.iter().all(|p| *p > 0.0 && *p <= 100.0);
    if !increasing || !in_range || s.waves_pct.last() != Some(&100.0) {
        return Err(bad(
            "strategy.waves_pct",
            "cumulative shares must increase, lie in (0, 100] and end at 100",
        ));
    }
    range(
        "strategy.success_threshold_pct",
        s.success_threshold_pct,
        0.0,
        100.0,
    )?;
    range(
        "strategy.failure_threshold_pct",
        s.failure_threshold_pct,
        0.0,
        100.0,
    )?;
    range(
        "strategy.min_devices_for_verdict",
        s.min_devices_for_verdict,
        1,
        1_000_000,
    )?;
    range(
        "strategy.device_timeout_s",
        s.device_timeout_s,
        10,
        7 * 86_400,
    )?;
    range("strategy.max_retries", s.max_retries, 0, 10)?;
    range("strategy.retry_backoff_s", s.retry_backoff_s, 0, 86_400)?;
    range("strategy.max_in_flight", s.max_in_flight, 1, 1_000_000)?;
    range(
        "strategy.health_gate_window_s",
        s.health_gate_window_s,
        0,
        86_400,
    )?;
    if let Some(ms) = s.scheduled_start_ms {
        range("strategy.scheduled_start_ms", ms, 1, 253_402_300_799_000)?;
    }
    if let Some(w) = &s.maintenance_window {
        range(
            "strategy.maintenance_window.start_minute",
            w.start_minute,
            0,
            1439,
        )?;
        range(
            "strategy.maintenance_window.duration_minutes",
            w.duration_minutes,
            1,
            1440,
        )?;
    }
    let rollback_policy = match s.rollback_policy.as_str() {
        "none" => RollbackPolicy::None,
        "on_abort" => RollbackPolicy::OnAbort,
        "on_failure" => RollbackPolicy::OnFailure,
        other => {
            return Err(bad(
                "strategy.rollback_policy",
                format!("must be none, on_abort or on_failure, not {other:?}"),
            ))
        }
    };
    let rollout_id = match input.rollout_id {
        Some(id) => {
            validate_device_id(&id).map_err(|e| bad("rollout_id", e))?;
            id
        }
        None => new_event_id().to_string(),
    };
    let requested_by = input.requested_by.unwrap_or_else(|| operator.to_owned());
    text("requested_by", &requested_by, 256)?;
    let s = input.strategy;
    Ok(UpdateRequested {
        rollout_id,
        requested_by,
        release: Release {
            version: input.release.version,
            artifact_uri: input.release.artifact_uri,
            sha256: input.release.sha256.to_ascii_lowercase(),
            size_bytes: input.release.size_bytes,
            signature: input.release.signature,
        },
        selector: TargetSelector {
            models: input.selector.models,
            sites: input.selector.sites,
            tags: input.selector.tags,
            current_versions: input.selector.current_versions,
            device_ids: input.selector.device_ids,
        },
        strategy: Strategy {
            waves_pct: s.waves_pct,
            success_threshold_pct: s.success_threshold_pct,
            failure_threshold_pct: s.failure_threshold_pct,
            min_devices_for_verdict: s.min_devices_for_verdict,
            device_timeout_s: s.device_timeout_s,
            max_retries: s.max_retries,
            retry_backoff_s: s.retry_backoff_s,
            max_in_flight: s.max_in_flight,
            health_gate_window_s: s.health_gate_window_s,
            scheduled_start: s.scheduled_start_ms.map(|ms| ms * 1000),
            maintenance_window: s.maintenance_window.map(|w| MaintenanceWindow {
                start_minute: w.start_minute,
                duration_minutes: w.duration_minutes,
            }),
            rollback_policy,
        },
    })
}

fn operator(headers: &HeaderMap) -> String {
    headers
        .get("x-otaledger-operator")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 256)
        .unwrap_or("api")
        .to_owned()
}

fn event(payload: Payload) -> Event {
    let now = now_micros();
    Event {
        meta: EventMeta {
            event_id: new_event_id(),
            occurred_at: now,
            recorded_at: now,
            trace_id: new_trace_id(),
        },
        payload,
    }
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
    let e = event(payload);
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
    let request = validate(input, &operator(&headers))?;
    append(
        &s,
        request.rollout_id.clone(),
        Payload::UpdateRequested(request),
    )
    .await
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

//! Rollout queries: the list, one rollout with its per-wave counts, its devices by state, and
//! its explained decision timeline.

use std::collections::BTreeMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use otaledger_domain::events::{DeviceRolloutState, RolloutState};
use otaledger_projections::rollouts::{self, DecisionRow, RolloutDeviceRow, RolloutRow};
use serde::{Deserialize, Serialize};

use crate::devices::page_limit;
use crate::{ApiError, AppState};

pub(crate) fn routes(state: AppState) -> Router {
    Router::new()
        .route("/v1/rollouts", get(list))
        .route("/v1/rollouts/{id}", get(one))
        .route("/v1/rollouts/{id}/devices", get(devices))
        .route("/v1/rollouts/{id}/decisions", get(decisions))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    state: Option<String>,
    cursor: Option<String>,
    limit: Option<String>,
}

fn query(q: Result<Query<PageQuery>, QueryRejection>) -> Result<PageQuery, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request("invalid_parameter", e.body_text()))
}

fn check_id(id: &str) -> Result<(), ApiError> {
    otaledger_domain::ids::validate_device_id(id)
        .map_err(|e| ApiError::bad_request("invalid_parameter", format!("rollout id: {e}")))
}

#[derive(Debug, Serialize)]
struct Page<T> {
    items: Vec<T>,
    next_cursor: Option<String>,
}

async fn list(
    State(s): State<AppState>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<Page<RolloutRow>>, ApiError> {
    let q = query(q)?;
    let n = page_limit(q.limit.as_deref())?;
    if let Some(st) = q.state.as_deref() {
        if !RolloutState::NAMES.contains(&st) {
            return Err(ApiError::bad_request(
                "invalid_parameter",
                format!("state must be one of {}", RolloutState::NAMES.join(", ")),
            ));
        }
    }
    let items =
        rollouts::list_rollouts(&s.pool, q.state.as_deref(), q.cursor.as_deref(), n).await?;
    let next_cursor = (items.len() as i64 == n)
        .then(|| items.last().map(|r| r.rollout_id.clone()))
        .flatten();
    Ok(Json(Page { items, next_cursor }))
}

#[derive(Debug, Serialize)]
struct WaveCounts {
    wave: i32,
    devices: i64,
    /// Devices per state (SUCCEEDED, FAILED, ...).
    states: BTreeMap<String, i64>,
}

#[derive(Debug, Serialize)]
struct RolloutOut {
    #[serde(flatten)]
    rollout: RolloutRow,
    /// Devices per state over every wave.
    states: BTreeMap<String, i64>,
    waves: Vec<WaveCounts>,
}

async fn one(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RolloutOut>, ApiError> {
    check_id(&id)?;
    let rollout = rollouts::get_rollout(&s.pool, &id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no rollout {id:?}")))?;
    let mut states = BTreeMap::new();
    let mut waves: BTreeMap<i32, WaveCounts> = BTreeMap::new();
    for (wave, state, n) in rollouts::wave_counts(&s.pool, &id).await? {
        *states.entry(state.clone()).or_insert(0) += n;
        let w = waves.entry(wave).or_insert_with(|| WaveCounts {
            wave,
            devices: 0,
            states: BTreeMap::new(),
        });
        w.devices += n;
        w.states.insert(state, n);
    }
    Ok(Json(RolloutOut {
        rollout,
        states,
        waves: waves.into_values().collect(),
    }))
}

async fn devices(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<Page<RolloutDeviceRow>>, ApiError> {
    check_id(&id)?;
    let q = query(q)?;
    let n = page_limit(q.limit.as_deref())?;
    let state = q.state.map(|s| s.to_uppercase());
    if let Some(st) = state.as_deref() {
        if !DeviceRolloutState::NAMES.contains(&st) {
            return Err(ApiError::bad_request(
                "invalid_parameter",
                format!(
                    "state must be one of {}",
                    DeviceRolloutState::NAMES.join(", ")
                ),
            ));
        }
    }
    if rollouts::get_rollout(&s.pool, &id).await?.is_none() {
        return Err(ApiError::not_found(format!("no rollout {id:?}")));
    }
    let items =
        rollouts::rollout_devices(&s.pool, &id, state.as_deref(), q.cursor.as_deref(), n).await?;
    let next_cursor = (items.len() as i64 == n)
        .then(|| items.last().map(|r| r.device_id.clone()))
        .flatten();
    Ok(Json(Page { items, next_cursor }))
}

async fn decisions(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<Page<DecisionRow>>, ApiError> {
    check_id(&id)?;
    let q = query(q)?;
    let n = page_limit(q.limit.as_deref())?;
    if q.state.is_some() {
        return Err(ApiError::bad_request(
            "invalid_parameter",
            "decisions take no state filter",
        ));
    }
    let after = match q.cursor.as_deref() {
        None => None,
        Some(c) => Some(c.parse::<i64>().map_err(|_| {
            ApiError::bad_request(
                "invalid_parameter",
                "cursor must be a position from a previous page",
            )
        })?),
    };
    if rollouts::get_rollout(&s.pool, &id).await?.is_none() {
        return Err(ApiError::not_found(format!("no rollout {id:?}")));
    }
    let items = rollouts::decisions(&s.pool, &id, after, n).await?;
    let next_cursor = (items.len() as i64 == n)
        .then(|| items.last().map(|r| r.position.to_string()))
        .flatten();
    Ok(Json(Page { items, next_cursor }))
}

//! Rollout queries: the list, one rollout with its per-wave counts, its devices by state, and
//! its explained decision timeline.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::Json;
use otaledger_domain::events::{DeviceRolloutState, RolloutState};
use otaledger_projections::rollouts::{self, DecisionRow, RolloutDeviceRow, RolloutRow};
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::ObjectBuilder;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::params::{self, page_limit, Params, RolloutIdPath};
use crate::{ApiError, AppState, ErrorBody};

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(one))
        .routes(routes!(devices))
        .routes(routes!(decisions))
}

fn rollout_state_schema() -> ObjectBuilder {
    otaledger_domain::json_schema::one_of_words(RolloutState::NAMES)
}

fn device_state_schema() -> ObjectBuilder {
    otaledger_domain::json_schema::one_of_words(DeviceRolloutState::NAMES)
        .description(Some("Case does not matter."))
}

/// The query of every rollout page; which `state`s apply depends on the route.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    state: Option<String>,
    cursor: Option<String>,
    limit: Option<String>,
}

/// `GET /v1/rollouts`'s query.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // documents PageQuery for this route
struct RolloutListQuery {
    /// Rollouts in this state.
    #[param(schema_with = rollout_state_schema)]
    state: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(schema_with = params::text_schema)]
    cursor: Option<String>,
    /// Page size.
    #[param(schema_with = params::limit_schema)]
    limit: Option<String>,
}

/// `GET /v1/rollouts/{id}/devices`'s query.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct RolloutDevicesQuery {
    /// Devices in this state.
    #[param(schema_with = device_state_schema)]
    state: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(schema_with = params::text_schema)]
    cursor: Option<String>,
    /// Page size.
    #[param(schema_with = params::limit_schema)]
    limit: Option<String>,
}

/// `GET /v1/rollouts/{id}/decisions`'s query.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
struct DecisionsQuery {
    /// `next_cursor` of the previous page.
    #[param(schema_with = params::position_schema)]
    cursor: Option<String>,
    /// Page size.
    #[param(schema_with = params::limit_schema)]
    limit: Option<String>,
}

fn query(Params(q): Params<PageQuery>) -> Result<PageQuery, ApiError> {
    Ok(PageQuery {
        cursor: params::text("cursor", q.cursor)?,
        ..q
    })
}

fn check_id(id: &str) -> Result<(), ApiError> {
    params::id("rollout", id)
}

/// A page of items and the cursor of the next page, if any.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Page<T> {
    items: Vec<T>,
    next_cursor: Option<String>,
}

/// List rollouts, ordered by id.
#[utoipa::path(get, path = "/v1/rollouts", operation_id = "listRollouts", security(("token" = ["viewer"])), tag = "rollouts", params(RolloutListQuery),
    responses(
        (status = 200, description = "A page of rollouts", body = Page<RolloutRow>),
        (status = 400, description = "A bad parameter", body = ErrorBody),
        crate::Unavailable,
    ))]
async fn list(
    State(s): State<AppState>,
    q: Params<PageQuery>,
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

/// A wave's devices by state.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct WaveCounts {
    wave: i32,
    devices: i64,
    /// Devices per state (SUCCEEDED, FAILED, ...).
    states: BTreeMap<String, i64>,
}

/// A rollout with its devices counted by state, overall and per wave.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Rollout)]
struct RolloutOut {
    #[serde(flatten)]
    rollout: RolloutRow,
    /// Devices per state over every wave.
    states: BTreeMap<String, i64>,
    waves: Vec<WaveCounts>,
}

/// One rollout: its request, state and counts.
#[utoipa::path(get, path = "/v1/rollouts/{id}", operation_id = "getRollout", security(("token" = ["viewer"])), tag = "rollouts", params(RolloutIdPath),
    responses(
        (status = 200, description = "The rollout", body = RolloutOut),
        (status = 400, description = "A bad id", body = ErrorBody),
        (status = 404, description = "No such rollout", body = ErrorBody),
        crate::Unavailable,
    ))]
async fn one(
    State(s): State<AppState>,
    axum::Extension(who): axum::Extension<crate::auth::Principal>,
    Path(id): Path<String>,
) -> Result<Json<RolloutOut>, ApiError> {
    check_id(&id)?;
    crate::scope::rollout(&s, &who, &id).await?;
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

/// A rollout's devices, ordered by id: wave, state, attempt, command.
#[utoipa::path(get, path = "/v1/rollouts/{id}/devices", operation_id = "rolloutDevices", security(("token" = ["viewer"])), tag = "rollouts",
    params(RolloutIdPath, RolloutDevicesQuery),
    responses(
        (status = 200, description = "A page of the rollout's devices", body = Page<RolloutDeviceRow>),
        (status = 400, description = "A bad id or parameter", body = ErrorBody),
        (status = 404, description = "No such rollout", body = ErrorBody),
        crate::Unavailable,
    ))]
async fn devices(
    State(s): State<AppState>,
    axum::Extension(who): axum::Extension<crate::auth::Principal>,
    Path(id): Path<String>,
    q: Params<PageQuery>,
) -> Result<Json<Page<RolloutDeviceRow>>, ApiError> {
    check_id(&id)?;
    crate::scope::rollout(&s, &who, &id).await?;
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

/// A rollout's decisions in ledger order, each with what it was decided from.
#[utoipa::path(get, path = "/v1/rollouts/{id}/decisions", operation_id = "rolloutDecisions", security(("token" = ["viewer"])), tag = "rollouts",
    params(RolloutIdPath, DecisionsQuery),
    responses(
        (status = 200, description = "A page of the rollout's decisions", body = Page<DecisionRow>),
        (status = 400, description = "A bad id or parameter", body = ErrorBody),
        (status = 404, description = "No such rollout", body = ErrorBody),
        crate::Unavailable,
    ))]
async fn decisions(
    State(s): State<AppState>,
    axum::Extension(who): axum::Extension<crate::auth::Principal>,
    Path(id): Path<String>,
    q: Params<PageQuery>,
) -> Result<Json<Page<DecisionRow>>, ApiError> {
    check_id(&id)?;
    crate::scope::rollout(&s, &who, &id).await?;
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

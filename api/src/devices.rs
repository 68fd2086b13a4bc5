//! Fleet queries: devices, one device, the fleet summary.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use otaledger_projections::fleet::{self, DeviceFilter, Page, Status, Summary, MAX_PAGE};
use serde::Deserialize;

use crate::{ApiError, AppState};

pub(crate) fn routes(state: AppState) -> Router {
    Router::new()
        .route("/v1/devices", get(list))
        .route("/v1/devices/{id}", get(one))
        .route("/v1/devices/{id}/history", get(history))
        .route("/v1/fleet/summary", get(summary))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    firmware: Option<String>,
    model: Option<String>,
    site: Option<String>,
    tag: Option<String>,
    status: Option<String>,
    cursor: Option<String>,
    limit: Option<String>,
}

fn filter_from(q: ListQuery) -> Result<DeviceFilter, ApiError> {
    let status = match q.status.as_deref() {
        None => None,
        Some("online") => Some(Status::Online),
        Some("offline") => Some(Status::Offline),
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid_parameter",
                format!("status must be online or offline, not {other:?}"),
            ))
        }
    };
    let limit = page_limit(q.limit.as_deref())?;
    let non_empty = |name: &str, v: Option<String>| match v {
        Some(s) if s.is_empty() || s.len() > 256 => Err(ApiError::bad_request(
            "invalid_parameter",
            format!("{name} must be 1 to 256 characters"),
        )),
        v => Ok(v),
    };
    Ok(DeviceFilter {
        firmware: non_empty("firmware", q.firmware)?,
        model: non_empty("model", q.model)?,
        site: non_empty("site", q.site)?,
        tag: non_empty("tag", q.tag)?,
        status,
        after: non_empty("cursor", q.cursor)?,
        limit,
    })
}

async fn list(
    State(s): State<AppState>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Page>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request("invalid_parameter", e.body_text()))?;
    let filter = filter_from(q)?;
    let page = fleet::list_devices(&s.pool, &filter, s.offline_after).await?;
    Ok(Json(page))
}

async fn one(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<fleet::Device>, ApiError> {
    check_device_id(&id)?;
    s.devices
        .get(id.clone())
        .await
        .map_err(|e| ApiError::unavailable(&e))?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no device {id:?}")))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    cursor: Option<String>,
    limit: Option<String>,
}

#[derive(Debug, serde::Serialize)]
struct HistoryPage {
    device_id: String,
    items: Vec<otaledger_projections::history::HistoryEntry>,
    next_cursor: Option<String>,
}

/// A device's history, oldest first: registrations, install reports and heartbeat runs.
async fn history(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<HistoryPage>, ApiError> {
    use otaledger_projections::history;
    check_device_id(&id)?;
    let Query(q) = q.map_err(|e| ApiError::bad_request("invalid_parameter", e.body_text()))?;
    let limit = page_limit(q.limit.as_deref())?;
    let items = history::history(&s.pool, &id, q.cursor.as_deref(), limit).await?;
    if items.is_empty() && q.cursor.is_none() {
        s.devices
            .get(id.clone())
            .await
            .map_err(|e| ApiError::unavailable(&e))?
            .ok_or_else(|| ApiError::not_found(format!("no device {id:?}")))?;
    }
    let next_cursor = (items.len() as i64 == limit)
        .then(|| items.last().map(history::cursor_after))
        .flatten();
    Ok(Json(HistoryPage {
        device_id: id,
        items,
        next_cursor,
    }))
}

/// The `limit` query parameter: 100 when absent, 1 to [`MAX_PAGE`].
pub(crate) fn page_limit(l: Option<&str>) -> Result<i64, ApiError> {
    match l {
        None => Ok(100),
        Some(l) => match l.parse::<i64>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(
                "invalid_parameter",
                format!("limit must be a whole number from 1 to {MAX_PAGE}, not {l:?}"),
            )),
        },
    }
}

fn check_device_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > 128 {
        return Err(ApiError::bad_request(
            "invalid_parameter",
            "device id must be 1 to 128 characters",
        ));
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SummaryQuery {
    /// RFC 3339: answer from the newest snapshot at or before this time.
    as_of: Option<String>,
}

#[derive(Debug, serde::Serialize)]
struct SnapshotSummary {
    /// The time the snapshot holds the fleet as of.
    as_of: chrono::DateTime<chrono::Utc>,
    snapshot: String,
    #[serde(flatten)]
    summary: Summary,
}

async fn summary(
    State(s): State<AppState>,
    q: Result<Query<SummaryQuery>, QueryRejection>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let Query(q) = q.map_err(|e| ApiError::bad_request("invalid_parameter", e.body_text()))?;
    let Some(at) = q.as_of else {
        return s
            .summary
            .get(&s.pool, s.offline_after)
            .await
            .map(|v| Json(v).into_response())
            .map_err(|e| ApiError::unavailable(&e));
    };
    let at = chrono::DateTime::parse_from_rfc3339(&at)
        .map_err(|e| {
            ApiError::bad_request(
                "invalid_parameter",
                format!("as_of must be an RFC 3339 time: {e}"),
            )
        })?
        .with_timezone(&chrono::Utc);
    let (snapshot, until) = otaledger_projections::rebuild::snapshot_at(&s.pool, at)
        .await
        .map_err(|e| ApiError::unavailable(&e))?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no snapshot at or before {at}; build one with `otaledger rebuild --until {}`",
                at.to_rfc3339()
            ))
        })?;
    let summary = fleet::summary_of_snapshot(&s.pool, &snapshot, until, s.offline_after)
        .await
        .map_err(|e| ApiError::unavailable(&e))?;
    Ok(Json(SnapshotSummary {
        as_of: until,
        snapshot,
        summary,
    })
    .into_response())
}

//! Fleet queries: devices, one device, the fleet summary.

use axum::extract::{Path, State};
use axum::Json;
use otaledger_projections::fleet::{self, DeviceFilter, Page, Status, Summary};
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::params::{self, page_limit, DeviceIdPath, Params};
use crate::{ApiError, AppState, ErrorBody};

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        // Provisioning shares the path; it lives with the rest of access.
        .routes(routes!(list, crate::tokens::provision))
        .routes(routes!(one))
        .routes(routes!(history))
        .routes(routes!(summary))
}

fn history_cursor_schema() -> utoipa::openapi::schema::ObjectBuilder {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .pattern(Some(otaledger_projections::history::CURSOR_PATTERN))
}

fn status_schema() -> utoipa::openapi::schema::ObjectBuilder {
    otaledger_domain::json_schema::one_of_words(["online", "offline"])
}

/// Filters of the device list; every one is optional and they combine with AND.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Exact firmware version.
    #[param(schema_with = params::text_schema)]
    firmware: Option<String>,
    /// Exact model.
    #[param(schema_with = params::text_schema)]
    model: Option<String>,
    /// Exact site.
    #[param(schema_with = params::text_schema)]
    site: Option<String>,
    /// Devices carrying this tag.
    #[param(schema_with = params::text_schema)]
    tag: Option<String>,
    /// Online: a heartbeat within the offline threshold.
    #[param(schema_with = status_schema)]
    status: Option<String>,
    /// `next_cursor` of the previous page.
    #[param(schema_with = params::text_schema)]
    cursor: Option<String>,
    /// Page size.
    #[param(schema_with = params::limit_schema)]
    limit: Option<String>,
}

fn filter_from(q: ListQuery, who: &crate::auth::Principal) -> Result<DeviceFilter, ApiError> {
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
    Ok(DeviceFilter {
        firmware: params::text("firmware", q.firmware)?,
        model: params::text("model", q.model)?,
        site: params::text("site", q.site)?,
        tag: params::text("tag", q.tag)?,
        status,
        after: params::text("cursor", q.cursor)?,
        limit,
        scope: who.scope.clone(),
    })
}

/// List devices, ordered by id.
#[utoipa::path(get, path = "/v1/devices", operation_id = "listDevices", security(("token" = ["viewer"])), tag = "fleet", params(ListQuery),
    responses(
        (status = 200, description = "A page of devices", body = Page),
        (status = 400, description = "A bad parameter", body = ErrorBody),
        crate::Unavailable,
    ))]
async fn list(
    State(s): State<AppState>,
    axum::Extension(who): axum::Extension<crate::auth::Principal>,
    Params(q): Params<ListQuery>,
) -> Result<Json<Page>, ApiError> {
    let filter = filter_from(q, &who)?;
    let page = fleet::list_devices(&s.pool, &filter, s.offline_after).await?;
    Ok(Json(page))
}

/// One device: its registration, firmware, last health and status.
#[utoipa::path(get, path = "/v1/devices/{id}", operation_id = "getDevice", security(("token" = ["viewer"])), tag = "fleet", params(DeviceIdPath),
    responses(
        (status = 200, description = "The device", body = fleet::Device),
        (status = 400, description = "A bad id", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
        crate::Unavailable,
    ))]
async fn one(
    State(s): State<AppState>,
    axum::Extension(who): axum::Extension<crate::auth::Principal>,
    Path(id): Path<String>,
) -> Result<Json<fleet::Device>, ApiError> {
    params::id("device", &id)?;
    s.devices
        .get(id.clone())
        .await
        .map_err(|e| ApiError::unavailable(&e))?
        // Outside a scoped token's devices, as if there were none.
        .filter(|d| crate::scope::admits(&who, d))
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no device {id:?}")))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    /// `next_cursor` of the previous page.
    #[param(schema_with = history_cursor_schema)]
    cursor: Option<String>,
    /// Page size.
    #[param(schema_with = params::limit_schema)]
    limit: Option<String>,
}

/// A page of a device's history.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct HistoryPage {
    device_id: String,
    items: Vec<otaledger_projections::history::HistoryEntry>,
    next_cursor: Option<String>,
}

/// A device's history, oldest first: registrations, install reports and heartbeat runs.
#[utoipa::path(get, path = "/v1/devices/{id}/history", operation_id = "deviceHistory", security(("token" = ["viewer"])), tag = "fleet",
    params(DeviceIdPath, HistoryQuery),
    responses(
        (status = 200, description = "A page of the device's history", body = HistoryPage),
        (status = 400, description = "A bad id or parameter", body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
        crate::Unavailable,
    ))]
async fn history(
    State(s): State<AppState>,
    axum::Extension(who): axum::Extension<crate::auth::Principal>,
    Path(id): Path<String>,
    Params(q): Params<HistoryQuery>,
) -> Result<Json<HistoryPage>, ApiError> {
    use otaledger_projections::history;
    params::id("device", &id)?;
    let limit = page_limit(q.limit.as_deref())?;
    let cursor = params::text("cursor", q.cursor)?;
    // A scoped token sees the history of its own devices only (as they are now).
    if who.scope.is_some() {
        s.devices
            .get(id.clone())
            .await
            .map_err(|e| ApiError::unavailable(&e))?
            .filter(|d| crate::scope::admits(&who, d))
            .ok_or_else(|| ApiError::not_found(format!("no device {id:?}")))?;
    }
    let items = history::history(&s.pool, &id, cursor.as_deref(), limit).await?;
    if items.is_empty() && cursor.is_none() {
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

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct SummaryQuery {
    /// RFC 3339: answer from the newest snapshot at or before this time.
    #[param(value_type = Option<chrono::DateTime<chrono::Utc>>)]
    as_of: Option<String>,
}

/// The fleet as of a snapshot.
#[derive(Debug, serde::Serialize)]
struct SnapshotSummary {
    /// The time the snapshot holds the fleet as of.
    as_of: chrono::DateTime<chrono::Utc>,
    snapshot: String,
    #[serde(flatten)]
    summary: Summary,
}

/// Device counts: total, and by status, firmware, model and site; now or as of a snapshot.
#[utoipa::path(get, path = "/v1/fleet/summary", operation_id = "fleetSummary", security(("token" = ["viewer"])), tag = "fleet", params(SummaryQuery),
    responses(
        (status = 200, description = "The counts (with `as_of` and `snapshot` when asked for a time)",
            body = Summary),
        (status = 400, description = "A bad parameter", body = ErrorBody),
        (status = 404, description = "No snapshot at or before that time", body = ErrorBody),
        crate::Unavailable,
    ))]
async fn summary(
    State(s): State<AppState>,
    Params(q): Params<SummaryQuery>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
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

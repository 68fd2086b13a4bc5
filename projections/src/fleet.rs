//! Queries over the fleet view.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use otaledger_domain::device_view::{DeviceView, Position};
use otaledger_domain::events::Health;
use serde::Serialize;
use sqlx::{PgPool, Postgres, QueryBuilder};

use crate::{DbContext, Error, Result};

/// Online means an event was recorded within this window, unless configured otherwise.
pub const DEFAULT_OFFLINE_AFTER: Duration = Duration::from_secs(300);
pub const MAX_PAGE: i64 = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Online,
    Offline,
}

/// A device as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Device {
    pub device_id: String,
    pub model: Option<String>,
    pub site: Option<String>,
    pub tags: Vec<String>,
    pub gateway_id: Option<String>,
    pub hardware_rev: Option<String>,
    pub firmware_version: Option<String>,
    pub status: Status,
    pub first_seen_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    pub last_heartbeat_at: Option<DateTime<Utc>>,
    pub health: Option<Health>,
    pub events: i64,
    pub position: PositionOut,
}

/// Where the device's last event sits in `ota.device-events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct PositionOut {
    pub partition: i32,
    pub offset: i64,
}

row_type! {
    struct Row {
        device_id: String,
        model: Option<String>,
        site: Option<String>,
        tags: Option<Vec<String>>,
        gateway_id: Option<String>,
        hardware_rev: Option<String>,
        firmware_version: Option<String>,
        first_seen_at: DateTime<Utc>,
        last_seen_at: DateTime<Utc>,
        last_heartbeat_at: Option<DateTime<Utc>>,
        uptime_s: Option<i64>,
        cpu_pct: Option<f32>,
        mem_pct: Option<f32>,
        temperature_c: Option<f32>,
        error_count: Option<i32>,
        signal_dbm: Option<i32>,
        events: i64,
        last_partition: i32,
        last_offset: i64,
    }
}

const COLUMNS: &str = "device_id, model, site, tags, gateway_id, hardware_rev, firmware_version, \
    first_seen_at, last_seen_at, last_heartbeat_at, uptime_s, cpu_pct, mem_pct, temperature_c, \
    error_count, signal_dbm, events, last_partition, last_offset";

impl Row {
    fn health(&self) -> Option<Health> {
        self.last_heartbeat_at?;
        Some(Health {
            uptime_s: self.uptime_s.unwrap_or_default(),
            cpu_pct: self.cpu_pct.unwrap_or_default(),
            mem_pct: self.mem_pct.unwrap_or_default(),
            temperature_c: self.temperature_c.unwrap_or_default(),
            error_count: self.error_count.unwrap_or_default(),
            signal_dbm: self.signal_dbm,
        })
    }

    fn into_device(self, online_since: DateTime<Utc>) -> Device {
        let health = self.health();
        Device {
            status: if self.last_seen_at >= online_since {
                Status::Online
            } else {
                Status::Offline
            },
            device_id: self.device_id,
            model: self.model,
            site: self.site,
            tags: self.tags.unwrap_or_default(),
            gateway_id: self.gateway_id,
            hardware_rev: self.hardware_rev,
            firmware_version: self.firmware_version,
            first_seen_at: self.first_seen_at,
            last_seen_at: self.last_seen_at,
            last_heartbeat_at: self.last_heartbeat_at,
            health,
            events: self.events,
            position: PositionOut {
                partition: self.last_partition,
                offset: self.last_offset,
            },
        }
    }

    fn into_view(self) -> DeviceView {
        let health = self.health();
        DeviceView {
            device_id: self.device_id,
            model: self.model,
            site: self.site,
            tags: self.tags,
            gateway_id: self.gateway_id,
            hardware_rev: self.hardware_rev,
            firmware_version: self.firmware_version,
            first_seen_at: self.first_seen_at.timestamp_micros(),
            last_seen_at: self.last_seen_at.timestamp_micros(),
            last_heartbeat_at: self.last_heartbeat_at.map(|t| t.timestamp_micros()),
            health,
            events: self.events,
            last_position: Position {
                partition: self.last_partition,
                offset: self.last_offset,
            },
        }
    }
}

/// Filters of `GET /v1/devices`; every one is optional.
#[derive(Debug, Clone, Default)]
pub struct DeviceFilter {
    pub firmware: Option<String>,
    pub model: Option<String>,
    pub site: Option<String>,
    pub tag: Option<String>,
    pub status: Option<Status>,
    /// Keyset cursor: devices with ids after this one.
    pub after: Option<String>,
    pub limit: i64,
    /// Only the devices this selector selects (a scoped token's, ADR 0031).
    pub scope: Option<otaledger_domain::events::TargetSelector>,
}

/// One page of devices and the cursor of the next page, if any.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[schema(as = DevicePage)]
pub struct Page {
    pub items: Vec<Device>,
    pub next_cursor: Option<String>,
}

fn online_since(offline_after: Duration) -> DateTime<Utc> {
    Utc::now() - chrono::Duration::from_std(offline_after).unwrap_or_default()
}

pub async fn list_devices(
    pool: &PgPool,
    f: &DeviceFilter,
    offline_after: Duration,
) -> Result<Page> {
    if !(1..=MAX_PAGE).contains(&f.limit) {
        return Err(Error::InvalidQuery(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
    let since = online_since(offline_after);
    let mut q: QueryBuilder<'_, Postgres> =
        QueryBuilder::new(format!("SELECT {COLUMNS} FROM devices WHERE true"));
    if let Some(v) = &f.firmware {
        q.push(" AND firmware_version = ").push_bind(v);
    }
    if let Some(v) = &f.model {
        q.push(" AND model = ").push_bind(v);
    }
    if let Some(v) = &f.site {
        q.push(" AND site = ").push_bind(v);
    }
    if let Some(v) = &f.tag {
        q.push(" AND tags @> ARRAY[").push_bind(v).push("]::text[]");
    }
    match f.status {
        Some(Status::Online) => {
            q.push(" AND last_seen_at >= ").push_bind(since);
        }
        Some(Status::Offline) => {
            q.push(" AND last_seen_at < ").push_bind(since);
        }
        None => {}
    }
    if let Some(after) = &f.after {
        q.push(" AND device_id > ").push_bind(after);
    }
    if let Some(s) = &f.scope {
        // As a rollout's selector selects (projections::targets): any of each list, all tags.
        for (column, values) in [
            ("model", &s.models),
            ("site", &s.sites),
            ("firmware_version", &s.current_versions),
            ("device_id", &s.device_ids),
        ] {
            q.push(" AND (cardinality(").push_bind(values);
            q.push("::text[]) = 0 OR ").push(column).push(" = ANY(");
            q.push_bind(values).push("))");
        }
        q.push(" AND tags @> ").push_bind(&s.tags).push("::text[]");
    }
    // One extra row tells whether another page follows.
    q.push(" ORDER BY device_id LIMIT ").push_bind(f.limit + 1);
    let mut rows: Vec<Row> = q
        .build_query_as()
        .fetch_all(pool)
        .await
        .db("listing devices")?;
    let more = rows.len() > usize::try_from(f.limit).unwrap_or(usize::MAX);
    rows.truncate(usize::try_from(f.limit).unwrap_or(usize::MAX));
    let next_cursor = if more {
        rows.last().map(|r| r.device_id.clone())
    } else {
        None
    };
    Ok(Page {
        items: rows.into_iter().map(|r| r.into_device(since)).collect(),
        next_cursor,
    })
}

/// Several devices in one round trip (the API's lookup batcher); absent ids are left out.
pub async fn get_devices(
    pool: &PgPool,
    device_ids: &[String],
    offline_after: Duration,
) -> Result<Vec<Device>> {
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM devices WHERE device_id = ANY($1)"
    ))
    .bind(device_ids)
    .fetch_all(pool)
    .await
    .db("reading devices")?;
    let since = online_since(offline_after);
    Ok(rows.into_iter().map(|r| r.into_device(since)).collect())
}

/// `GET /v1/fleet/summary`.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Summary {
    pub total: i64,
    pub by_status: BTreeMap<String, i64>,
    pub by_firmware: BTreeMap<String, i64>,
    pub by_model: BTreeMap<String, i64>,
    pub by_site: BTreeMap<String, i64>,
}

/// A summary from the maintained counts and the number of devices online.
fn assemble(counts: Vec<(String, String, i64)>, online: i64) -> Summary {
    let mut s = Summary {
        total: 0,
        by_status: BTreeMap::new(),
        by_firmware: BTreeMap::new(),
        by_model: BTreeMap::new(),
        by_site: BTreeMap::new(),
    };
    for (dim, value, n) in counts {
        match dim.as_str() {
            "total" => s.total = n,
            "firmware" => drop(s.by_firmware.insert(value, n)),
            "model" => drop(s.by_model.insert(value, n)),
            "site" => drop(s.by_site.insert(value, n)),
            _ => {}
        }
    }
    s.by_status.insert("online".into(), online);
    s.by_status.insert("offline".into(), s.total - online);
    s
}

/// Devices of the fleet view by firmware version (empty: none reported), among those whose id
/// starts with `id_prefix`: how far a fleet (or a simulated one in a shared ledger) has updated.
pub async fn firmware_counts(pool: &PgPool, id_prefix: &str) -> Result<Vec<(String, i64)>> {
    sqlx::query_as(
        "SELECT coalesce(firmware_version, ''), count(*) FROM devices
         WHERE starts_with(device_id, $1) GROUP BY 1 ORDER BY 1",
    )
    .bind(id_prefix)
    .fetch_all(pool)
    .await
    .db("counting devices by firmware")
}

pub async fn summary(pool: &PgPool, offline_after: Duration) -> Result<Summary> {
    let counts: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT dimension, value, devices FROM fleet_counts WHERE devices <> 0")
            .fetch_all(pool)
            .await
            .db("reading fleet counts")?;
    let online: i64 = sqlx::query_scalar("SELECT count(*) FROM devices WHERE last_seen_at >= $1")
        .bind(online_since(offline_after))
        .fetch_one(pool)
        .await
        .db("counting online devices")?;
    Ok(assemble(counts, online))
}

/// The summary of a snapshot schema (`otaledger rebuild --until`): online means seen within
/// `offline_after` before the snapshot's time.
pub async fn summary_of_snapshot(
    pool: &PgPool,
    schema: &str,
    until: DateTime<Utc>,
    offline_after: Duration,
) -> Result<Summary> {
    otaledger_ledger::db::validate_schema(schema)
        .map_err(|e| crate::Error::InvalidQuery(e.to_string()))?;
    let counts: Vec<(String, String, i64)> = sqlx::query_as(&format!(
        "SELECT dimension, value, devices FROM {schema}.fleet_counts WHERE devices <> 0"
    ))
    .fetch_all(pool)
    .await
    .db("reading snapshot counts")?;
    let since = until - chrono::Duration::from_std(offline_after).unwrap_or_default();
    let online: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {schema}.devices WHERE last_seen_at >= $1"
    ))
    .bind(since)
    .fetch_one(pool)
    .await
    .db("counting snapshot online devices")?;
    Ok(assemble(counts, online))
}

/// Every row as a [`DeviceView`], by device id (to compare with an in-memory fold).
pub async fn load_views(pool: &PgPool) -> Result<BTreeMap<String, DeviceView>> {
    let rows: Vec<Row> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM devices"))
        .fetch_all(pool)
        .await
        .db("loading devices")?;
    Ok(rows
        .into_iter()
        .map(|r| (r.device_id.clone(), r.into_view()))
        .collect())
}

//! The fleet view as the rollout saga sees it: which devices a rollout targets, and through
//! which gateway each is reached. The saga's only reads of this crate's tables.

use otaledger_domain::events::TargetSelector;
use otaledger_domain::time::Micros;
use sqlx::PgPool;

use crate::{DbContext, Result};

/// A device a rollout may target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub device_id: String,
    /// Empty when the device never reported one.
    pub firmware_version: String,
    /// The gateway the device is reached through; `None`: directly over MQTT.
    pub gateway_id: Option<String>,
    /// Empty when the device never registered one.
    pub model: String,
}

/// Devices of the fleet view matching a selector (every listed tag must be present; empty
/// lists do not constrain) that do not already run `version`; with `since`, only devices first
/// seen after it; with `hardware_revs`, only devices of those hardware revisions. Ordered by
/// device id.
pub async fn select(
    pool: &PgPool,
    s: &TargetSelector,
    version: &str,
    since: Option<Micros>,
    hardware_revs: &[String],
) -> Result<Vec<Candidate>> {
    let rows: Vec<(String, String, Option<String>, String)> = sqlx::query_as(
        "SELECT device_id, coalesce(firmware_version, ''), gateway_id, coalesce(model, '')
         FROM devices
         WHERE (cardinality($1::text[]) = 0 OR model = ANY($1))
           AND (cardinality($2::text[]) = 0 OR site = ANY($2))
           AND (cardinality($3::text[]) = 0 OR tags @> $3)
           AND (cardinality($4::text[]) = 0 OR firmware_version = ANY($4))
           AND (cardinality($5::text[]) = 0 OR device_id = ANY($5))
           AND firmware_version IS DISTINCT FROM $6
           AND ($7::bigint IS NULL OR first_seen_at > to_timestamp($7::bigint / 1e6))
           AND (cardinality($8::text[]) = 0 OR hardware_rev = ANY($8))
         ORDER BY device_id",
    )
    .bind(&s.models)
    .bind(&s.sites)
    .bind(&s.tags)
    .bind(&s.current_versions)
    .bind(&s.device_ids)
    .bind(version)
    .bind(since)
    .bind(hardware_revs)
    .fetch_all(pool)
    .await
    .db("resolving rollout targets")?;
    Ok(rows
        .into_iter()
        .map(
            |(device_id, firmware_version, gateway_id, model)| Candidate {
                device_id,
                firmware_version,
                gateway_id,
                model,
            },
        )
        .collect())
}

/// The gateway of each of `ids` that the fleet view knows (`None`: reached directly).
pub async fn gateways(pool: &PgPool, ids: &[String]) -> Result<Vec<(String, Option<String>)>> {
    sqlx::query_as("SELECT device_id, gateway_id FROM devices WHERE device_id = ANY($1)")
        .bind(ids)
        .fetch_all(pool)
        .await
        .db("looking up gateways")
}

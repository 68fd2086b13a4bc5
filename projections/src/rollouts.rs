//! The rollout views: one row per rollout, one per targeted device, and the explained timeline
//! of rollout-level decisions, folded from `ota.rollout-events` in batches (a device's events
//! of one batch coalesce into one row update).

use chrono::{DateTime, Utc};
use otaledger_domain::events::DeviceRolloutState;
use otaledger_ledger::{Positioned, Projection};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::rollout_fold::RolloutBatch;
use crate::{DbContext, Error, Result};

/// Projects `ota.rollout-events` into `rollouts`, `rollout_devices` and `rollout_decisions`.
#[derive(Debug, Default)]
pub struct RolloutProjector;

impl RolloutProjector {
    /// Writes what a batch folded to: new rollouts, header updates, the devices' rows in one
    /// merge, and the decisions.
    async fn write(tx: &mut PgConnection, batch: RolloutBatch) -> Result<()> {
        let RolloutBatch {
            new_rollouts,
            headers,
            devices,
            decisions,
        } = batch;
        for (r, at) in &new_rollouts {
            sqlx::query(
                "INSERT INTO rollouts (rollout_id, state, requested_by, release, selector, strategy,
                                       requested_at, updated_at)
                 VALUES ($1, 'REQUESTED', $2, $3, $4, $5, $6, $6) ON CONFLICT DO NOTHING",
            )
            .bind(&r.rollout_id)
            .bind(&r.requested_by)
            .bind(serde_json::to_value(&r.release).unwrap_or_default())
            .bind(serde_json::to_value(&r.selector).unwrap_or_default())
            .bind(serde_json::to_value(&r.strategy).unwrap_or_default())
            .bind(at)
            .execute(&mut *tx)
            .await
            .db("inserting rollout")?;
        }
        for (id, h) in &headers {
            sqlx::query(
                "UPDATE rollouts SET
                    state = coalesce($2, state),
                    state_reason = coalesce($3, state_reason),
                    current_wave = coalesce($4, current_wave),
                    targeted = targeted + $5,
                    started_at = coalesce(started_at, $6),
                    finished_at = coalesce($7, finished_at),
                    updated_at = greatest(updated_at, $8)
                 WHERE rollout_id = $1",
            )
            .bind(id)
            .bind(h.state.as_ref().map(|s| s.0))
            .bind(h.state.as_ref().map(|s| s.1.as_str()))
            .bind(h.current_wave)
            .bind(h.targeted)
            .bind(h.started_at)
            .bind(h.finished_at)
            .bind(h.updated_at)
            .execute(&mut *tx)
            .await
            .db("updating rollout")?;
        }
        if !devices.is_empty() {
            let n = devices.len();
            let (mut rid, mut did, mut wave, mut state) = (
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
            );
            let (mut attempt, mut cmd, mut from, mut reason, mut at) = (
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
            );
            for ((r, d), p) in devices {
                rid.push(r);
                did.push(d);
                wave.push(p.wave);
                state.push(p.state);
                attempt.push(p.attempt);
                cmd.push(p.command_id);
                from.push(p.from_version);
                reason.push(p.reason);
                at.push(p.updated_at);
            }
            sqlx::query(
                "INSERT INTO rollout_devices AS t (rollout_id, device_id, wave, state, attempt,
                                                   command_id, from_version, reason, updated_at)
                 SELECT r, d, coalesce(w, -1), coalesce(s, ''), coalesce(a, 0), c, f, re, u
                 FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::int[], $6::uuid[],
                             $7::text[], $8::text[], $9::timestamptz[])
                      AS x(r, d, w, s, a, c, f, re, u)
                 -- A patch without a wave (-1) or state ('') keeps the row's.
                 ON CONFLICT (rollout_id, device_id) DO UPDATE SET
                    wave = CASE WHEN excluded.wave >= 0 THEN excluded.wave ELSE t.wave END,
                    state = CASE WHEN excluded.state <> '' THEN excluded.state ELSE t.state END,
                    attempt = greatest(t.attempt, excluded.attempt),
                    command_id = coalesce(excluded.command_id, t.command_id),
                    from_version = coalesce(excluded.from_version, t.from_version),
                    reason = coalesce(excluded.reason, t.reason),
                    updated_at = greatest(t.updated_at, excluded.updated_at)",
            )
            .bind(&rid)
            .bind(&did)
            .bind(&wave)
            .bind(&state)
            .bind(&attempt)
            .bind(&cmd)
            .bind(&from)
            .bind(&reason)
            .bind(&at)
            .execute(&mut *tx)
            .await
            .db("merging rollout devices")?;
        }
        if !decisions.is_empty() {
            let mut cols = (
                vec![],
                vec![],
                vec![],
                vec![],
                vec![],
                vec![],
                vec![],
                vec![],
            );
            for d in decisions {
                cols.0.push(d.rollout_id);
                cols.1.push(d.partition);
                cols.2.push(d.offset);
                cols.3.push(d.event_id);
                cols.4.push(d.event_type);
                cols.5.push(d.occurred_at);
                cols.6.push(d.summary);
                cols.7.push(d.detail);
            }
            sqlx::query(
                "INSERT INTO rollout_decisions (rollout_id, partition, \"offset\", event_id, event_type,
                                                occurred_at, summary, detail)
                 SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[], $4::uuid[], $5::text[],
                                      $6::timestamptz[], $7::text[], $8::jsonb[])
                 ON CONFLICT DO NOTHING",
            )
            .bind(&cols.0)
            .bind(&cols.1)
            .bind(&cols.2)
            .bind(&cols.3)
            .bind(&cols.4)
            .bind(&cols.5)
            .bind(&cols.6)
            .bind(&cols.7)
            .execute(&mut *tx)
            .await
            .db("inserting rollout decisions")?;
        }
        Ok(())
    }
}

impl Projection for RolloutProjector {
    async fn apply(
        &mut self,
        tx: &mut PgConnection,
        events: &[Positioned],
    ) -> otaledger_ledger::Result<()> {
        Ok(Self::write(tx, RolloutBatch::fold(events)).await?)
    }
}

// ---- queries ---------------------------------------------------------------------------------

row_type! {
    /// A rollout as requested and where it stands.
    #[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
    pub struct RolloutRow {
        pub rollout_id: String,
        pub state: String,
        pub state_reason: Option<String>,
        pub requested_by: String,
        #[schema(value_type = Object)]
        pub release: serde_json::Value,
        #[schema(value_type = Object)]
        pub selector: serde_json::Value,
        #[schema(value_type = Object)]
        pub strategy: serde_json::Value,
        pub current_wave: i32,
        pub targeted: i64,
        pub requested_at: DateTime<Utc>,
        pub started_at: Option<DateTime<Utc>>,
        pub finished_at: Option<DateTime<Utc>>,
        pub updated_at: DateTime<Utc>,
    }
}

const ROLLOUT_COLUMNS: &str = "rollout_id, state, state_reason, requested_by, release, selector,
    strategy, current_wave, targeted, requested_at, started_at, finished_at, updated_at";

/// Rollouts, newest first; `after` is the last rollout id of the previous page.
pub async fn list_rollouts(
    pool: &PgPool,
    state: Option<&str>,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<RolloutRow>> {
    sqlx::query_as(&format!(
        "SELECT {ROLLOUT_COLUMNS} FROM rollouts
         WHERE ($1::text IS NULL OR state = $1)
           AND ($2::text IS NULL OR (requested_at, rollout_id) <
                (SELECT requested_at, rollout_id FROM rollouts WHERE rollout_id = $2))
         ORDER BY requested_at DESC, rollout_id DESC LIMIT $3"
    ))
    .bind(state)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
    .db("listing rollouts")
}

pub async fn get_rollout(pool: &PgPool, id: &str) -> Result<Option<RolloutRow>> {
    sqlx::query_as(&format!(
        "SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE rollout_id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await
    .db("reading rollout")
}

/// Devices per wave and state.
pub async fn wave_counts(pool: &PgPool, id: &str) -> Result<Vec<(i32, String, i64)>> {
    sqlx::query_as(
        "SELECT wave, state, count(*) FROM rollout_devices WHERE rollout_id = $1
         GROUP BY wave, state ORDER BY wave, state",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .db("counting rollout devices")
}

row_type! {
    /// A device in a rollout.
    #[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
    pub struct RolloutDeviceRow {
        pub device_id: String,
        pub wave: i32,
        pub state: String,
        pub attempt: i32,
        pub command_id: Option<Uuid>,
        pub from_version: Option<String>,
        pub reason: Option<String>,
        pub updated_at: DateTime<Utc>,
    }
}

/// A rollout's devices by device id; `after` is the last device id of the previous page.
pub async fn rollout_devices(
    pool: &PgPool,
    id: &str,
    state: Option<&str>,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<RolloutDeviceRow>> {
    if let Some(s) = state {
        if !DeviceRolloutState::NAMES.contains(&s) {
            return Err(Error::InvalidQuery(format!(
                "state must be one of {}",
                DeviceRolloutState::NAMES.join(", ")
            )));
        }
    }
    sqlx::query_as(
        "SELECT device_id, wave, state, attempt, command_id, from_version, reason, updated_at
         FROM rollout_devices
         WHERE rollout_id = $1 AND ($2::text IS NULL OR state = $2)
           AND ($3::text IS NULL OR device_id > $3)
         ORDER BY device_id LIMIT $4",
    )
    .bind(id)
    .bind(state)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
    .db("listing rollout devices")
}

row_type! {
    /// A decision of the rollout and what it was decided from.
    #[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
    pub struct DecisionRow {
        pub position: i64,
        pub event_id: Uuid,
        pub event_type: String,
        pub occurred_at: DateTime<Utc>,
        pub summary: String,
        #[schema(value_type = Object)]
        pub detail: serde_json::Value,
    }
}

/// The rollout's timeline in ledger order; `after` is the last position of the previous page.
pub async fn decisions(
    pool: &PgPool,
    id: &str,
    after: Option<i64>,
    limit: i64,
) -> Result<Vec<DecisionRow>> {
    sqlx::query_as(
        "SELECT \"offset\" AS position, event_id, event_type, occurred_at, summary, detail
         FROM rollout_decisions WHERE rollout_id = $1 AND ($2::bigint IS NULL OR \"offset\" > $2)
         ORDER BY partition, \"offset\" LIMIT $3",
    )
    .bind(id)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
    .db("listing rollout decisions")
}

/// Whether a rollout that is running or paused commanded `holder` to install the artifact with
/// digest `sha256`: the device itself or, with `gateway`, a device attached to that gateway.
/// Who may download an artifact (ADR 0037).
pub async fn commanded_artifact(
    pool: &PgPool,
    sha256: &str,
    holder: &str,
    gateway: bool,
) -> Result<bool> {
    // Two statements, so each uses its index: (rollout_id, device_id) for a device, the
    // attachments by gateway for a gateway.
    let sql = if gateway {
        "SELECT EXISTS (
             SELECT 1
             FROM rollouts r
             JOIN device_gateways g ON g.gateway_id = $2
             JOIN rollout_devices rd
               ON rd.rollout_id = r.rollout_id AND rd.device_id = g.device_id
             WHERE r.release->>'sha256' = $1
               AND r.state IN ('RUNNING', 'PAUSED')
               AND rd.command_id IS NOT NULL
         )"
    } else {
        "SELECT EXISTS (
             SELECT 1
             FROM rollouts r
             JOIN rollout_devices rd ON rd.rollout_id = r.rollout_id AND rd.device_id = $2
             WHERE r.release->>'sha256' = $1
               AND r.state IN ('RUNNING', 'PAUSED')
               AND rd.command_id IS NOT NULL
         )"
    };
    sqlx::query_scalar(sql)
        .bind(sha256)
        .bind(holder)
        .fetch_one(pool)
        .await
        .db("checking who may download an artifact")
}

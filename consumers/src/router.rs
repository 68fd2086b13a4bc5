//! The report router: copies what devices report about a rollout from `ota.device-events`
//! (keyed by device) into `ota.rollout-events` (keyed by rollout), so each rollout's single
//! writer finds its inputs in its own partition.
//!
//! Routed: install progress and results that name a rollout, and, for the health gate, the
//! first heartbeat of a device after it reported a successful install. The devices awaiting
//! that heartbeat are kept in `router_awaiting_heartbeat`, written in the transaction that
//! stores the router's offsets. A routed event's id derives from its source event's, so routing
//! again after a crash appends the same event id (consumers de-duplicate on it).

use std::collections::HashMap;

use otaledger_domain::events::{DeviceReportRouted, InstallOutcome, Payload, ReportKind};
use otaledger_domain::ids::derived_event_id;
use otaledger_domain::time::now_micros;
use otaledger_domain::Event;
use otaledger_ledger::kafka::EventProducer;
use otaledger_ledger::metrics::{Counter, REGISTRY};
use sqlx::PgConnection;

use otaledger_ledger::runner::{Positioned, Projection};
use otaledger_ledger::DbContext;

use crate::Result;

/// The router's table, one statement each: `since_us` (when the success was recorded, by
/// otaledger's clock) came later, and rows from before it count from the upgrade.
pub const ROUTER_DDL: [&str; 3] = [
    "CREATE TABLE IF NOT EXISTS router_awaiting_heartbeat (
        device_id  text PRIMARY KEY,
        rollout_id text NOT NULL,
        version    text NOT NULL
    )",
    "ALTER TABLE router_awaiting_heartbeat ADD COLUMN IF NOT EXISTS since_us bigint NOT NULL
        DEFAULT (extract(epoch FROM now()) * 1000000)::bigint",
    "CREATE INDEX IF NOT EXISTS router_awaiting_heartbeat_since
        ON router_awaiting_heartbeat (since_us)",
];

/// How long a device is awaited after its success: the longest health-gate window a rollout
/// may have, and an hour more. A heartbeat later than that can no longer pass any gate, so a
/// device that never reports again (dead, or replaced) stops being awaited.
pub const AWAIT_FOR_US: i64 =
    (*otaledger_domain::rollout_request::limits::HEALTH_GATE_WINDOW_S.end() + 3600) * 1_000_000;
/// How often the router prunes, at most, in the ledger's recorded time (not the router's
/// clock: a replay, or a router catching up, prunes at the same points).
const PRUNE_EVERY_US: i64 = 60 * 1_000_000;

/// The devices that are no longer awaited once the ledger has recorded up to `latest_us`.
#[must_use]
pub fn expired(since_us: i64, latest_us: i64) -> bool {
    since_us < latest_us.saturating_sub(AWAIT_FOR_US)
}

/// Routes device reports to rollouts; see the module documentation.
#[derive(Debug)]
pub struct Router {
    producer: EventProducer,
    /// Devices awaiting a heartbeat for the health gate: device → (rollout, version, when the
    /// success was recorded).
    awaiting: HashMap<String, (String, String, i64)>,
    loaded: bool,
    routed: Counter,
    pruned: Counter,
    /// The ledger time of the last pruning.
    last_pruned_us: Option<i64>,
}

impl Router {
    #[must_use]
    pub fn new(producer: EventProducer) -> Self {
        Router {
            producer,
            awaiting: HashMap::new(),
            loaded: false,
            routed: REGISTRY.counter(
                "otaledger_router_routed_total",
                "Device reports routed to their rollout's stream",
                &[],
            ),
            pruned: REGISTRY.counter(
                "otaledger_router_awaiting_pruned_total",
                "Devices no longer awaited for a heartbeat: none came within the longest health-gate window",
                &[],
            ),
            last_pruned_us: None,
        }
    }

    async fn apply_batch(&mut self, tx: &mut PgConnection, events: &[Positioned]) -> Result<()> {
        if !self.loaded {
            let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
                "SELECT device_id, rollout_id, version, since_us FROM router_awaiting_heartbeat",
            )
            .fetch_all(&mut *tx)
            .await
            .db("loading devices awaiting a heartbeat")?;
            self.awaiting = rows
                .into_iter()
                .map(|(d, r, v, since)| (d, (r, v, since)))
                .collect();
            self.loaded = true;
        }
        let mut routed = Vec::new();
        let mut awaiting_set: HashMap<String, Option<(String, String, i64)>> = HashMap::new();
        for p in events {
            let e = &p.event;
            let report = match &e.payload {
                Payload::InstallProgress(i) => i.rollout_id.as_ref().map(|r| DeviceReportRouted {
                    rollout_id: r.clone(),
                    device_id: i.device_id.clone(),
                    command_id: i.command_id,
                    report: ReportKind::Progress,
                    phase: Some(i.phase),
                    outcome: None,
                    firmware_version: None,
                    error_code: None,
                    message: None,
                    source_event_id: e.meta.event_id,
                    source_partition: p.position.partition,
                    source_offset: p.position.offset,
                }),
                Payload::InstallResult(i) => i.rollout_id.as_ref().map(|r| {
                    if i.outcome == InstallOutcome::Succeeded {
                        let v = (r.clone(), i.firmware_version.clone(), e.meta.recorded_at);
                        self.awaiting.insert(i.device_id.clone(), v.clone());
                        awaiting_set.insert(i.device_id.clone(), Some(v));
                    }
                    DeviceReportRouted {
                        rollout_id: r.clone(),
                        device_id: i.device_id.clone(),
                        command_id: i.command_id,
                        report: ReportKind::Result,
                        phase: None,
                        outcome: Some(i.outcome),
                        firmware_version: Some(i.firmware_version.clone()),
                        error_code: i.error_code.clone(),
                        message: i.message.clone(),
                        source_event_id: e.meta.event_id,
                        source_partition: p.position.partition,
                        source_offset: p.position.offset,
                    }
                }),
                Payload::Heartbeat(h) => self.awaiting.remove(&h.device_id).map(|(r, _, _)| {
                    awaiting_set.insert(h.device_id.clone(), None);
                    DeviceReportRouted {
                        rollout_id: r,
                        device_id: h.device_id.clone(),
                        command_id: None,
                        report: ReportKind::Heartbeat,
                        phase: None,
                        outcome: None,
                        firmware_version: Some(h.firmware_version.clone()),
                        error_code: None,
                        message: None,
                        source_event_id: e.meta.event_id,
                        source_partition: p.position.partition,
                        source_offset: p.position.offset,
                    }
                }),
                _ => None,
            };
            if let Some(r) = report {
                routed.push(Event::new(
                    derived_event_id(&["routed", &e.meta.event_id.hyphenated().to_string()]),
                    Payload::DeviceReportRouted(r),
                    e.meta.occurred_at,
                    now_micros(),
                    e.meta.trace_id.clone(),
                ));
            }
        }
        // Kafka writes first, awaited after the database work: the two round trips overlap.
        let mut pending = Vec::with_capacity(routed.len());
        for e in &routed {
            pending.push(self.producer.enqueue(e).await?);
        }
        if !awaiting_set.is_empty() {
            let (mut put_d, mut put_r, mut put_v, mut put_s, mut del) =
                (vec![], vec![], vec![], vec![], vec![]);
            for (d, v) in awaiting_set {
                match v {
                    Some((r, ver, since)) => {
                        put_d.push(d);
                        put_r.push(r);
                        put_v.push(ver);
                        put_s.push(since);
                    }
                    None => del.push(d),
                }
            }
            sqlx::query("DELETE FROM router_awaiting_heartbeat WHERE device_id = ANY($1)")
                .bind(&del)
                .execute(&mut *tx)
                .await
                .db("clearing devices awaiting a heartbeat")?;
            sqlx::query(
                "INSERT INTO router_awaiting_heartbeat (device_id, rollout_id, version, since_us)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[])
                 ON CONFLICT (device_id) DO UPDATE
                 SET rollout_id = excluded.rollout_id, version = excluded.version,
                     since_us = excluded.since_us",
            )
            .bind(&put_d)
            .bind(&put_r)
            .bind(&put_v)
            .bind(&put_s)
            .execute(&mut *tx)
            .await
            .db("storing devices awaiting a heartbeat")?;
        }
        if let Some(latest) = events.iter().map(|p| p.event.meta.recorded_at).max() {
            self.prune(tx, latest).await?;
        }
        // Kafka has every routed report before the offsets that skip their sources commit.
        for p in pending {
            p.acked().await?;
        }
        self.routed.add(routed.len() as u64);
        Ok(())
    }
}

impl Router {
    /// Stops awaiting the devices whose success is older than [`AWAIT_FOR_US`] before
    /// `latest_us`, the newest time the ledger recorded in this batch; at most every
    /// [`PRUNE_EVERY_US`] of ledger time, in the batch's transaction.
    async fn prune(&mut self, tx: &mut PgConnection, latest_us: i64) -> Result<()> {
        if self
            .last_pruned_us
            .is_some_and(|at| latest_us.saturating_sub(at) < PRUNE_EVERY_US)
        {
            return Ok(());
        }
        self.last_pruned_us = Some(latest_us);
        self.awaiting
            .retain(|_, (_, _, since)| !expired(*since, latest_us));
        let gone = sqlx::query("DELETE FROM router_awaiting_heartbeat WHERE since_us < $1")
            .bind(latest_us.saturating_sub(AWAIT_FOR_US))
            .execute(&mut *tx)
            .await
            .db("pruning devices awaiting a heartbeat")?
            .rows_affected();
        if gone > 0 {
            tracing::info!(
                devices = gone,
                "no longer awaiting a heartbeat: none came within the longest health-gate window"
            );
            self.pruned.add(gone);
        }
        Ok(())
    }
}

impl Projection for Router {
    async fn apply(
        &mut self,
        tx: &mut PgConnection,
        events: &[Positioned],
    ) -> otaledger_ledger::Result<()> {
        Ok(self.apply_batch(tx, events).await?)
    }

    fn ownership_changed(&mut self) {
        self.loaded = false;
        self.awaiting.clear();
        self.last_pruned_us = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_is_awaited_for_the_longest_window_and_an_hour() {
        let now = 10 * AWAIT_FOR_US;
        assert_eq!(AWAIT_FOR_US, (86_400 + 3_600) * 1_000_000);
        assert!(!expired(now - AWAIT_FOR_US, now));
        assert!(expired(now - AWAIT_FOR_US - 1, now));
        assert!(!expired(now, now));
        // Near the start of time nothing underflows.
        assert!(!expired(i64::MIN + 1, i64::MIN + 2));
    }
}

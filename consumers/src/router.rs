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

pub const ROUTER_DDL: &str = "
CREATE TABLE IF NOT EXISTS router_awaiting_heartbeat (
    device_id  text PRIMARY KEY,
    rollout_id text NOT NULL,
    version    text NOT NULL
)";

/// Routes device reports to rollouts; see the module documentation.
#[derive(Debug)]
pub struct Router {
    producer: EventProducer,
    /// Devices awaiting a heartbeat for the health gate: device → (rollout, version).
    awaiting: HashMap<String, (String, String)>,
    loaded: bool,
    routed: Counter,
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
        }
    }

    async fn apply_batch(&mut self, tx: &mut PgConnection, events: &[Positioned]) -> Result<()> {
        if !self.loaded {
            let rows: Vec<(String, String, String)> = sqlx::query_as(
                "SELECT device_id, rollout_id, version FROM router_awaiting_heartbeat",
            )
            .fetch_all(&mut *tx)
            .await
            .db("loading devices awaiting a heartbeat")?;
            self.awaiting = rows.into_iter().map(|(d, r, v)| (d, (r, v))).collect();
            self.loaded = true;
        }
        let mut routed = Vec::new();
        let mut awaiting_set: HashMap<String, Option<(String, String)>> = HashMap::new();
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
                    source_event_id: e.meta.event_id,
                    source_partition: p.position.partition,
                    source_offset: p.position.offset,
                }),
                Payload::InstallResult(i) => i.rollout_id.as_ref().map(|r| {
                    if i.outcome == InstallOutcome::Succeeded {
                        let v = (r.clone(), i.firmware_version.clone());
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
                        source_event_id: e.meta.event_id,
                        source_partition: p.position.partition,
                        source_offset: p.position.offset,
                    }
                }),
                Payload::Heartbeat(h) => self.awaiting.remove(&h.device_id).map(|(r, _)| {
                    awaiting_set.insert(h.device_id.clone(), None);
                    DeviceReportRouted {
                        rollout_id: r,
                        device_id: h.device_id.clone(),
                        command_id: None,
                        report: ReportKind::Heartbeat,
                        phase: None,
                        outcome: None,
                        firmware_version: Some(h.firmware_version.clone()),
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
            let (mut put_d, mut put_r, mut put_v, mut del) = (vec![], vec![], vec![], vec![]);
            for (d, v) in awaiting_set {
                match v {
                    Some((r, ver)) => {
                        put_d.push(d);
                        put_r.push(r);
                        put_v.push(ver);
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
                "INSERT INTO router_awaiting_heartbeat (device_id, rollout_id, version)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::text[])
                 ON CONFLICT (device_id) DO UPDATE
                 SET rollout_id = excluded.rollout_id, version = excluded.version",
            )
            .bind(&put_d)
            .bind(&put_r)
            .bind(&put_v)
            .execute(&mut *tx)
            .await
            .db("storing devices awaiting a heartbeat")?;
        }
        // Kafka has every routed report before the offsets that skip their sources commit.
        for p in pending {
            p.acked().await?;
        }
        self.routed.add(routed.len() as u64);
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
    }
}

//! The AMQP bridge: edge gateways publish batches of device reports to a RabbitMQ queue; each
//! delivery is acknowledged only after every event (or dead letter) it produced is in Kafka.
//!
//! Who may report for whom (ADR 0029): a batch is believed only from the gateway it names, as
//! the broker vouches for it (the message's `user_id`, which RabbitMQ checks against the
//! publishing connection's login), and only for the devices provisioning attached to that
//! gateway; or from otaledger's own AMQP login (a component relaying, like a load generator).
//! Anything else is dead-lettered `unauthorized` and counted. A report's gateway is the
//! batch's, whatever the report says: a device moves between gateways only by provisioning.
//!
//! Bounded (ADR 0040): deliveries read but not yet acknowledged take their bytes from the
//! bridge's budget, and over it the bridge stops reading. RabbitMQ has no prefetch in bytes
//! (it ignores `prefetch_size`), so the bridge sets the channel's prefetch count from the
//! budget and the largest delivery it saw lately. Each report's device is held to its rate.

use std::time::Instant;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use otaledger_domain::ids::new_trace_id;
use tokio::sync::mpsc;

use otaledger_domain::device_json::{
    device_message_from_value, parse_gateway_batch, MessageKind, MAX_GATEWAY_PAYLOAD,
};
use otaledger_ledger::amqp::{connect_when_up, declare_reports_queue, AmqpConfig};
use otaledger_ledger::config::IngestConfig;
use otaledger_ledger::dead_letters::{dead_letter, Origin, Rejection};
use otaledger_ledger::kafka::{EventProducer, Pending};
use otaledger_ledger::metrics::{self, REGISTRY};
use otaledger_ledger::rate_limit::{DeviceLimits, Verdict};
use otaledger_ledger::shutdown::ShutdownSignal;
use otaledger_ledger::AmqpContext;
use sqlx::PgPool;

use crate::budget::{Budget, Share};
use crate::{Error, Result};

static AMQP_INGESTED: std::sync::LazyLock<metrics::Counter> =
    std::sync::LazyLock::new(|| metrics::ingested("amqp"));

static RATE_LIMITED: std::sync::LazyLock<metrics::Counter> =
    std::sync::LazyLock::new(|| otaledger_ledger::rate_limit::refused_counter("amqp"));

static UNAUTHORIZED: std::sync::LazyLock<metrics::Counter> = std::sync::LazyLock::new(|| {
    REGISTRY.counter(
        "otaledger_amqp_unauthorized_reports_total",
        "Gateway reports dead-lettered because their sender may not report for that device",
        &[],
    )
});

/// Whom a batch's sender may report for.
enum Authority {
    /// otaledger's own login: a component relaying batches it vouches for.
    Relay,
    /// The gateway the batch names, authenticated by the broker: these devices of the batch
    /// are attached to it.
    Gateway(std::collections::HashSet<String>),
    /// No one: the reason.
    Refused(String),
}

struct InFlight {
    pending: Vec<Pending>,
    delivery: Delivery,
    /// Given back once RabbitMQ has the acknowledgement.
    _share: Share,
}

/// The prefetch count that keeps `prefetch` deliveries of `largest` bytes within the byte
/// budget: RabbitMQ's prefetch in messages standing in for the prefetch in bytes it lacks.
fn prefetch_for(budget_bytes: u64, largest: usize, most: u16) -> u16 {
    let largest = u64::try_from(largest.max(1)).unwrap_or(u64::MAX);
    u16::try_from((budget_bytes / largest).clamp(1, u64::from(most.max(1)))).unwrap_or(most)
}

/// Deliveries seen before the prefetch may rise again.
const PREFETCH_WINDOW: u32 = 32;

/// The channel's prefetch count, lowered at once when a larger delivery arrives and raised at
/// most once a window of deliveries, when the window's largest allows twice as many.
struct Prefetch {
    budget_bytes: u64,
    most: u16,
    now: u16,
    window_largest: usize,
    seen: u32,
}

impl Prefetch {
    /// Until a delivery shows otherwise, deliveries are assumed as large as a batch may be.
    fn new(budget_bytes: u64, most: u16) -> Self {
        Prefetch {
            budget_bytes,
            most,
            now: prefetch_for(budget_bytes, MAX_GATEWAY_PAYLOAD, most),
            window_largest: 0,
            seen: 0,
        }
    }

    /// The new prefetch count after a delivery of `len` bytes, if it changes.
    fn after(&mut self, len: usize) -> Option<u16> {
        self.window_largest = self.window_largest.max(len);
        self.seen += 1;
        let allowed = prefetch_for(self.budget_bytes, self.window_largest, self.most);
        let lower = allowed < self.now;
        let raise = self.seen >= PREFETCH_WINDOW && allowed >= self.now.saturating_mul(2);
        let change = (lower || raise).then_some(allowed);
        if self.seen >= PREFETCH_WINDOW {
            self.seen = 0;
            self.window_largest = 0;
        }
        if let Some(n) = change {
            self.now = n;
        }
        change
    }
}

/// Runs the bridge until shutdown.
pub async fn run(
    cfg: AmqpConfig,
    ingest: &IngestConfig,
    producer: EventProducer,
    pool: PgPool,
    mut shutdown: ShutdownSignal,
) -> Result<()> {
    let Some(conn) = connect_when_up(&cfg, &mut shutdown).await? else {
        return Ok(());
    };
    let channel = conn.create_channel().await.amqp("opening channel")?;
    declare_reports_queue(&channel, &cfg).await?;
    // Global: the channel's one consumer, and a change applies to it at once.
    let qos = BasicQosOptions { global: true };
    let mut prefetch = Prefetch::new(ingest.budget_bytes, cfg.prefetch);
    channel
        .basic_qos(prefetch.now, qos)
        .await
        .amqp("setting prefetch")?;
    let budget = Budget::new("amqp", ingest.budget_bytes, u32::from(cfg.prefetch));
    let held_back = REGISTRY.counter(
        "otaledger_bridge_held_back_total",
        "Times a bridge stopped reading until Kafka acknowledged what it holds",
        &[("bridge", "amqp")],
    );
    let prefetch_gauge = REGISTRY.gauge(
        "otaledger_amqp_prefetch",
        "The AMQP bridge's prefetch count, set from its byte budget",
        &[],
    );
    prefetch_gauge.set(i64::from(prefetch.now));
    let mut limits = DeviceLimits::new(ingest.device_rate_per_s, ingest.device_burst);
    let mut consumer = channel
        .basic_consume(
            cfg.reports_queue.as_str().into(),
            "otaledger-amqp-bridge".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .amqp("consuming reports")?;
    tracing::info!(queue = %cfg.reports_queue, "AMQP bridge consuming");
    let (tx, rx) = mpsc::channel::<InFlight>(usize::from(cfg.prefetch).max(1));
    let acker = tokio::spawn(ack_when_in_kafka(rx));
    let batches = REGISTRY.counter(
        "otaledger_amqp_batches_total",
        "Gateway report batches received",
        &[],
    );
    let mut failure = None;
    loop {
        let next = tokio::select! {
            () = shutdown.wait() => break,
            next = consumer.next() => next,
        };
        let delivery = match next {
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                failure = Some(Error::Amqp(e));
                break;
            }
            None => {
                failure = Some(Error::Stopped("the AMQP consumer was cancelled"));
                break;
            }
        };
        batches.inc();
        let len = delivery.data.len();
        if let Some(n) = prefetch.after(len) {
            channel.basic_qos(n, qos).await.amqp("setting prefetch")?;
            prefetch_gauge.set(i64::from(n));
        }
        let share = match budget.try_take(len) {
            Some(share) => share,
            None => {
                held_back.inc();
                tokio::select! {
                    () = shutdown.wait() => break,
                    share = budget.take(len) => share,
                }
            }
        };
        let pending = match handle(&cfg, &producer, &pool, &delivery, &mut limits).await {
            Ok(p) => p,
            Err(e) => {
                let _ = delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    })
                    .await;
                failure = Some(e);
                break;
            }
        };
        let in_flight = InFlight {
            pending,
            delivery,
            _share: share,
        };
        if tx.send(in_flight).await.is_err() {
            failure = Some(Error::Stopped("the AMQP acker stopped"));
            break;
        }
    }
    drop(tx);
    let acked = acker.await?;
    let _ = channel.close(200, "bridge stopping".into()).await;
    let _ = conn.close(200, "bridge stopping".into()).await;
    match failure.or(acked.err()) {
        Some(e) => Err(e),
        None => {
            tracing::info!("AMQP bridge stopped");
            Ok(())
        }
    }
}

/// Who the broker says sent `delivery`, and whom that sender may report for among `devices`.
async fn authority(
    cfg: &AmqpConfig,
    pool: &PgPool,
    delivery: &Delivery,
    gateway: &str,
    devices: &[&str],
) -> Result<Authority> {
    let Some(sender) = delivery.properties.user_id().as_ref().map(|u| u.as_str()) else {
        return Ok(Authority::Refused(format!(
            "the batch for gateway {gateway:?} carries no user_id (a gateway publishes with its own \
             login as the message's user_id)"
        )));
    };
    if sender == cfg.login() {
        return Ok(Authority::Relay);
    }
    if sender != gateway {
        return Ok(Authority::Refused(format!(
            "login {sender:?} sent a batch naming gateway {gateway:?}"
        )));
    }
    let attached = otaledger_projections::access::attached_to(pool, gateway, devices).await?;
    Ok(Authority::Gateway(attached))
}

async fn handle(
    cfg: &AmqpConfig,
    producer: &EventProducer,
    pool: &PgPool,
    delivery: &Delivery,
    limits: &mut DeviceLimits,
) -> Result<Vec<Pending>> {
    let origin = Origin {
        source: "amqp",
        channel: &cfg.reports_queue,
        partition: None,
        offset: None,
    };
    let batch = match parse_gateway_batch(&delivery.data) {
        Ok(b) => b,
        Err(rejection) => {
            return Ok(vec![
                dead_letter(producer, &origin, b"", &delivery.data, &rejection).await?,
            ]);
        }
    };
    let trace_id = new_trace_id();
    let devices: Vec<&str> = batch.reports.iter().map(|r| r.device_id.as_str()).collect();
    let authority = authority(cfg, pool, delivery, &batch.gateway_id, &devices).await?;
    let mut pending = Vec::with_capacity(batch.reports.len());
    for report in batch.reports {
        let refused = match &authority {
            Authority::Relay => None,
            Authority::Gateway(attached) if attached.contains(&report.device_id) => None,
            Authority::Gateway(_) => Some(format!(
                "device {:?} is not attached to gateway {:?}",
                report.device_id, batch.gateway_id
            )),
            Authority::Refused(why) => Some(why.clone()),
        };
        let kind = MessageKind::from_name(&report.kind);
        let verdict = match (&refused, kind) {
            (None, Some(kind)) => limits.judge(
                &report.device_id,
                Instant::now(),
                kind == MessageKind::Install,
            ),
            _ => Verdict::Admit,
        };
        let parsed = match (refused, kind, verdict) {
            (Some(why), _, _) => {
                UNAUTHORIZED.inc();
                Err((Rejection::new("unauthorized", why), Some(report.data)))
            }
            (None, Some(_), Verdict::Refuse { report: refused }) => {
                RATE_LIMITED.inc();
                let Some(refused) = refused else { continue };
                Err((
                    otaledger_ledger::rate_limit::rejection(&report.device_id, refused),
                    Some(report.data),
                ))
            }
            (None, None, _) => Err((
                Rejection::new(
                    "unknown_kind",
                    format!("unknown report kind {:?}", report.kind),
                ),
                None,
            )),
            (None, Some(kind), Verdict::Admit) => {
                let mut data = report.data;
                // A report's gateway is the batch's, whatever the report says.
                if let (MessageKind::Heartbeat | MessageKind::Register, Some(obj)) =
                    (kind, data.as_object_mut())
                {
                    obj.insert("gateway_id".into(), batch.gateway_id.clone().into());
                }
                device_message_from_value(kind, &report.device_id, &data, &trace_id)
                    .map_err(|r| (r, Some(data)))
            }
        };
        match parsed {
            Ok(event) => {
                pending.push(producer.enqueue(&event).await?);
                AMQP_INGESTED.inc();
            }
            Err((rejection, data)) => {
                let raw = serde_json::json!({
                    "gateway_id": batch.gateway_id,
                    "device_id": report.device_id,
                    "kind": report.kind,
                    "data": data,
                })
                .to_string();
                pending.push(
                    dead_letter(
                        producer,
                        &origin,
                        report.device_id.as_bytes(),
                        raw.as_bytes(),
                        &rejection,
                    )
                    .await?,
                );
            }
        }
    }
    Ok(pending)
}

async fn ack_when_in_kafka(mut rx: mpsc::Receiver<InFlight>) -> Result<()> {
    while let Some(InFlight {
        pending,
        delivery,
        _share: share,
    }) = rx.recv().await
    {
        for p in pending {
            if let Err(e) = p.acked().await {
                let _ = delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    })
                    .await;
                return Err(e.into());
            }
        }
        delivery
            .ack(BasicAckOptions::default())
            .await
            .amqp("acknowledging delivery")?;
        // Given back only now: until RabbitMQ has the acknowledgement, it counts.
        drop(share);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1024 * 1024;

    #[test]
    fn the_prefetch_keeps_the_largest_deliveries_within_the_budget() {
        assert_eq!(prefetch_for(32 << 20, 8 * MIB, 256), 4);
        assert_eq!(prefetch_for(32 << 20, 8 * MIB + 1, 256), 3);
        assert_eq!(
            prefetch_for(32 << 20, 100, 256),
            256,
            "at most amqp.prefetch"
        );
        assert_eq!(prefetch_for(1, 8 * MIB, 256), 1, "at least one");
        assert_eq!(prefetch_for(32 << 20, 0, 256), 256);
    }

    #[test]
    fn it_starts_low_lowers_at_once_and_rises_once_a_window() {
        let mut p = Prefetch::new(32 << 20, 256);
        assert_eq!(p.now, 4, "as if every batch were 8 MiB");
        for i in 1..PREFETCH_WINDOW {
            assert_eq!(p.after(1024), None, "delivery {i}: not before a window");
        }
        assert_eq!(p.after(1024), Some(256), "a window of 1 KiB deliveries");
        assert_eq!(p.after(MIB), Some(32), "a larger one lowers it at once");
        assert_eq!(p.after(MIB), None);
        for _ in 2..PREFETCH_WINDOW {
            p.after(20 * 1024);
        }
        // The window's largest (1 MiB) allows 32, no more than now: no change.
        assert_eq!(p.now, 32);
        for _ in 1..PREFETCH_WINDOW {
            p.after(600 * 1024);
        }
        // 600 KiB allows 54: less than twice 32, kept.
        assert_eq!(p.after(600 * 1024), None);
        for _ in 1..PREFETCH_WINDOW {
            p.after(500 * 1024);
        }
        assert_eq!(p.after(500 * 1024), Some(65), "65 >= 2 x 32");
    }
}

//! The AMQP bridge: edge gateways publish batches of device reports to a RabbitMQ queue; each
//! delivery is acknowledged only after every event (or dead letter) it produced is in Kafka.
//!
//! Who may report for whom (ADR 0029): a batch is believed only from the gateway it names, as
//! the broker vouches for it (the message's `user_id`, which RabbitMQ checks against the
//! publishing connection's login), and only for the devices provisioning attached to that
//! gateway; or from otaledger's own AMQP login (a component relaying, like a load generator).
//! Anything else is dead-lettered `unauthorized` and counted. A report's gateway is the
//! batch's, whatever the report says: a device moves between gateways only by provisioning.

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use otaledger_domain::ids::new_trace_id;
use tokio::sync::mpsc;

use otaledger_domain::device_json::{device_message_from_value, parse_gateway_batch, MessageKind};
use otaledger_ledger::amqp::{connect, declare_reports_queue, AmqpConfig};
use otaledger_ledger::dead_letters::{dead_letter, Origin, Rejection};
use otaledger_ledger::kafka::{EventProducer, Pending};
use otaledger_ledger::metrics::{self, REGISTRY};
use otaledger_ledger::shutdown::ShutdownSignal;
use otaledger_ledger::AmqpContext;
use sqlx::PgPool;

use crate::{Error, Result};

static AMQP_INGESTED: std::sync::LazyLock<metrics::Counter> =
    std::sync::LazyLock::new(|| metrics::ingested("amqp"));

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
}

/// Runs the bridge until shutdown.
pub async fn run(
    cfg: AmqpConfig,
    producer: EventProducer,
    pool: PgPool,
    mut shutdown: ShutdownSignal,
) -> Result<()> {
    let conn = connect(&cfg).await?;
    let channel = conn.create_channel().await.amqp("opening channel")?;
    declare_reports_queue(&channel, &cfg).await?;
    channel
        .basic_qos(cfg.prefetch, BasicQosOptions::default())
        .await
        .amqp("setting prefetch")?;
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
        let pending = match handle(&cfg, &producer, &pool, &delivery).await {
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
        if tx.send(InFlight { pending, delivery }).await.is_err() {
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
        let parsed = match (refused, MessageKind::from_name(&report.kind)) {
            (Some(why), _) => {
                UNAUTHORIZED.inc();
                Err((Rejection::new("unauthorized", why), Some(report.data)))
            }
            (None, None) => Err((
                Rejection::new(
                    "unknown_kind",
                    format!("unknown report kind {:?}", report.kind),
                ),
                None,
            )),
            (None, Some(kind)) => {
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
    while let Some(InFlight { pending, delivery }) = rx.recv().await {
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
    }
    Ok(())
}

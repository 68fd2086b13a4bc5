//! The AMQP bridge: edge gateways publish batches of device reports to a RabbitMQ queue; each
//! delivery is acknowledged only after every event (or dead letter) it produced is in Kafka.

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

use crate::{Error, Result};

static AMQP_INGESTED: std::sync::LazyLock<metrics::Counter> =
    std::sync::LazyLock::new(|| metrics::ingested("amqp"));

struct InFlight {
    pending: Vec<Pending>,
    delivery: Delivery,
}

/// Runs the bridge until shutdown.
pub async fn run(
    cfg: AmqpConfig,
    producer: EventProducer,
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
        let pending = match handle(&cfg, &producer, &delivery).await {
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

async fn handle(
    cfg: &AmqpConfig,
    producer: &EventProducer,
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
    let mut pending = Vec::with_capacity(batch.reports.len());
    for report in batch.reports {
        let parsed = match MessageKind::from_name(&report.kind) {
            None => Err((
                Rejection::new(
                    "unknown_kind",
                    format!("unknown report kind {:?}", report.kind),
                ),
                None,
            )),
            Some(kind) => {
                let mut data = report.data;
                // Reports from a gateway name it unless they say otherwise.
                if let (MessageKind::Heartbeat | MessageKind::Register, Some(obj)) =
                    (kind, data.as_object_mut())
                {
                    obj.entry("gateway_id")
                        .or_insert_with(|| batch.gateway_id.clone().into());
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

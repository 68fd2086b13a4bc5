//! The MQTT bridge: devices publish JSON on `{root}/{device_id}/{register|heartbeat|install}`;
//! each message becomes an event in Kafka and is acknowledged to the broker (QoS 1, manual
//! PUBACK) only after Kafka acknowledged the event, or its dead letter.
//!
//! Messages are processed and acknowledged in arrival order, with Kafka writes pipelined: the
//! bridge keeps reading while earlier records are still in flight, within its budget (ADR 0040):
//! over it, a QoS 0 message is dropped and counted, and a QoS 1 message waits for Kafka's
//! acknowledgements to give some back, while the broker keeps the rest of the queue. Each
//! device is held to its rate; what is over it is refused and counted (dead-lettered
//! `rate_limited` once a second per device).

use std::time::{Duration, Instant};

use otaledger_domain::ids::new_trace_id;
use rumqttc::{AsyncClient, Event as MqttEvent, EventLoop, Packet, Publish, QoS};
use tokio::sync::mpsc;

use otaledger_domain::device_json::{parse_device_message, MessageKind};
use otaledger_ledger::config::IngestConfig;
use otaledger_ledger::dead_letters::{dead_letter, Origin, Rejection};
use otaledger_ledger::kafka::{EventProducer, Pending};
use otaledger_ledger::metrics::{self, REGISTRY};
use otaledger_ledger::mqtt::{MqttConfig, COMMANDS_KIND};
use otaledger_ledger::rate_limit::{DeviceLimits, Verdict};
use otaledger_ledger::shutdown::ShutdownSignal;
use otaledger_ledger::MqttContext;

use crate::budget::{Budget, Share};
use crate::{Error, Result};

struct InFlight {
    /// `None` for the dispatcher's own command messages, which the bridge only acknowledges,
    /// and for what it refused without a dead letter.
    pending: Option<Pending>,
    publish: Publish,
    /// Given back once the broker has the acknowledgement.
    _share: Share,
}

/// What the bridge counts of what it did not ingest.
struct Refusals {
    over_budget: otaledger_ledger::metrics::Counter,
    held_back: otaledger_ledger::metrics::Counter,
    rate_limited: otaledger_ledger::metrics::Counter,
}

impl Refusals {
    fn new() -> Self {
        Refusals {
            over_budget: REGISTRY.counter(
                "otaledger_bridge_dropped_total",
                "QoS 0 messages a bridge dropped because its budget was full",
                &[("bridge", "mqtt")],
            ),
            held_back: REGISTRY.counter(
                "otaledger_bridge_held_back_total",
                "Times a bridge stopped reading until Kafka acknowledged what it holds",
                &[("bridge", "mqtt")],
            ),
            rate_limited: otaledger_ledger::rate_limit::refused_counter("mqtt"),
        }
    }
}

/// Runs the bridge until shutdown.
pub async fn run(
    cfg: MqttConfig,
    ingest: &IngestConfig,
    producer: EventProducer,
    mut shutdown: ShutdownSignal,
) -> Result<()> {
    let mut opts = cfg.options(&cfg.bridge_client_id());
    opts.set_clean_session(false);
    opts.set_manual_acks(true);
    opts.set_inflight(1000);
    let (client, mut eventloop) = AsyncClient::new(opts, 10_000);
    // The channel is unbounded, the budget bounds it. The loop that feeds it also drives the
    // MQTT connection, and the acker that drains it needs that connection to send PUBACKs: when
    // the loop waits for the budget, the acker's PUBACK requests wait in the client's request
    // queue (10,000). A budget of fewer messages than that never fills it, so the acker never
    // waits on the loop that waits on it (seen, with a bounded channel instead, at 80,000
    // registrations in one burst).
    let budget = Budget::new(
        "mqtt",
        ingest.budget_bytes,
        ingest.budget_messages.min(MAX_BUDGET_MESSAGES),
    );
    let mut limits = DeviceLimits::new(ingest.device_rate_per_s, ingest.device_burst);
    let refusals = Refusals::new();
    let (tx, rx) = mpsc::unbounded_channel::<InFlight>();
    let acker = tokio::spawn(ack_in_order(client.clone(), rx));
    let received = REGISTRY.counter(
        "otaledger_mqtt_messages_total",
        "MQTT messages received by the bridge",
        &[],
    );
    let ingested = metrics::ingested("mqtt");
    let subscription = cfg.subscription();
    let subscribed = REGISTRY.gauge(
        "otaledger_mqtt_bridge_subscribed",
        "1 while the MQTT bridge holds its subscription",
        &[("client_id", &cfg.bridge_client_id())],
    );
    tracing::info!(%subscription, host = %cfg.host, port = cfg.port, "MQTT bridge starting");
    let mut failure: Option<Error> = None;
    loop {
        let ev = tokio::select! {
            () = shutdown.wait() => break,
            ev = eventloop.poll() => ev,
        };
        match ev {
            Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                tracing::info!("MQTT bridge connected; subscribing");
                let subscribed = client.subscribe(&subscription, QoS::AtLeastOnce).await;
                if let Err(e) = subscribed.mqtt("subscribing") {
                    failure = Some(e.into());
                    break;
                }
            }
            Ok(MqttEvent::Incoming(Packet::SubAck(_))) => subscribed.set(1),
            Ok(MqttEvent::Incoming(Packet::Publish(publish))) => {
                received.inc();
                let len = publish.payload.len();
                let share = match budget.try_take(len) {
                    Some(share) => share,
                    None if publish.qos == QoS::AtMostOnce => {
                        // Nobody will send it again, and nobody was promised it.
                        refusals.over_budget.inc();
                        continue;
                    }
                    None => {
                        refusals.held_back.inc();
                        tokio::select! {
                            () = shutdown.wait() => break,
                            share = budget.take(len) => share,
                        }
                    }
                };
                match handle(&cfg, &producer, &publish, &mut limits, &refusals).await {
                    Ok((pending, good)) => {
                        if good {
                            ingested.inc();
                        }
                        let in_flight = InFlight {
                            pending,
                            publish,
                            _share: share,
                        };
                        if tx.send(in_flight).is_err() {
                            failure = Some(Error::Stopped("the MQTT acker stopped"));
                            break;
                        }
                    }
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                subscribed.set(0);
                tracing::warn!(error = %e, "MQTT connection error; reconnecting");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    subscribed.set(0);
    drop(tx);
    let acked = acker.await?;
    // Let the event loop send the remaining PUBACKs, then leave the session cleanly.
    let _ = client.disconnect().await;
    drain(&mut eventloop).await;
    if let Some(e) = failure.or(acked.err()) {
        return Err(e);
    }
    tracing::info!("MQTT bridge stopped");
    Ok(())
}

/// Below the MQTT client's request queue (`AsyncClient::new(_, 10_000)`), see `run`.
const MAX_BUDGET_MESSAGES: u32 = 9_000;

async fn drain(eventloop: &mut EventLoop) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(500), eventloop.poll()).await {
            Ok(Ok(MqttEvent::Outgoing(rumqttc::Outgoing::Disconnect))) | Ok(Err(_)) | Err(_) => {
                break
            }
            Ok(Ok(_)) => {}
        }
    }
}

/// Turns one publish into a pending Kafka write: the event, or its dead letter.
async fn handle(
    cfg: &MqttConfig,
    producer: &EventProducer,
    publish: &Publish,
    limits: &mut DeviceLimits,
    refusals: &Refusals,
) -> Result<(Option<Pending>, bool)> {
    if cfg
        .route(&publish.topic)
        .is_some_and(|(_, kind)| kind == COMMANDS_KIND)
    {
        // Commands to devices share the devices' topic tree; they are not device reports.
        return Ok((None, false));
    }
    let parsed = match cfg.route(&publish.topic) {
        None => Err((
            "",
            Rejection::new(
                "unknown_topic",
                format!(
                    "topic {} is not {{root}}/{{device}}/{{kind}}",
                    publish.topic
                ),
            ),
        )),
        Some((device, kind)) => match MessageKind::from_name(kind) {
            None => Err((
                device,
                Rejection::new("unknown_topic", format!("unknown message kind {kind:?}")),
            )),
            Some(kind) => {
                match limits.judge(device, Instant::now(), kind == MessageKind::Install) {
                    Verdict::Admit => {
                        parse_device_message(kind, device, &publish.payload, &new_trace_id())
                            .map_err(|r| (device, r))
                    }
                    Verdict::Refuse { report } => {
                        refusals.rate_limited.inc();
                        let Some(refused) = report else {
                            return Ok((None, false));
                        };
                        Err((
                            device,
                            otaledger_ledger::rate_limit::rejection(device, refused),
                        ))
                    }
                }
            }
        },
    };
    match parsed {
        Ok(event) => Ok((Some(producer.enqueue(&event).await?), true)),
        Err((device, rejection)) => {
            let origin = Origin {
                source: "mqtt",
                channel: &publish.topic,
                partition: None,
                offset: None,
            };
            Ok((
                Some(
                    dead_letter(
                        producer,
                        &origin,
                        device.as_bytes(),
                        &publish.payload,
                        &rejection,
                    )
                    .await?,
                ),
                false,
            ))
        }
    }
}

async fn ack_in_order(
    client: AsyncClient,
    mut rx: mpsc::UnboundedReceiver<InFlight>,
) -> Result<()> {
    while let Some(InFlight {
        pending,
        publish,
        _share: share,
    }) = rx.recv().await
    {
        // Not acknowledging leaves the message with the broker, which redelivers it to the
        // persistent session after a reconnect.
        if let Some(pending) = pending {
            pending.acked().await?;
        }
        client.ack(&publish).await.mqtt("acknowledging")?;
        // Given back only now: until the acknowledgement is with the client, it counts.
        drop(share);
    }
    Ok(())
}

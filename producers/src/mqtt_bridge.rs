//! The MQTT bridge: devices publish JSON on `{root}/{device_id}/{register|heartbeat|install}`;
//! each message becomes an event in Kafka and is acknowledged to the broker (QoS 1, manual
//! PUBACK) only after Kafka acknowledged the event, or its dead letter.
//!
//! Messages are processed and acknowledged in arrival order, with Kafka writes pipelined: the
//! bridge keeps reading while earlier records are still in flight.

use std::time::Duration;

use otaledger_domain::ids::new_trace_id;
use rumqttc::{AsyncClient, Event as MqttEvent, EventLoop, Packet, Publish, QoS};
use tokio::sync::mpsc;

use otaledger_domain::device_json::{parse_device_message, MessageKind};
use otaledger_ledger::dead_letters::{dead_letter, Origin, Rejection};
use otaledger_ledger::kafka::{EventProducer, Pending};
use otaledger_ledger::metrics::{self, REGISTRY};
use otaledger_ledger::mqtt::{MqttConfig, COMMANDS_KIND};
use otaledger_ledger::shutdown::ShutdownSignal;
use otaledger_ledger::MqttContext;

use crate::{Error, Result};

struct InFlight {
    /// `None` for the dispatcher's own command messages, which the bridge only acknowledges.
    pending: Option<Pending>,
    publish: Publish,
}

/// Runs the bridge until shutdown.
pub async fn run(
    cfg: MqttConfig,
    producer: EventProducer,
    mut shutdown: ShutdownSignal,
) -> Result<()> {
    let mut opts = cfg.options(&cfg.bridge_client_id());
    opts.set_clean_session(false);
    opts.set_manual_acks(true);
    opts.set_inflight(1000);
    let (client, mut eventloop) = AsyncClient::new(opts, 10_000);
    // Unbounded on purpose: the loop that feeds it also drives the MQTT connection, and the acker
    // that drains it needs that connection to send PUBACKs. With a bounded queue a burst filled
    // it, the loop stopped polling, the acker's PUBACK requests filled the client's queue, and
    // both waited on each other (seen at 80,000 registrations in one burst). The broker's queue
    // and Kafka's acknowledgements bound what is in flight.
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
                match handle(&cfg, &producer, &publish).await {
                    Ok((pending, good)) => {
                        if good {
                            ingested.inc();
                        }
                        if tx.send(InFlight { pending, publish }).is_err() {
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
            Some(kind) => parse_device_message(kind, device, &publish.payload, &new_trace_id())
                .map_err(|r| (device, r)),
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
    while let Some(InFlight { pending, publish }) = rx.recv().await {
        // Not acknowledging leaves the message with the broker, which redelivers it to the
        // persistent session after a reconnect.
        if let Some(pending) = pending {
            pending.acked().await?;
        }
        client.ack(&publish).await.mqtt("acknowledging")?;
    }
    Ok(())
}

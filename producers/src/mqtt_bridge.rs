//! The MQTT bridge: devices publish JSON on `{root}/{device_id}/{register|heartbeat|install}`;
//! each message becomes an event in Kafka and is acknowledged to the broker (QoS 1, manual
//! PUBACK) only after Kafka acknowledged the event, or its dead letter.
//!
//! Messages are processed and acknowledged in arrival order, with Kafka writes pipelined: the
//! bridge keeps reading while earlier records are still in flight.

use std::time::Duration;

use otaledger_domain::ids::new_trace_id;
use rumqttc::{AsyncClient, Event as MqttEvent, EventLoop, MqttOptions, Packet, Publish, QoS};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::dead_letters::{dead_letter, Origin, Rejection};
use crate::device_json::{parse_device_message, MessageKind};
use crate::kafka::{EventProducer, Pending};
use crate::metrics::{self, REGISTRY};
use crate::shutdown::ShutdownSignal;
use crate::{Error, Result};

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    /// Stable per bridge instance: the broker keeps the session (and unacknowledged messages)
    /// for this id across restarts. Empty: derived from the topic root.
    pub client_id: String,
    /// The first topic level(s) before the device id.
    pub topic_root: String,
    /// Bridges sharing a group split the device traffic (`$share/{group}/...`).
    pub shared_group: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            host: "127.0.0.1".into(),
            port: 1883,
            client_id: String::new(),
            topic_root: "devices".into(),
            shared_group: None,
            username: None,
            password: None,
        }
    }
}

impl MqttConfig {
    #[must_use]
    pub fn options(&self, client_id: &str) -> MqttOptions {
        let mut o = MqttOptions::new(client_id, &self.host, self.port);
        o.set_keep_alive(Duration::from_secs(15));
        o.set_max_packet_size(1024 * 1024, 1024 * 1024);
        if let (Some(u), Some(p)) = (&self.username, &self.password) {
            o.set_credentials(u, p);
        }
        o
    }

    /// The configured client id, or one derived from the topic root so that ledgers with
    /// different roots never share (and steal) a persistent session.
    #[must_use]
    pub fn bridge_client_id(&self) -> String {
        if !self.client_id.is_empty() {
            return self.client_id.clone();
        }
        let root: String = self
            .topic_root
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("otaledger-bridge-{root}")
    }

    fn subscription(&self) -> String {
        match &self.shared_group {
            Some(g) => format!("$share/{g}/{}/+/+", self.topic_root),
            None => format!("{}/+/+", self.topic_root),
        }
    }

    /// Splits `{root}/{device}/{kind}` into device id and kind.
    fn route<'a>(&self, topic: &'a str) -> Option<(&'a str, &'a str)> {
        let rest = topic
            .strip_prefix(self.topic_root.as_str())?
            .strip_prefix('/')?;
        let (device, kind) = rest.split_once('/')?;
        (!kind.contains('/')).then_some((device, kind))
    }
}

/// The last topic level of commands to devices: `{root}/{device}/commands`.
pub const COMMANDS_KIND: &str = "commands";

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
                if let Err(e) = client.subscribe(&subscription, QoS::AtLeastOnce).await {
                    failure = Some(Error::Mqtt {
                        context: "subscribing".into(),
                        reason: e.to_string(),
                    });
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
                            failure = Some(Error::Other("MQTT acker stopped".into()));
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
    let acked = acker
        .await
        .map_err(|e| Error::Other(format!("acker: {e}")))?;
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
        client.ack(&publish).await.map_err(|e| Error::Mqtt {
            context: "acknowledging".into(),
            reason: e.to_string(),
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_route_to_device_and_kind() {
        let cfg = MqttConfig {
            topic_root: "t1/devices".into(),
            ..MqttConfig::default()
        };
        assert_eq!(
            cfg.route("t1/devices/d-1/heartbeat"),
            Some(("d-1", "heartbeat"))
        );
        assert_eq!(cfg.route("t1/devices/d-1/a/b"), None);
        assert_eq!(cfg.route("other/d-1/heartbeat"), None);
        assert_eq!(cfg.subscription(), "t1/devices/+/+");
    }
}

//! The command dispatcher: delivers `ota.device-commands` to devices and edge gateways.
//!
//! A device reached directly gets an MQTT QoS 1 publish on `{root}/{device}/commands`; a device
//! behind an edge gateway gets an AMQP message on the commands topic exchange with the gateway
//! id as routing key (persistent, publisher confirms, `mandatory`: a returned message is a
//! delivery failure). Failures are retried with backoff and each one is recorded as a
//! `CommandDeliveryFailed` event; after the last attempt the command also goes to the dead
//! letters, so nothing is lost. An MQTT broker that is down is waited for instead: its failure
//! is no command's. Commands already dispatched (by command id, in
//! `dispatched_commands`, written with the offsets) are never sent again; a crash between the
//! broker's acknowledgement and the commit sends a command again, which devices de-duplicate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::mqtt_publisher::{Message, MqttPublisher};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::BasicProperties;
use otaledger_domain::events::{CommandDeliveryFailed, Payload};
use otaledger_domain::ids::derived_event_id;
use otaledger_domain::time::now_micros;
use otaledger_domain::Event;
use otaledger_ledger::amqp::{connect_when_up, declare_commands_exchange, AmqpConfig};
use otaledger_ledger::dead_letters::{dead_letter, Origin, Rejection};
use otaledger_ledger::kafka::EventProducer;
use otaledger_ledger::metrics::{Counter, REGISTRY};
use otaledger_ledger::mqtt::{MqttConfig, COMMANDS_KIND};
use serde_json::json;
use sqlx::PgConnection;
use uuid::Uuid;

/// The longest wait between two tries of an MQTT broker that is down.
const MAX_BROKER_WAIT: Duration = Duration::from_secs(5);

use otaledger_ledger::runner::{Positioned, Projection};
use otaledger_ledger::DbContext;

use crate::{Error, Result};

pub const DISPATCHER_DDL: &str = "
CREATE TABLE IF NOT EXISTS dispatched_commands (
    command_id    uuid PRIMARY KEY,
    device_id     text NOT NULL,
    channel       text NOT NULL,
    dispatched_at timestamptz NOT NULL DEFAULT now()
)";

#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    pub mqtt: MqttConfig,
    pub amqp: AmqpConfig,
    /// Delivery attempts per command before it is given up (and dead-lettered).
    pub attempts: i32,
    pub backoff: Duration,
    pub commands_topic: String,
}

pub struct Dispatcher {
    cfg: DispatcherConfig,
    /// Ends the wait for an MQTT broker that is down.
    shutdown: otaledger_ledger::shutdown::ShutdownSignal,
    producer: EventProducer,
    mqtt: MqttPublisher,
    amqp: lapin::Channel,
    _amqp_conn: lapin::Connection,
    delivered_mqtt: Counter,
    delivered_amqp: Counter,
    failed_mqtt: Counter,
    failed_amqp: Counter,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher").finish_non_exhaustive()
    }
}

/// A command as devices and gateways receive it (JSON), and the event it came from.
struct Outgoing<'e> {
    command_id: Uuid,
    device_id: &'e str,
    rollout_id: &'e str,
    gateway_id: Option<&'e str>,
    body: Vec<u8>,
    source: &'e Positioned,
}

fn outgoing(p: &Positioned) -> Option<Outgoing<'_>> {
    // What each kind adds to the fields every command carries.
    let (kind, extra) = match &p.event.payload {
        Payload::UpdateCommand(c) => {
            let mut extra = json!({"release": c.release, "deadline_ms": c.deadline / 1000});
            // The director's signed statement (ADR 0038), as signed: the device checks it.
            if let (Some(statement), Some(o)) = (&c.director, extra.as_object_mut()) {
                o.insert("director".into(), json!(statement));
            }
            ("update", extra)
        }
        Payload::RollbackCommand(c) => ("rollback", json!({"target_version": c.target_version})),
        Payload::CancelCommand(c) => ("cancel", json!({"reason": c.reason})),
        _ => return None,
    };
    let c = p.event.payload.as_command()?;
    let mut body = json!({
        "kind": kind, "command_id": c.command_id(), "device_id": c.device_id(),
        "rollout_id": c.rollout_id(),
    });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    Some(Outgoing {
        command_id: c.command_id(),
        device_id: c.device_id(),
        rollout_id: c.rollout_id(),
        gateway_id: c.gateway_id(),
        body: body.to_string().into_bytes(),
        source: p,
    })
}

impl Dispatcher {
    /// Connects to both brokers and declares the commands exchange, waiting for a RabbitMQ
    /// that is down; `None` when shutdown comes first.
    pub async fn connect(
        cfg: DispatcherConfig,
        producer: EventProducer,
        member: &str,
        shutdown: &mut otaledger_ledger::shutdown::ShutdownSignal,
    ) -> Result<Option<Self>> {
        // Unique per process and instance: two dispatchers sharing an id would take the session
        // from each other forever (seen with a stray process of the same member name, and with
        // two dispatchers one after the other in one bench process). Commands need no
        // persistent session: they are published, never subscribed to.
        static INSTANCE: AtomicU64 = AtomicU64::new(0);
        let client_id = format!(
            "otaledger-dispatcher-{member}-{}-{}",
            std::process::id(),
            INSTANCE.fetch_add(1, Ordering::Relaxed)
        );
        let mqtt = MqttPublisher::new(cfg.mqtt.clone(), client_id);
        let stopping = shutdown.clone();
        let Some(conn) = connect_when_up(&cfg.amqp, shutdown).await? else {
            return Ok(None);
        };
        let amqp = conn
            .create_channel()
            .await
            .map_err(amqp_err("opening channel"))?;
        amqp.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(amqp_err("enabling publisher confirms"))?;
        declare_commands_exchange(&amqp, &cfg.amqp).await?;
        let c = |channel: &str, help: &'static str, name: &'static str| {
            REGISTRY.counter(name, help, &[("channel", channel)])
        };
        Ok(Some(Dispatcher {
            cfg,
            shutdown: stopping,
            producer,
            mqtt,
            amqp,
            _amqp_conn: conn,
            delivered_mqtt: c(
                "mqtt",
                "Commands handed to the device's broker or gateway",
                "otaledger_commands_dispatched_total",
            ),
            delivered_amqp: c(
                "amqp",
                "Commands handed to the device's broker or gateway",
                "otaledger_commands_dispatched_total",
            ),
            failed_mqtt: c(
                "mqtt",
                "Failed command delivery attempts",
                "otaledger_command_delivery_failures_total",
            ),
            failed_amqp: c(
                "amqp",
                "Failed command delivery attempts",
                "otaledger_command_delivery_failures_total",
            ),
        }))
    }

    /// Publishes to devices over MQTT and waits for the broker's PUBACKs.
    async fn send_mqtt(
        publisher: &mut MqttPublisher,
        root: &str,
        cmds: &[&Outgoing<'_>],
    ) -> std::result::Result<(), String> {
        let topics: Vec<String> = cmds
            .iter()
            .map(|c| format!("{root}/{}/{COMMANDS_KIND}", c.device_id))
            .collect();
        let msgs: Vec<Message<'_>> = cmds
            .iter()
            .zip(&topics)
            .map(|(c, topic)| Message {
                topic,
                payload: &c.body,
            })
            .collect();
        publisher.publish_all(&msgs).await.map_err(|e| {
            tracing::warn!(error = %e, commands = cmds.len(), "MQTT command delivery failed");
            e.to_string()
        })
    }

    /// Publishes to gateways over AMQP; returns the commands that failed with why.
    async fn send_amqp<'c>(
        channel: &lapin::Channel,
        exchange: &str,
        cmds: &[&'c Outgoing<'c>],
    ) -> Vec<(&'c Outgoing<'c>, String)> {
        let mut confirms = Vec::with_capacity(cmds.len());
        for c in cmds {
            let gw = c.gateway_id.unwrap_or_default();
            let confirm = channel
                .basic_publish(
                    exchange.into(),
                    gw.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &c.body,
                    BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_content_type("application/json".into())
                        .with_message_id(c.command_id.hyphenated().to_string().into()),
                )
                .await;
            confirms.push((c, confirm));
        }
        let mut failed = Vec::new();
        for (c, confirm) in confirms {
            let outcome = match confirm {
                Err(e) => Err(e.to_string()),
                Ok(pc) => match pc.await {
                    Err(e) => Err(e.to_string()),
                    Ok(lapin::Confirmation::Ack(Some(ret))) => Err(format!(
                        "returned by the broker: {} {}",
                        ret.reply_code, ret.reply_text
                    )),
                    Ok(lapin::Confirmation::Nack(_)) => Err("refused by the broker (nack)".into()),
                    Ok(_) => Ok(()),
                },
            };
            if let Err(why) = outcome {
                failed.push((*c, why));
            }
        }
        failed
    }

    async fn record_failure(
        &self,
        c: &Outgoing<'_>,
        channel: &str,
        attempt: i32,
        error: &str,
        gave_up: bool,
    ) -> Result<()> {
        let id = c.command_id.hyphenated().to_string();
        let event = Event::new(
            derived_event_id(&["delivery-failed", &id, &attempt.to_string()]),
            Payload::CommandDeliveryFailed(CommandDeliveryFailed {
                command_id: c.command_id,
                device_id: c.device_id.to_owned(),
                rollout_id: c.rollout_id.to_owned(),
                channel: channel.to_owned(),
                gateway_id: c.gateway_id.map(str::to_owned),
                attempt,
                error: error.to_owned(),
                gave_up,
            }),
            now_micros(),
            now_micros(),
            id.clone(),
        );
        self.producer.append(&event).await?;
        if gave_up {
            let origin = Origin {
                source: "kafka",
                channel: &self.cfg.commands_topic,
                partition: Some(c.source.position.partition),
                offset: Some(c.source.position.offset),
            };
            let rejection = Rejection::new("undeliverable", error.to_owned());
            // Only given-up commands need their Avro bytes, so they are encoded here.
            let bytes = otaledger_schemas::encode(&c.source.event)
                .map_err(otaledger_ledger::Error::from)?;
            dead_letter(
                &self.producer,
                &origin,
                c.device_id.as_bytes(),
                &bytes,
                &rejection,
            )
            .await?
            .acked()
            .await?;
        }
        Ok(())
    }

    async fn apply_batch(&mut self, tx: &mut PgConnection, events: &[Positioned]) -> Result<()> {
        let started = std::time::Instant::now();
        let all: Vec<Outgoing<'_>> = events.iter().filter_map(outgoing).collect();
        if all.is_empty() {
            return Ok(());
        }
        let ids: Vec<Uuid> = all.iter().map(|c| c.command_id).collect();
        let done: Vec<Uuid> = sqlx::query_scalar(
            "SELECT command_id FROM dispatched_commands WHERE command_id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await
        .db("reading dispatched commands")?;
        let mut seen: std::collections::HashSet<Uuid> = done.into_iter().collect();
        let todo: Vec<&Outgoing<'_>> = all.iter().filter(|c| seen.insert(c.command_id)).collect();
        let (gw, direct): (Vec<&Outgoing<'_>>, Vec<&Outgoing<'_>>) =
            todo.iter().partition(|c| c.gateway_id.is_some());
        let mut backoff = self.cfg.backoff;
        let mut pending_mqtt = direct;
        let mut pending_amqp = gw;
        let mut sent: Vec<(&Outgoing<'_>, &str)> = Vec::new();
        for attempt in 1..=self.cfg.attempts.max(1) {
            let last = attempt == self.cfg.attempts.max(1);
            // Both brokers at once: a batch holds devices of either kind.
            let (link, root) = (&mut self.mqtt, &self.cfg.mqtt.topic_root);
            let mqtt_cmds = &pending_mqtt;
            let mqtt = async move {
                let t = std::time::Instant::now();
                (Self::send_mqtt(link, root, mqtt_cmds).await, t.elapsed())
            };
            let amqp = async {
                let t = std::time::Instant::now();
                let failed =
                    Self::send_amqp(&self.amqp, &self.cfg.amqp.commands_exchange, &pending_amqp)
                        .await;
                (failed, t.elapsed())
            };
            let ((mqtt, mqtt_took), (failed, amqp_took)) = tokio::join!(mqtt, amqp);
            tracing::debug!(
                attempt,
                mqtt = pending_mqtt.len(),
                ?mqtt_took,
                amqp = pending_amqp.len(),
                ?amqp_took,
                "commands handed to the brokers"
            );
            if !pending_mqtt.is_empty() {
                match mqtt {
                    Ok(()) => {
                        self.delivered_mqtt.add(pending_mqtt.len() as u64);
                        sent.extend(pending_mqtt.drain(..).map(|c| (c, "mqtt")));
                    }
                    Err(why) => {
                        // The broker (or the way to it) failed, not these commands: they are
                        // not given up, see below.
                        self.failed_mqtt.add(pending_mqtt.len() as u64);
                        tracing::warn!(commands = pending_mqtt.len(), attempt, error = %why, "MQTT broker unavailable");
                    }
                }
            }
            if !pending_amqp.is_empty() {
                let failed_ids: std::collections::HashSet<Uuid> =
                    failed.iter().map(|(c, _)| c.command_id).collect();
                for c in pending_amqp
                    .iter()
                    .filter(|c| !failed_ids.contains(&c.command_id))
                {
                    sent.push((c, "amqp"));
                }
                self.delivered_amqp
                    .add((pending_amqp.len() - failed.len()) as u64);
                self.failed_amqp.add(failed.len() as u64);
                for (c, why) in &failed {
                    tracing::warn!(command = %c.command_id, gateway = ?c.gateway_id, attempt, error = %why, "command delivery failed");
                    self.record_failure(c, "amqp", attempt, why, last).await?;
                }
                pending_amqp = failed.into_iter().map(|(c, _)| c).collect();
            }
            if pending_mqtt.is_empty() && pending_amqp.is_empty() {
                break;
            }
            if !last {
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
        }
        // An MQTT failure is the broker's: a publish is never refused for its content (MQTT
        // 3.1.1 has no negative acknowledgement). Commands are not given up on a broker that
        // restarts; the partition waits for it, and the commands stay in the ledger meanwhile.
        let mut wait = self.cfg.backoff.max(Duration::from_millis(100));
        while !pending_mqtt.is_empty() {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                // Not committed: the batch's commands are sent at the next start.
                () = self.shutdown.wait() => {
                    return Err(Error::Stopped("shutdown while the MQTT broker was down"));
                }
            }
            wait = (wait * 2).min(MAX_BROKER_WAIT);
            let (link, root) = (&mut self.mqtt, &self.cfg.mqtt.topic_root);
            match Self::send_mqtt(link, root, &pending_mqtt).await {
                Ok(()) => {
                    self.delivered_mqtt.add(pending_mqtt.len() as u64);
                    sent.extend(pending_mqtt.drain(..).map(|c| (c, "mqtt")));
                }
                Err(why) => {
                    self.failed_mqtt.add(pending_mqtt.len() as u64);
                    tracing::warn!(commands = pending_mqtt.len(), error = %why, retry_in = ?wait, "MQTT broker still unavailable; the commands wait for it");
                }
            }
        }
        let until_sent = started.elapsed();
        let ids: Vec<Uuid> = sent.iter().map(|(c, _)| c.command_id).collect();
        let devices: Vec<&str> = sent.iter().map(|(c, _)| c.device_id).collect();
        let channels: Vec<&str> = sent.iter().map(|(_, ch)| *ch).collect();
        sqlx::query(
            "INSERT INTO dispatched_commands (command_id, device_id, channel)
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[]) ON CONFLICT DO NOTHING",
        )
        .bind(&ids)
        .bind(&devices)
        .bind(&channels)
        .execute(&mut *tx)
        .await
        .db("recording dispatched commands")?;
        tracing::debug!(commands = all.len(), ?until_sent, total = ?started.elapsed(), "batch dispatched");
        Ok(())
    }
}

fn amqp_err(context: &'static str) -> impl Fn(lapin::Error) -> Error {
    move |source| Error::Amqp { context, source }
}

impl Projection for Dispatcher {
    async fn apply(
        &mut self,
        tx: &mut PgConnection,
        events: &[Positioned],
    ) -> otaledger_ledger::Result<()> {
        Ok(self.apply_batch(tx, events).await?)
    }
}

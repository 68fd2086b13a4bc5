//! The AMQP side every component shares: connection settings, the durable reports queue
//! gateways publish to and the topic exchange commands to gateways go through.

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use serde::Deserialize;

use crate::{AmqpContext, Error, Result};

#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpConfig {
    pub url: String,
    /// The durable queue gateways publish their report batches to.
    pub reports_queue: String,
    /// The topic exchange commands to gateways go to (routing key = gateway id).
    pub commands_exchange: String,
    pub prefetch: u16,
}

crate::config::debug_with_redacted_url!(AmqpConfig {
    reports_queue,
    commands_exchange,
    prefetch
});

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            reports_queue: "ota.gateway-reports".into(),
            commands_exchange: "ota.gateway-commands".into(),
            prefetch: 256,
        }
    }
}

/// Connects to RabbitMQ.
pub async fn connect(cfg: &AmqpConfig) -> Result<Connection> {
    Connection::connect(&cfg.url, ConnectionProperties::default())
        .await
        .amqp("connecting")
}

/// Declares the durable reports queue (idempotent).
pub async fn declare_reports_queue(channel: &lapin::Channel, cfg: &AmqpConfig) -> Result<()> {
    channel
        .queue_declare(
            cfg.reports_queue.as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .amqp("declaring reports queue")?;
    Ok(())
}

/// Declares the topic exchange commands to gateways are published on (routing key: gateway id).
/// The dispatcher publishes to it; gateways bind their queues to it.
pub async fn declare_commands_exchange(channel: &lapin::Channel, cfg: &AmqpConfig) -> Result<()> {
    channel
        .exchange_declare(
            cfg.commands_exchange.as_str().into(),
            lapin::ExchangeKind::Topic,
            lapin::options::ExchangeDeclareOptions {
                durable: true,
                ..lapin::options::ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .amqp("declaring the commands exchange")
}

/// Publishes one gateway batch with publisher confirms (used by the simulator and tests).
pub async fn publish_batch(channel: &lapin::Channel, cfg: &AmqpConfig, body: &[u8]) -> Result<()> {
    let confirm = channel
        .basic_publish(
            "".into(),
            cfg.reports_queue.as_str().into(),
            lapin::options::BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            lapin::BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into()),
        )
        .await
        .amqp("publishing report batch")?
        .await
        .amqp("awaiting publisher confirm")?;
    if confirm.is_nack() {
        return Err(Error::Other("broker refused the report batch".into()));
    }
    Ok(())
}

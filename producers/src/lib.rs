//! What brings facts into the ledger from devices and gateways: the MQTT bridge (devices) and
//! the AMQP bridge (edge gateways). Each acknowledges a message to its broker only after Kafka
//! has its event or its dead letter.

pub mod amqp_bridge;
pub mod budget;
pub mod mqtt_bridge;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Ledger(#[from] otaledger_ledger::Error),
    #[error("mqtt connection: {0}")]
    MqttConnection(#[from] rumqttc::ConnectionError),
    #[error("amqp: receiving: {0}")]
    Amqp(#[from] lapin::Error),
    /// The broker ended the bridge's consumer (a queue deleted, a channel closed).
    #[error("{0}")]
    Stopped(&'static str),
    #[error("the acknowledging task failed: {0}")]
    Acker(#[from] tokio::task::JoinError),
    #[error(transparent)]
    Store(#[from] otaledger_projections::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

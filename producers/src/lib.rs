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

/// Messages refused because their device was over its rate, by entrance.
fn rate_limited(source: &str) -> otaledger_ledger::metrics::Counter {
    otaledger_ledger::metrics::REGISTRY.counter(
        "otaledger_rate_limited_total",
        "Device messages refused because their device sent over its rate",
        &[("source", source)],
    )
}

/// The dead letter's reason for `refused` messages of `device` over its rate.
fn rate_limited_rejection(device: &str, refused: u64) -> otaledger_ledger::dead_letters::Rejection {
    otaledger_ledger::dead_letters::Rejection::new(
        "rate_limited",
        format!(
            "device {device:?} sent over its rate (ingest.device_rate_per_s); {refused} of its \
             messages refused since the last such dead letter, this one included"
        ),
    )
}

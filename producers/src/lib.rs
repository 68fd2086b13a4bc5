//! Everything that appends facts to the ledger: the [`kafka::EventProducer`] all writers share,
//! the dead-letter writer, the MQTT and AMQP bridges, HTTP ingest and the fleet simulator.

pub mod amqp_bridge;
pub mod config;
pub mod dead_letters;
pub mod device_json;
pub mod ingest;
pub mod kafka;
pub mod metrics;
pub mod mqtt_bridge;
pub mod mqtt_publisher;
pub mod shutdown;
pub mod simulator;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("kafka: {context}: {source}")]
    Kafka {
        context: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("encoding {0}")]
    Encode(#[from] otaledger_schemas::Error),
    #[error("mqtt: {context}: {reason}")]
    Mqtt { context: String, reason: String },
    #[error("amqp: {context}: {source}")]
    Amqp {
        context: String,
        source: lapin::Error,
    },
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds what was being done to a Kafka error.
pub(crate) trait KafkaContext<T> {
    fn kafka(self, context: impl Into<String>) -> Result<T>;
}

impl<T> KafkaContext<T> for std::result::Result<T, rdkafka::error::KafkaError> {
    fn kafka(self, context: impl Into<String>) -> Result<T> {
        self.map_err(|source| Error::Kafka {
            context: context.into(),
            source,
        })
    }
}

pub(crate) trait AmqpContext<T> {
    fn amqp(self, context: impl Into<String>) -> Result<T>;
}

impl<T> AmqpContext<T> for std::result::Result<T, lapin::Error> {
    fn amqp(self, context: impl Into<String>) -> Result<T> {
        self.map_err(|source| Error::Amqp {
            context: context.into(),
            source,
        })
    }
}

//! The runtime every otaledger component runs on: appending to the ledger
//! ([`kafka::EventProducer`]), reading it ([`reader`], [`runner`]), owning partitions and storing
//! offsets with the rows ([`ownership`], [`db`]), dead letters (of what does not decode, and of
//! what a projection cannot apply: [`unappliable`]), metrics, shutdown, configuration,
//! and the MQTT and AMQP layouts shared by bridges, dispatcher and simulator.
//!
//! Correctness never depends on Kafka's group protocol: each instance owns partitions through
//! PostgreSQL advisory locks, reads them with `assign()`, stores its offsets in the same
//! transaction as the rows it writes, and fences stale owners with an epoch per partition.

pub mod amqp;
pub mod amqp_admin;
pub mod config;
pub mod db;
pub mod dead_letters;
pub mod fence;
pub mod http_get;
pub mod kafka;
pub mod metrics;
pub mod mqtt;
pub mod mqtt_admin;
pub mod ownership;
pub mod rate_limit;
pub mod reader;
pub mod reset;
pub mod runner;
pub mod shutdown;
pub mod unappliable;

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
    #[error("postgres: {context}: {source}")]
    Db {
        context: String,
        source: sqlx::Error,
    },
    #[error("amqp: {context}: {source}")]
    Amqp {
        context: String,
        source: lapin::Error,
    },
    #[error("mqtt: {context}: {source}")]
    Mqtt {
        context: &'static str,
        source: rumqttc::ClientError,
    },
    #[error("lost ownership of {topic}[{partition}] to another instance")]
    Fenced { topic: String, partition: i32 },
    /// A projection could not apply a batch.
    #[error("applying a batch: {0}")]
    Apply(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The ledger holds fewer records than the consumer applied: the broker lost the topic or
    /// it was recreated, while PostgreSQL kept the projections (ADR 0023). Not transient.
    #[error(
        "the ledger has fewer records than {consumer} already applied (stored next offset \
         {stored} > end {end} on {topic}:{partition}): the broker lost or recreated the topic; \
         run `otaledger rebuild` (or reset the projections: delete {consumer}'s rows of \
         {topic} in consumer_offsets) — refusing to skip records silently"
    )]
    LedgerReset {
        consumer: String,
        topic: String,
        partition: i32,
        stored: i64,
        end: i64,
    },
    /// Records the consumer has not applied were deleted from the ledger (ADR 0023). Not
    /// transient.
    #[error(
        "the ledger no longer holds records {consumer} has not applied (stored next offset \
         {stored} < start {start} on {topic}:{partition}): records were deleted from the topic; \
         restore them, or run `otaledger rebuild` (or reset the projections: delete \
         {consumer}'s rows of {topic} in consumer_offsets) to go on without them — refusing \
         to skip records silently"
    )]
    LedgerTruncated {
        consumer: String,
        topic: String,
        partition: i32,
        stored: i64,
        start: i64,
    },
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// Whether this is a ledger that went backwards or lost records ([`Error::LedgerReset`],
    /// [`Error::LedgerTruncated`]): restarting the component cannot help.
    #[must_use]
    pub fn is_ledger_reset(&self) -> bool {
        matches!(
            self,
            Error::LedgerReset { .. } | Error::LedgerTruncated { .. }
        )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Lets the runtime report a crate's error (a projection's, the workflow's): the runtime's own
/// error, which the crate wrapped in `$variant`, comes back as it was; anything else becomes the
/// source of [`Error::Apply`].
#[macro_export]
macro_rules! carried_by_the_runtime {
    ($error:ty, $variant:path) => {
        impl From<$error> for $crate::Error {
            fn from(e: $error) -> Self {
                match e {
                    $variant(e) => e,
                    other => $crate::Error::Apply(Box::new(other)),
                }
            }
        }
    };
}

/// Adds what was being done to a Kafka error.
pub trait KafkaContext<T> {
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

/// Adds what was being done to an AMQP error.
pub trait AmqpContext<T> {
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

/// Adds what was being done to an MQTT client error.
pub trait MqttContext<T> {
    fn mqtt(self, context: &'static str) -> Result<T>;
}

impl<T> MqttContext<T> for std::result::Result<T, rumqttc::ClientError> {
    fn mqtt(self, context: &'static str) -> Result<T> {
        self.map_err(|source| Error::Mqtt { context, source })
    }
}

/// Adds what was being done to a PostgreSQL error.
pub trait DbContext<T> {
    fn db(self, context: &str) -> Result<T>;
}

impl<T> DbContext<T> for std::result::Result<T, sqlx::Error> {
    fn db(self, context: &str) -> Result<T> {
        self.map_err(|source| Error::Db {
            context: context.to_owned(),
            source,
        })
    }
}

pub use runner::{FoldWindow, Positioned, Projection, Runner, RunnerConfig};

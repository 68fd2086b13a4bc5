//! The consumer runtime every otaledger reader of the ledger runs on.
//!
//! Correctness never depends on Kafka's group protocol: each instance owns partitions through
//! PostgreSQL advisory locks, reads them with `assign()`, stores its offsets in the same
//! transaction as the rows it writes, and fences stale owners with an epoch per partition.

pub mod db;
pub mod dispatcher;
pub mod ownership;
pub mod router;
pub mod runner;
pub mod saga;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("postgres: {context}: {source}")]
    Db {
        context: String,
        source: sqlx::Error,
    },
    #[error("kafka: {context}: {source}")]
    Kafka {
        context: String,
        source: rdkafka::error::KafkaError,
    },
    #[error(transparent)]
    Producer(#[from] otaledger_producers::Error),
    #[error("lost ownership of {topic}[{partition}] to another instance")]
    Fenced { topic: String, partition: i32 },
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) trait DbContext<T> {
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

pub use runner::{BoxFuture, FoldWindow, Positioned, Projection, Runner, RunnerConfig};

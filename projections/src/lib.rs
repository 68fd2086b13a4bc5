//! Read models in PostgreSQL, folded from the ledger: the fleet view (one row per device) and
//! device counts by firmware, model and site. [`projector::FleetProjector`] writes them;
//! [`fleet`] reads them for the API.

pub mod fleet;
pub mod history;
pub mod migrations;
pub mod projector;
pub mod rebuild;
mod rollout_fold;
pub mod rollouts;
pub mod targets;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("postgres: {context}: {source}")]
    Db {
        context: &'static str,
        source: sqlx::Error,
    },
    #[error(transparent)]
    Ledger(#[from] otaledger_ledger::Error),
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A projection's failure, as the consumer runtime reports it (with this error as its source).
impl From<Error> for otaledger_ledger::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Ledger(e) => e,
            other => otaledger_ledger::Error::Apply(Box::new(other)),
        }
    }
}

pub(crate) trait DbContext<T> {
    fn db(self, context: &'static str) -> Result<T>;
}

impl<T> DbContext<T> for std::result::Result<T, sqlx::Error> {
    fn db(self, context: &'static str) -> Result<T> {
        self.map_err(|source| Error::Db { context, source })
    }
}

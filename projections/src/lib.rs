//! Read models in PostgreSQL, folded from the ledger: the fleet view (one row per device) and
//! device counts by firmware, model and site. [`projector::FleetProjector`] writes them;
//! [`fleet`] reads them for the API.

/// A row type read from a query by its field names: the struct as written, plus a
/// `sqlx::FromRow` that takes each field from the column of the same name (so a query aliases a
/// column whose name differs). One definition instead of a hand-written field-by-field copy.
macro_rules! row_type {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $($(#[$fmeta:meta])* $fvis:vis $field:ident : $ty:ty),* $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $($(#[$fmeta])* $fvis $field: $ty),*
        }

        impl sqlx::FromRow<'_, sqlx::postgres::PgRow> for $name {
            fn from_row(row: &sqlx::postgres::PgRow) -> std::result::Result<Self, sqlx::Error> {
                use sqlx::Row as _;
                Ok($name {
                    $($field: row.try_get(stringify!($field))?),*
                })
            }
        }
    };
}

pub mod access;
pub mod admission;
pub mod fleet;
pub mod history;
pub mod migrations;
pub mod projector;
pub mod rebuild;
pub mod releases;
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
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

otaledger_ledger::carried_by_the_runtime!(Error, Error::Ledger);

pub(crate) trait DbContext<T> {
    fn db(self, context: &'static str) -> Result<T>;
}

impl<T> DbContext<T> for std::result::Result<T, sqlx::Error> {
    fn db(self, context: &'static str) -> Result<T> {
        self.map_err(|source| Error::Db { context, source })
    }
}

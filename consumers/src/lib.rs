//! The rollout workflow: the saga (the single writer of each rollout's decisions), the router
//! (device reports into the rollout's partition) and the dispatcher (commands to devices over
//! MQTT and to gateways over AMQP).

pub mod dispatcher;
pub mod mqtt_publisher;
pub mod router;
pub mod saga;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Ledger(#[from] otaledger_ledger::Error),
    #[error("reading the fleet view: {0}")]
    FleetView(#[from] otaledger_projections::Error),
    #[error("publishing over MQTT: {0}")]
    Publish(#[from] mqtt_publisher::PublishError),
    #[error("amqp: {context}: {source}")]
    Amqp {
        context: &'static str,
        source: lapin::Error,
    },
    #[error("the director's key: {0}")]
    DirectorKey(#[from] otaledger_domain::tuf::TufError),
    /// Shutdown came while a batch waited (for a broker that is down): it is not committed,
    /// and is read again at the next start.
    #[error("stopped: {0}")]
    Stopped(&'static str),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

otaledger_ledger::carried_by_the_runtime!(Error, Error::Ledger);

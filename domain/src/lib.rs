//! The domain core of otaledger: every event the ledger records, the identifiers that tie them
//! together, and the pure fold of the fleet view. Nothing in this crate performs I/O.

pub mod audit;
pub mod device_json;
pub mod device_view;
pub mod events;
pub mod ids;
pub mod rejection;
pub mod rollout;
mod serde_uuid;
pub mod time;

pub use events::{Event, EventMeta, EventType, Payload, Stream};

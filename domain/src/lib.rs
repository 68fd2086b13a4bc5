//! The domain core of otaledger: every event the ledger records, the identifiers that tie them
//! together, and the pure fold of the fleet view. Nothing in this crate performs I/O.

pub mod access;
pub mod audit;
pub mod byte_range;
pub mod command_key;
pub mod device_json;
pub mod device_view;
pub mod digest;
pub mod download_link;
pub mod events;
pub mod ids;
pub mod json_number;
pub mod json_schema;
pub mod rejection;
pub mod release;
pub mod rollout;
pub mod rollout_request;
mod serde_uuid;
pub mod stable_hash;
mod text;
pub mod time;
pub mod tuf;
pub mod version;

pub use events::{Event, EventMeta, EventType, Payload, Stream};

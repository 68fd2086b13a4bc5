//! Avro single-object encoding of otaledger events, with no schema registry.
//!
//! Every payload is `C3 01`, the 8-byte little-endian CRC-64-AVRO (Rabin) fingerprint of the
//! writer schema, then the Avro binary datum. Every schema version ever published lives in
//! `schemas/avro/<Type>.v<N>.avsc` and is compiled into the binary, so a reader resolves data
//! written with any older version to the current (highest) version of its type.

mod catalogue;
mod codec;

pub use catalogue::{SchemaInfo, Schemas};
pub use codec::{decode, encode, encode_with, fingerprint_of, Decoded};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("payload is {0} bytes, shorter than the 10-byte single-object header")]
    Truncated(usize),
    #[error("payload does not start with the Avro single-object marker C3 01")]
    BadMarker,
    #[error("unknown writer schema fingerprint {0:016x}")]
    UnknownFingerprint(u64),
    #[error("cannot decode {event_type} (schema v{version}): {reason}")]
    Datum {
        event_type: &'static str,
        version: u32,
        reason: String,
    },
    #[error("{0} bytes left over after the datum")]
    TrailingBytes(usize),
    #[error("cannot encode {event_type}: {reason}")]
    Encode {
        event_type: &'static str,
        reason: String,
    },
    #[error("schema file {file} is invalid: {reason}")]
    Schema { file: &'static str, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

//! Timestamps travel as microseconds since the Unix epoch (Avro `timestamp-micros`).

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch, UTC.
pub type Micros = i64;

/// The current wall-clock time in microseconds.
#[must_use]
pub fn now_micros() -> Micros {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

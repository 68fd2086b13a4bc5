//! The Update Framework (TUF 1.0) metadata of the image repository, and the director's
//! per-device statements (Uptane's two repositories, `../shared/TRUST.md`; ADR 0038).
//!
//! Pure: signing and verifying bytes, parsing and building metadata. Keys are Ed25519 (`ring`,
//! already built for rustls); what is signed is the OLPC canonical JSON of the `signed` object,
//! as every TUF implementation signs it, so python-tuf's `ngclient` verifies what this writes.

pub mod director;
pub mod keys;
pub mod metadata;

pub use keys::{PublicKey, SigningKey};
pub use metadata::{Root, Signed, Target};

/// Why metadata or a statement is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TufError {
    #[error("malformed {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error("{role} metadata has {valid} valid signature(s) of the {threshold} its root requires")]
    Threshold {
        role: String,
        valid: usize,
        threshold: u32,
    },
    #[error("{role} metadata expired at {expires}")]
    Expired { role: String, expires: String },
    #[error("{role} metadata is version {got}; version {expected} was expected")]
    Version {
        role: String,
        got: u64,
        expected: String,
    },
    #[error("{0}")]
    Mismatch(String),
    #[error("the key could not be used: {0}")]
    Key(String),
}

pub(crate) fn malformed(what: &'static str, reason: impl Into<String>) -> TufError {
    TufError::Malformed {
        what,
        reason: reason.into(),
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

pub(crate) fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// TUF's time format: `2030-01-01T00:00:00Z`, whole seconds, UTC.
#[must_use]
pub fn format_time(unix_seconds: i64) -> String {
    chrono::DateTime::from_timestamp(unix_seconds, 0)
        .unwrap_or_default()
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The seconds since the epoch of a TUF time.
///
/// # Errors
/// [`TufError::Malformed`] for anything but `YYYY-MM-DDTHH:MM:SSZ`.
pub fn parse_time(s: &str) -> Result<i64, TufError> {
    chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%SZ")
        .map(|t| t.and_utc().timestamp())
        .map_err(|e| malformed("expiry", format!("{s:?}: {e}")))
}

#[cfg(test)]
mod tests;

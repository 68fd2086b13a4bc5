//! Identifiers: device ids, event ids and trace ids.

use thiserror::Error;
use uuid::Uuid;

/// Namespace for deterministic (v5) event ids of derived events: the same inputs always give the
/// same id, so a consumer that re-derives an event after a crash appends a duplicate that every
/// reader recognises.
pub const DERIVED_NAMESPACE: Uuid = Uuid::from_u128(0x6f74_616c_6564_6765_7200_0000_0000_0001);

/// The longest device id accepted, in bytes.
pub const MAX_DEVICE_ID_LEN: usize = 128;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum IdError {
    #[error("device id is empty")]
    Empty,
    #[error("device id is longer than {MAX_DEVICE_ID_LEN} bytes")]
    TooLong,
    #[error("device id contains {0:?}; allowed are letters, digits, '.', '_', ':' and '-'")]
    BadChar(char),
}

/// Checks a device (or gateway) id: 1 to 128 characters of `[A-Za-z0-9._:-]`, so that ids are
/// safe as MQTT topic levels, AMQP routing keys and Kafka keys.
pub fn validate_device_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if id.len() > MAX_DEVICE_ID_LEN {
        return Err(IdError::TooLong);
    }
    match id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')))
    {
        Some(c) => Err(IdError::BadChar(c)),
        None => Ok(()),
    }
}

/// A fresh random event id, for facts that enter the ledger from outside.
#[must_use]
pub fn new_event_id() -> Uuid {
    Uuid::new_v4()
}

/// A deterministic event id for a derived event, built from the parts that identify it.
#[must_use]
pub fn derived_event_id(parts: &[&str]) -> Uuid {
    Uuid::new_v5(&DERIVED_NAMESPACE, parts.join("\u{1f}").as_bytes())
}

/// A new W3C-style trace id: 32 lowercase hex digits.
#[must_use]
pub fn new_trace_id() -> String {
    Uuid::new_v4().simple().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_are_checked() {
        assert_eq!(validate_device_id("elev-0001.eu:a_b"), Ok(()));
        assert_eq!(validate_device_id(""), Err(IdError::Empty));
        assert_eq!(validate_device_id("a/b"), Err(IdError::BadChar('/')));
        assert_eq!(validate_device_id("a+"), Err(IdError::BadChar('+')));
        assert_eq!(validate_device_id(&"x".repeat(129)), Err(IdError::TooLong));
    }

    #[test]
    fn derived_ids_are_deterministic_and_distinct() {
        let a = derived_event_id(&["rollout-1", "wave", "0"]);
        assert_eq!(a, derived_event_id(&["rollout-1", "wave", "0"]));
        assert_ne!(a, derived_event_id(&["rollout-1", "wave", "1"]));
        // The separator keeps ("ab","c") apart from ("a","bc").
        assert_ne!(
            derived_event_id(&["ab", "c"]),
            derived_event_id(&["a", "bc"])
        );
    }
}

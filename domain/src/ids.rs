//! Identifiers: device and rollout ids (checked on parsing), event ids and trace ids.

use thiserror::Error;
use uuid::Uuid;

/// Namespace for deterministic (v5) event ids of derived events: the same inputs always give the
/// same id, so a consumer that re-derives an event after a crash appends a duplicate that every
/// reader recognises.
pub const DERIVED_NAMESPACE: Uuid = Uuid::from_u128(0x6f74_616c_6564_6765_7200_0000_0000_0001);

/// The longest device id accepted, in bytes.
pub const MAX_DEVICE_ID_LEN: usize = 128;

#[derive(Debug, Clone, Error, PartialEq, Eq)]
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

/// An id that passed [`validate_device_id`]'s rule, made by parsing so that holding one proves
/// it is valid.
macro_rules! checked_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Deserialize)]
        #[serde(try_from = "String")]
        pub struct $name(String);

        crate::text::parsed_text!($name, IdError, |id| {
            validate_device_id(&id)?;
            Ok(id)
        });
    };
}

checked_id! {
    /// A device (or gateway) id: 1 to 128 characters of `[A-Za-z0-9._:-]`.
    DeviceId
}

checked_id! {
    /// A rollout id: the same rule as a device id (it is a Kafka key and a URL path segment).
    RolloutId
}

impl RolloutId {
    /// A new rollout id: a random UUID, hyphenated.
    #[must_use]
    pub fn new_random() -> Self {
        RolloutId(new_event_id().hyphenated().to_string())
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
    fn device_ids_are_checked_at_their_boundaries() {
        let max = "x".repeat(MAX_DEVICE_ID_LEN);
        assert_eq!(validate_device_id(&max), Ok(()), "128 bytes is the maximum");
        assert_eq!(
            validate_device_id(&format!("{max}x")),
            Err(IdError::TooLong)
        );
        assert_eq!(validate_device_id("a"), Ok(()), "one character is enough");
        assert_eq!(validate_device_id(" "), Err(IdError::BadChar(' ')));
        assert_eq!(validate_device_id("a b"), Err(IdError::BadChar(' ')));
        assert_eq!(validate_device_id("é"), Err(IdError::BadChar('é')));
        // 65 two-byte characters are 130 bytes: the length is checked first, in bytes.
        assert_eq!(
            validate_device_id(&"é".repeat(65)),
            Err(IdError::TooLong),
            "the limit counts bytes"
        );
        for c in ['.', '_', ':', '-', '0', '9', 'a', 'z', 'A', 'Z'] {
            assert_eq!(validate_device_id(&c.to_string()), Ok(()), "{c:?}");
        }
        for c in ['/', '+', '#', '*', '\\', '\0', '\n', '@', '!', '~'] {
            assert_eq!(
                validate_device_id(&format!("a{c}")),
                Err(IdError::BadChar(c)),
                "{c:?}"
            );
        }
    }

    #[test]
    fn device_ids_parse_to_the_same_rule_and_print_as_given() {
        let id: DeviceId = "elev-0001.eu:a_b".parse().unwrap();
        assert_eq!(id.as_str(), "elev-0001.eu:a_b");
        assert_eq!(id.to_string(), "elev-0001.eu:a_b");
        assert_eq!(AsRef::<str>::as_ref(&id), "elev-0001.eu:a_b");
        assert_eq!(String::from(id.clone()), "elev-0001.eu:a_b");
        assert_eq!(id.clone().into_string(), "elev-0001.eu:a_b");
        assert_eq!(DeviceId::try_from("elev-0001.eu:a_b".to_owned()), Ok(id));
        assert_eq!("".parse::<DeviceId>(), Err(IdError::Empty));
        assert_eq!(" d1".parse::<DeviceId>(), Err(IdError::BadChar(' ')));
        assert_eq!(DeviceId::try_from("x".repeat(129)), Err(IdError::TooLong));
        assert!(DeviceId::try_from("x".repeat(128)).is_ok());
        assert_eq!(
            "a/b".parse::<RolloutId>().unwrap_err().to_string(),
            "device id contains '/'; allowed are letters, digits, '.', '_', ':' and '-'"
        );
        assert_eq!(
            "r-1".parse::<RolloutId>().map(RolloutId::into_string),
            Ok("r-1".to_owned())
        );
        let random = RolloutId::new_random();
        assert_ne!(random, RolloutId::new_random());
        assert_eq!(validate_device_id(random.as_str()), Ok(()));
        let uuid = Uuid::parse_str(random.as_str()).unwrap();
        assert_eq!(
            uuid.hyphenated().to_string(),
            random.as_str(),
            "a hyphenated UUID"
        );
    }

    #[test]
    fn device_ids_deserialize_only_when_valid() {
        use serde::de::value::{Error, StrDeserializer, StringDeserializer};
        use serde::de::IntoDeserializer;
        use serde::Deserialize;
        let ok: StringDeserializer<Error> = "d-1".to_owned().into_deserializer();
        assert_eq!(DeviceId::deserialize(ok).unwrap().as_str(), "d-1");
        let bad: StrDeserializer<'_, Error> = "d/1".into_deserializer();
        let err = DeviceId::deserialize(bad).unwrap_err().to_string();
        assert!(err.contains("device id contains '/'"), "{err}");
        let empty: StrDeserializer<'_, Error> = "".into_deserializer();
        assert!(RolloutId::deserialize(empty).is_err());
    }

    #[test]
    fn fresh_ids_are_random() {
        let (a, b) = (new_event_id(), new_event_id());
        assert_ne!(a, b);
        assert_eq!(a.get_version_num(), 4);
        let t = new_trace_id();
        assert_eq!(t.len(), 32);
        assert!(
            t.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "{t}"
        );
        assert_ne!(t, new_trace_id());
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

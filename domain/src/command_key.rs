//! Command ids no one can derive without the saga's key (ADR 0027). A device learns its own
//! command id from the command; with ids derived from public values alone (rollout, device,
//! kind, attempt) anyone who knew those could forge another device's install result. Keyed with
//! a secret (HMAC-SHA256), an id is still the same on every replay of the same decision, and
//! whether an id was ever issued to a device is checked without a table of issued ids.

use sha2::Sha256;
use uuid::Uuid;

use crate::events::CommandKind;

/// The saga's secret for command ids. `Debug` never shows it. The default (all zeros) serves
/// tests of the pure decider; the saga loads its own.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct CommandKey([u8; 32]);

impl std::fmt::Debug for CommandKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CommandKey(<redacted>)")
    }
}

/// HMAC-SHA256 (RFC 2104) of `message`, by the `hmac` crate (already built for sqlx's SCRAM).
pub(crate) fn hmac_sha256(key: &[u8; 32], message: &[u8]) -> [u8; 32] {
    use hmac::Mac as _;
    // HMAC takes a key of any length, so this never fails.
    let Ok(mac) = hmac::Hmac::<Sha256>::new_from_slice(key) else {
        unreachable!("HMAC accepts keys of every length")
    };
    mac.chain_update(message).finalize().into_bytes().into()
}

impl CommandKey {
    #[must_use]
    pub fn new(bytes: [u8; 32]) -> Self {
        CommandKey(bytes)
    }

    /// The id of command `kind` number `attempt` to `device` in `rollout`: a version-8 UUID of
    /// the first 16 bytes of the HMAC of the four values.
    #[must_use]
    pub fn derive(&self, rollout: &str, device: &str, kind: CommandKind, attempt: i32) -> Uuid {
        let kind = match kind {
            CommandKind::Update => "update",
            CommandKind::Rollback => "rollback",
            CommandKind::Cancel => "cancel",
        };
        let message = [rollout, device, kind, &attempt.to_string()].join("\u{1f}");
        let mac = hmac_sha256(&self.0, message.as_bytes());
        let mut first = [0u8; 16];
        first.copy_from_slice(&mac[..16]);
        Uuid::new_v8(first)
    }

    /// Whether `id` is a command of any kind that `device` was or could have been given in
    /// `rollout` up to attempt `attempts` (an abort's rollback and cancel are attempt 1).
    #[must_use]
    pub fn issued(&self, rollout: &str, device: &str, attempts: i32, id: Uuid) -> bool {
        [
            CommandKind::Update,
            CommandKind::Rollback,
            CommandKind::Cancel,
        ]
        .into_iter()
        .any(|kind| (1..=attempts.max(1)).any(|n| self.derive(rollout, device, kind, n) == id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231_test_case_2_shape() {
        // RFC 4231 case 2 uses a 4-byte key ("Jefe"); padded with zeros to 32 bytes it is the
        // same HMAC (keys shorter than a block are zero-padded).
        let mut key = [0u8; 32];
        key[..4].copy_from_slice(b"Jefe");
        let mac = hmac_sha256(&key, b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn ids_depend_on_every_value_and_on_the_key() {
        let key = CommandKey::new([7; 32]);
        let id = key.derive("r1", "d1", CommandKind::Update, 1);
        assert_eq!(id, key.derive("r1", "d1", CommandKind::Update, 1), "stable");
        assert_eq!(id.get_version_num(), 8);
        for other in [
            key.derive("r2", "d1", CommandKind::Update, 1),
            key.derive("r1", "d2", CommandKind::Update, 1),
            key.derive("r1", "d1", CommandKind::Rollback, 1),
            key.derive("r1", "d1", CommandKind::Update, 2),
            CommandKey::new([8; 32]).derive("r1", "d1", CommandKind::Update, 1),
            CommandKey::default().derive("r1", "d1", CommandKind::Update, 1),
        ] {
            assert_ne!(id, other);
        }
        assert_eq!(format!("{key:?}"), "CommandKey(<redacted>)");
    }

    #[test]
    fn issued_knows_every_attempt_and_kind_and_nothing_else() {
        let key = CommandKey::new([1; 32]);
        let second = key.derive("r1", "d1", CommandKind::Update, 2);
        assert!(key.issued("r1", "d1", 2, second));
        assert!(key.issued("r1", "d1", 3, second));
        assert!(
            !key.issued("r1", "d1", 1, second),
            "a later attempt is not issued yet"
        );
        assert!(!key.issued("r1", "d2", 2, second), "another device's id");
        assert!(!key.issued("r2", "d1", 2, second), "another rollout's id");
        let rollback = key.derive("r1", "d1", CommandKind::Rollback, 1);
        assert!(key.issued("r1", "d1", 0, rollback));
        assert!(!key.issued("r1", "d1", 5, Uuid::from_u128(42)));
        assert!(
            !CommandKey::new([2; 32]).issued("r1", "d1", 2, second),
            "another key"
        );
    }
}

//! Artifact digests: [`Sha256`], 64 hexadecimal digits, checked on parsing.
//!
//! Uppercase digits are accepted and normalised to lowercase, as the API has always done: the
//! ledger records one spelling per digest, and devices compare what they compute with it.

use serde::Deserialize;
use thiserror::Error;

/// The number of hexadecimal digits of a SHA-256 digest.
pub const SHA256_HEX_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Sha256Error {
    #[error("must be 64 hexadecimal digits, got {0} characters")]
    Length(usize),
    #[error("must be 64 hexadecimal digits, found {0:?}")]
    NotHex(char),
}

/// A SHA-256 digest as 64 lowercase hexadecimal digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
pub struct Sha256(String);

crate::text::parsed_text!(Sha256, Sha256Error, |hex| {
    if let Some(c) = hex.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(Sha256Error::NotHex(c));
    }
    if hex.len() != SHA256_HEX_LEN {
        return Err(Sha256Error::Length(hex.len()));
    }
    Ok(hex.to_ascii_lowercase())
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_64_hex_digits_and_normalised_to_lowercase() {
        let lower = "0123456789abcdef".repeat(4);
        assert_eq!(Sha256::try_from(lower.as_str()).unwrap().as_str(), lower);
        let upper = "0123456789ABCDEF".repeat(4);
        assert_eq!(
            upper.parse::<Sha256>().map(String::from),
            Ok(lower),
            "uppercase is accepted and lowercased"
        );
        assert_eq!(
            Sha256::try_from("aB".repeat(32)).map(Sha256::into_string),
            Ok("ab".repeat(32))
        );
    }

    #[test]
    fn digests_of_any_other_length_or_alphabet_are_refused() {
        assert_eq!(Sha256::try_from(""), Err(Sha256Error::Length(0)));
        assert_eq!(
            Sha256::try_from("a".repeat(63)),
            Err(Sha256Error::Length(63))
        );
        assert_eq!(
            Sha256::try_from("a".repeat(65)),
            Err(Sha256Error::Length(65))
        );
        assert_eq!(Sha256::try_from("abc"), Err(Sha256Error::Length(3)));
        let g = format!("{}g", "a".repeat(63));
        assert_eq!(Sha256::try_from(g), Err(Sha256Error::NotHex('g')));
        let spaced = format!(" {}", "a".repeat(63));
        assert_eq!(Sha256::try_from(spaced), Err(Sha256Error::NotHex(' ')));
        let trailing = format!("{}\n", "a".repeat(64));
        assert_eq!(Sha256::try_from(trailing), Err(Sha256Error::NotHex('\n')));
        // 32 two-byte characters are 64 bytes, and no hex digits.
        assert_eq!(
            Sha256::try_from("é".repeat(32)),
            Err(Sha256Error::NotHex('é'))
        );
        assert_eq!(
            Sha256::try_from("abc").unwrap_err().to_string(),
            "must be 64 hexadecimal digits, got 3 characters"
        );
        assert_eq!(
            Sha256::try_from("x").unwrap_err().to_string(),
            "must be 64 hexadecimal digits, found 'x'"
        );
    }

    #[test]
    fn digests_print_lowercase_and_deserialize_only_when_valid() {
        use serde::de::value::{Error, StrDeserializer};
        use serde::de::IntoDeserializer;
        let d: Sha256 = "AB".repeat(32).parse().unwrap();
        assert_eq!(d.to_string(), "ab".repeat(32));
        assert_eq!(AsRef::<str>::as_ref(&d), "ab".repeat(32));
        let upper = "CD".repeat(32);
        let ok: StrDeserializer<'_, Error> = upper.as_str().into_deserializer();
        assert_eq!(
            Sha256::deserialize(ok).map(String::from),
            Ok("cd".repeat(32))
        );
        let bad: StrDeserializer<'_, Error> = "abc".into_deserializer();
        let err = Sha256::deserialize(bad).unwrap_err().to_string();
        assert!(err.contains("must be 64 hexadecimal digits"), "{err}");
    }
}

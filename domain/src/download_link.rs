//! Short-lived signed download links (ADR 0037): a URL that lets whoever holds it fetch one
//! artifact until a time, with no token, so a CDN or an edge cache can serve it. The signature
//! is an HMAC-SHA256, keyed with a secret every API instance shares, of the artifact's digest and
//! the expiry; changing either breaks it.

use crate::command_key::hmac_sha256;
use crate::digest::Sha256;
use crate::time::Micros;

/// The API's secret for download links. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct LinkKey([u8; 32]);

impl std::fmt::Debug for LinkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkKey(<redacted>)")
    }
}

/// Why a link does not open its artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkRefusal {
    #[error("the download link has expired")]
    Expired,
    #[error("the download link's signature does not match (altered, or for another artifact)")]
    BadSignature,
}

impl LinkKey {
    #[must_use]
    pub fn new(bytes: [u8; 32]) -> Self {
        LinkKey(bytes)
    }

    /// The signature (64 hexadecimal digits) of a link to `artifact` valid until `expires`
    /// (seconds since the epoch).
    #[must_use]
    pub fn sign(&self, artifact: &Sha256, expires: i64) -> String {
        let message = format!("otaledger-download-v1\u{1f}{artifact}\u{1f}{expires}");
        hmac_sha256(&self.0, message.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Whether a link to `artifact` with `expires` and `signature` opens it at `now`.
    ///
    /// # Errors
    /// [`LinkRefusal`] when it has expired or its signature is not this key's for these values.
    pub fn check(
        &self,
        artifact: &Sha256,
        expires: i64,
        signature: &str,
        now: Micros,
    ) -> Result<(), LinkRefusal> {
        let expected = self.sign(artifact, expires);
        // Compared in constant time: the comparison must not tell how much of a guess was right.
        let differs = expected.len() != signature.len()
            || expected
                .bytes()
                .zip(signature.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                != 0;
        if differs {
            return Err(LinkRefusal::BadSignature);
        }
        if now / 1_000_000 >= expires {
            return Err(LinkRefusal::Expired);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(c: char) -> Sha256 {
        Sha256::try_from(c.to_string().repeat(64)).unwrap()
    }

    #[test]
    fn a_link_opens_its_artifact_until_it_expires() {
        let key = LinkKey::new([3; 32]);
        let sig = key.sign(&digest('a'), 100);
        assert_eq!(sig.len(), 64);
        assert_eq!(key.check(&digest('a'), 100, &sig, 0), Ok(()));
        assert_eq!(key.check(&digest('a'), 100, &sig, 99_999_999), Ok(()));
        assert_eq!(
            key.check(&digest('a'), 100, &sig, 100_000_000),
            Err(LinkRefusal::Expired)
        );
    }

    #[test]
    fn a_changed_digest_expiry_key_or_signature_is_refused() {
        let key = LinkKey::new([3; 32]);
        let sig = key.sign(&digest('a'), 100);
        let bad = Err(LinkRefusal::BadSignature);
        assert_eq!(key.check(&digest('b'), 100, &sig, 0), bad);
        assert_eq!(key.check(&digest('a'), 101, &sig, 0), bad);
        assert_eq!(LinkKey::new([4; 32]).check(&digest('a'), 100, &sig, 0), bad);
        assert_eq!(key.check(&digest('a'), 100, &sig[..63], 0), bad);
        let mut flipped = sig.into_bytes();
        flipped[63] = if flipped[63] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(key.check(&digest('a'), 100, &flipped, 0), bad);
        assert_eq!(format!("{key:?}"), "LinkKey(<redacted>)");
    }
}

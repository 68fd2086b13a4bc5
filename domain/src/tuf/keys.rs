//! Ed25519 keys as TUF writes them: `{"keytype":"ed25519","scheme":"ed25519","keyval":{"public":
//! "<hex>"}}`, identified by the SHA-256 of that object's canonical JSON.

use ring::signature::{Ed25519KeyPair, KeyPair as _, UnparsedPublicKey, ED25519};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use super::{hex, malformed, unhex, TufError};
use crate::tuf::metadata::canonical;

/// A public key: what a device is provisioned with and what metadata names.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.key_id())
    }
}

impl PublicKey {
    /// The key in TUF's key format.
    #[must_use]
    pub fn to_tuf(&self) -> Value {
        json!({"keytype": "ed25519", "scheme": "ed25519", "keyval": {"public": hex(&self.0)}})
    }

    /// A key in TUF's key format (Ed25519 only).
    ///
    /// # Errors
    /// [`TufError::Malformed`] for another key type or a public key that is not 32 bytes.
    pub fn from_tuf(v: &Value) -> Result<Self, TufError> {
        if v.get("keytype").and_then(Value::as_str) != Some("ed25519")
            || v.get("scheme").and_then(Value::as_str) != Some("ed25519")
        {
            return Err(malformed("key", "only ed25519 keys are accepted"));
        }
        let public = v
            .pointer("/keyval/public")
            .and_then(Value::as_str)
            .and_then(unhex)
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| malformed("key", "keyval.public is not 64 hexadecimal digits"))?;
        Ok(PublicKey(public))
    }

    /// The key id: the SHA-256 of the key's canonical JSON, in hexadecimal.
    #[must_use]
    pub fn key_id(&self) -> String {
        hex(&Sha256::digest(canonical(&self.to_tuf())))
    }

    /// Whether `signature` (hexadecimal) is this key's signature of `message`.
    #[must_use]
    pub fn verifies(&self, message: &[u8], signature: &str) -> bool {
        unhex(signature).is_some_and(|sig| {
            UnparsedPublicKey::new(&ED25519, self.0)
                .verify(message, &sig)
                .is_ok()
        })
    }
}

/// A private key. `Debug` shows its key id alone.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    seed: [u8; 32],
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({})", self.public().key_id())
    }
}

impl SigningKey {
    /// The key of a 32-byte seed (a secret kept by the server, or read from a key file).
    ///
    /// # Errors
    /// [`TufError::Key`] if `ring` refuses the seed.
    pub fn from_seed(seed: [u8; 32]) -> Result<Self, TufError> {
        let pair =
            Ed25519KeyPair::from_seed_unchecked(&seed).map_err(|e| TufError::Key(e.to_string()))?;
        Ok(SigningKey { pair, seed })
    }

    /// A new key from the operating system's random source.
    ///
    /// # Errors
    /// [`TufError::Key`] if no randomness is available.
    pub fn generate() -> Result<Self, TufError> {
        use ring::rand::SecureRandom as _;
        let mut seed = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| TufError::Key("no random source".into()))?;
        Self::from_seed(seed)
    }

    #[must_use]
    pub fn public(&self) -> PublicKey {
        let mut b = [0u8; 32];
        b.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey(b)
    }

    /// The signature of `message`, in hexadecimal.
    #[must_use]
    pub fn sign(&self, message: &[u8]) -> String {
        hex(self.pair.sign(message).as_ref())
    }

    /// The key file: the TUF key object with the private seed beside the public key.
    #[must_use]
    pub fn to_file(&self) -> String {
        let mut v = self.public().to_tuf();
        v["keyval"]["private"] = Value::String(hex(&self.seed));
        format!("{v:#}\n")
    }

    /// A key file's key.
    ///
    /// # Errors
    /// [`TufError::Malformed`] if it is not a key file this wrote, or its halves do not match.
    pub fn from_file(text: &str) -> Result<Self, TufError> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| malformed("key file", e.to_string()))?;
        let public = PublicKey::from_tuf(&v)?;
        let seed = v
            .pointer("/keyval/private")
            .and_then(Value::as_str)
            .and_then(unhex)
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| malformed("key file", "keyval.private is not 64 hexadecimal digits"))?;
        let key = Self::from_seed(seed)?;
        if key.public() != public {
            return Err(malformed(
                "key file",
                "the public key is not the private key's",
            ));
        }
        Ok(key)
    }
}

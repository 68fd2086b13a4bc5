//! TUF metadata: the signed envelope, the four top-level roles, and thresholds.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{format_time, malformed, parse_time, PublicKey, SigningKey, TufError};

/// The TUF specification version this writes (python-tuf accepts any 1.x).
pub const SPEC_VERSION: &str = "1.0.31";

/// The top-level roles, in the order root names them.
pub const ROLES: [&str; 4] = ["root", "targets", "snapshot", "timestamp"];

/// OLPC canonical JSON, the bytes TUF signs; empty for a document with a float, which it
/// cannot write ([`Signed::sign`] signs no such document and [`Signed::verify`] accepts none).
#[must_use]
pub fn canonical(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    let mut ser =
        serde_json::Serializer::with_formatter(&mut out, olpc_cjson::CanonicalFormatter::new());
    // Only floats fail, and nothing here writes one; a float read from a document makes the
    // bytes empty, so no signature over them verifies.
    if v.serialize(&mut ser).is_err() {
        return Vec::new();
    }
    out
}

/// One signature of a metadata file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    pub keyid: String,
    pub sig: String,
}

/// A metadata file: what is signed and its signatures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Signed {
    pub signatures: Vec<Signature>,
    pub signed: Value,
}

/// The fields every role's metadata has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub version: u64,
    /// Seconds since the epoch.
    pub expires: i64,
}

impl Signed {
    /// `signed`, signed by each of `keys`; by none when it has a float, which canonical JSON
    /// cannot write (no key ever signs the empty bytes [`canonical`] gives it).
    #[must_use]
    pub fn sign(signed: Value, keys: &[&SigningKey]) -> Self {
        let bytes = canonical(&signed);
        let keys = if bytes.is_empty() { &[][..] } else { keys };
        Signed {
            signatures: keys
                .iter()
                .map(|k| Signature {
                    keyid: k.public().key_id(),
                    sig: k.sign(&bytes),
                })
                .collect(),
            signed,
        }
    }

    /// A metadata file's JSON.
    ///
    /// # Errors
    /// [`TufError::Malformed`] if it is not a signed envelope.
    pub fn parse(bytes: &[u8]) -> Result<Self, TufError> {
        serde_json::from_slice(bytes).map_err(|e| malformed("metadata", e.to_string()))
    }

    /// The file as served.
    #[must_use]
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Version and expiry, once `_type` is `role` and the specification version is 1.x.
    ///
    /// # Errors
    /// [`TufError::Malformed`] for another type, another major version or missing fields.
    pub fn header(&self, role: &str) -> Result<Header, TufError> {
        let s = &self.signed;
        if s.get("_type").and_then(Value::as_str) != Some(role) {
            return Err(malformed("metadata", format!("_type is not {role:?}")));
        }
        let spec = s.get("spec_version").and_then(Value::as_str).unwrap_or("");
        if spec.split('.').next() != Some("1") {
            return Err(malformed(
                "metadata",
                format!("spec_version {spec:?} is not 1.x"),
            ));
        }
        let version = s
            .get("version")
            .and_then(Value::as_u64)
            .filter(|v| *v >= 1)
            .ok_or_else(|| malformed("metadata", "version is not a positive integer"))?;
        let expires = parse_time(s.get("expires").and_then(Value::as_str).unwrap_or(""))?;
        Ok(Header { version, expires })
    }

    /// Checks that enough of the keys `root` gives `role` signed this: distinct keys, each
    /// counted once, at least the role's threshold.
    ///
    /// # Errors
    /// [`TufError::Threshold`] when too few valid signatures are present.
    pub fn verify(&self, root: &Root, role: &str) -> Result<(), TufError> {
        let Some(rk) = root.roles.get(role) else {
            return Err(malformed("root", format!("no {role} role")));
        };
        let bytes = canonical(&self.signed);
        if bytes.is_empty() {
            return Err(malformed("metadata", "not canonical JSON (a float)"));
        }
        let mut counted = BTreeSet::new();
        for s in &self.signatures {
            if counted.contains(&s.keyid) || !rk.keyids.contains(&s.keyid) {
                continue;
            }
            if let Some(key) = root.keys.get(&s.keyid) {
                if key.verifies(&bytes, &s.sig) {
                    counted.insert(s.keyid.clone());
                }
            }
        }
        if counted.len() < rk.threshold as usize {
            return Err(TufError::Threshold {
                role: role.to_owned(),
                valid: counted.len(),
                threshold: rk.threshold,
            });
        }
        Ok(())
    }

    /// Fails with [`TufError::Expired`] if `role`'s metadata expired before `now` (seconds).
    ///
    /// # Errors
    /// As said, and whatever [`Signed::header`] finds.
    pub fn check_fresh(&self, role: &str, now: i64) -> Result<Header, TufError> {
        let h = self.header(role)?;
        if h.expires <= now {
            return Err(TufError::Expired {
                role: role.to_owned(),
                expires: format_time(h.expires),
            });
        }
        Ok(h)
    }
}

/// The keys and threshold root gives a role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleKeys {
    pub keyids: Vec<String>,
    pub threshold: u32,
}

/// A parsed root: the keys of every role.
#[derive(Debug, Clone, PartialEq)]
pub struct Root {
    pub version: u64,
    pub expires: i64,
    pub keys: BTreeMap<String, PublicKey>,
    pub roles: BTreeMap<String, RoleKeys>,
}

impl Root {
    /// The `signed` part of a root: `root_keys` with `root_threshold`, `targets_keys` with
    /// `targets_threshold`, `online` alone for snapshot and timestamp; consistent snapshots on
    /// (every version of every file is kept under its version: caches never mix them).
    #[must_use]
    pub fn build(
        version: u64,
        expires: i64,
        root: (&[PublicKey], u32),
        targets: (&[PublicKey], u32),
        online: PublicKey,
    ) -> Value {
        let mut keys = serde_json::Map::new();
        for k in root.0.iter().chain(targets.0).chain([&online]) {
            keys.insert(k.key_id(), k.to_tuf());
        }
        let ids = |ks: &[PublicKey]| ks.iter().map(PublicKey::key_id).collect::<Vec<_>>();
        json!({
            "_type": "root",
            "spec_version": SPEC_VERSION,
            "version": version,
            "expires": format_time(expires),
            "consistent_snapshot": true,
            "keys": keys,
            "roles": {
                "root": {"keyids": ids(root.0), "threshold": root.1},
                "targets": {"keyids": ids(targets.0), "threshold": targets.1},
                "snapshot": {"keyids": [online.key_id()], "threshold": 1},
                "timestamp": {"keyids": [online.key_id()], "threshold": 1},
            }
        })
    }

    /// A root's keys and roles (its signatures are checked by [`Root::accept`]).
    ///
    /// # Errors
    /// [`TufError::Malformed`] for a missing role, a threshold below one or above the number
    /// of its keys, a key id that names no key.
    pub fn parse(m: &Signed) -> Result<Self, TufError> {
        let h = m.header("root")?;
        let s = &m.signed;
        let mut keys = BTreeMap::new();
        for (id, k) in s
            .get("keys")
            .and_then(Value::as_object)
            .ok_or_else(|| malformed("root", "no keys"))?
        {
            let key = PublicKey::from_tuf(k)?;
            // An id is its key's: two ids for one key would let one holder meet a threshold
            // of two, and a role could name an id whose key is another.
            if *id != key.key_id() {
                return Err(malformed("root", format!("key id {id} is not its key's")));
            }
            keys.insert(id.clone(), key);
        }
        let mut roles = BTreeMap::new();
        for role in ROLES {
            let r = s
                .pointer(&format!("/roles/{role}"))
                .ok_or_else(|| malformed("root", format!("no {role} role")))?;
            let keyids: Vec<String> = r
                .get("keyids")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            let threshold = r
                .get("threshold")
                .and_then(Value::as_u64)
                .and_then(|t| u32::try_from(t).ok())
                .unwrap_or(0);
            if threshold == 0 || threshold as usize > keyids.len() {
                return Err(malformed(
                    "root",
                    format!("{role} threshold {threshold} with {} key(s)", keyids.len()),
                ));
            }
            if let Some(id) = keyids.iter().find(|id| !keys.contains_key(*id)) {
                return Err(malformed("root", format!("{role} names unknown key {id}")));
            }
            roles.insert(role.to_owned(), RoleKeys { keyids, threshold });
        }
        Ok(Root {
            version: h.version,
            expires: h.expires,
            keys,
            roles,
        })
    }

    /// Accepts `new` as the next root after `current` (`None`: the first, trusted on first
    /// use by whoever installs it): the next version, signed by a threshold of the current
    /// root's root keys (rotation) and of its own, not expired at `now`.
    ///
    /// # Errors
    /// The first check that fails.
    pub fn accept(current: Option<&Root>, new: &Signed, now: i64) -> Result<Root, TufError> {
        let root = Root::next(current, new)?;
        new.check_fresh("root", now)?;
        Ok(root)
    }

    /// As [`Root::accept`] without the expiry: a client following a chain of roots checks the
    /// expiry of the last one only (TUF 5.3), so a device away for longer than a root's life
    /// still catches up.
    ///
    /// # Errors
    /// The first check that fails.
    pub fn next(current: Option<&Root>, new: &Signed) -> Result<Root, TufError> {
        let root = Root::parse(new)?;
        let expected = current.map_or(1, |c| c.version + 1);
        if root.version != expected {
            return Err(TufError::Version {
                role: "root".into(),
                got: root.version,
                expected: expected.to_string(),
            });
        }
        if let Some(c) = current {
            new.verify(c, "root")?;
        }
        new.verify(&root, "root")?;
        Ok(root)
    }

    /// The key ids of `role`.
    #[must_use]
    pub fn keyids(&self, role: &str) -> &[String] {
        self.roles.get(role).map_or(&[], |r| r.keyids.as_slice())
    }
}

/// One target of the targets role: an artifact by name, length and hash, with the release's
/// facts in `custom` (version, models, hardware revisions).
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub name: String,
    pub length: u64,
    pub sha256: String,
    pub custom: Value,
}

impl Target {
    fn to_json(&self) -> Value {
        json!({"length": self.length, "hashes": {"sha256": self.sha256}, "custom": self.custom})
    }
}

/// The `signed` part of a targets file.
#[must_use]
pub fn targets_json(version: u64, expires: i64, targets: &[Target]) -> Value {
    let map: serde_json::Map<String, Value> = targets
        .iter()
        .map(|t| (t.name.clone(), t.to_json()))
        .collect();
    json!({"_type": "targets", "spec_version": SPEC_VERSION, "version": version,
           "expires": format_time(expires), "targets": map})
}

/// The targets a targets file lists.
///
/// # Errors
/// [`TufError::Malformed`] for a target without a length or a SHA-256.
pub fn targets_of(signed: &Value) -> Result<BTreeMap<String, Target>, TufError> {
    let mut out = BTreeMap::new();
    let Some(map) = signed.get("targets").and_then(Value::as_object) else {
        return Err(malformed("targets", "no targets"));
    };
    for (name, t) in map {
        let length = t
            .get("length")
            .and_then(Value::as_u64)
            .ok_or_else(|| malformed("targets", format!("{name}: no length")))?;
        let sha256 = t
            .pointer("/hashes/sha256")
            .and_then(Value::as_str)
            .ok_or_else(|| malformed("targets", format!("{name}: no sha256")))?
            .to_owned();
        let custom = t.get("custom").cloned().unwrap_or(Value::Null);
        out.insert(
            name.clone(),
            Target {
                name: name.clone(),
                length,
                sha256,
                custom,
            },
        );
    }
    Ok(out)
}

/// The `signed` part of a snapshot naming targets version `targets_version`.
#[must_use]
pub fn snapshot_json(version: u64, expires: i64, targets_version: u64) -> Value {
    json!({"_type": "snapshot", "spec_version": SPEC_VERSION, "version": version,
           "expires": format_time(expires), "meta": {"targets.json": {"version": targets_version}}})
}

/// The `signed` part of a timestamp naming snapshot version `snapshot_version`.
#[must_use]
pub fn timestamp_json(version: u64, expires: i64, snapshot_version: u64) -> Value {
    json!({"_type": "timestamp", "spec_version": SPEC_VERSION, "version": version,
           "expires": format_time(expires), "meta": {"snapshot.json": {"version": snapshot_version}}})
}

/// The version a snapshot or timestamp gives `file` (`targets.json`, `snapshot.json`).
///
/// # Errors
/// [`TufError::Malformed`] if it names none.
pub fn meta_version(signed: &Value, file: &str) -> Result<u64, TufError> {
    signed
        .get("meta")
        .and_then(|m| m.get(file))
        .and_then(|f| f.get("version"))
        .and_then(Value::as_u64)
        .ok_or_else(|| malformed("metadata", format!("meta names no version of {file}")))
}

//! The director's statements, and what a device checks before it installs (Uptane).
//!
//! The image repository (TUF, offline release keys) says which images exist; the director says,
//! per device and per command, "device D shall install target T (length, hash) for hardware H;
//! this is statement number N; valid until E", signed with the director's key. A device accepts
//! an update only if both agree, the counter is above every one it has seen (a replayed older
//! statement is refused), the statement has not expired (freeze), and it is for itself and its
//! hardware (mix-and-match).

use serde_json::{json, Value};

use super::metadata::{meta_version, targets_of, Root, Signed, Target};
use super::{format_time, malformed, parse_time, PublicKey, SigningKey, TufError};

/// The target a statement names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectedTarget {
    /// The target's name in the image repository's targets metadata.
    pub name: String,
    pub length: u64,
    pub sha256: String,
    /// The hardware the image is meant for: the device's model.
    pub hardware_id: String,
}

/// One statement of the director.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub device_id: String,
    pub target: DirectedTarget,
    /// Grows with every statement the director signs.
    pub counter: u64,
    /// Seconds since the epoch.
    pub expires: i64,
}

impl Statement {
    fn to_json(&self) -> Value {
        json!({
            "_type": "director-statement",
            "device_id": self.device_id,
            "target": {
                "name": self.target.name,
                "length": self.target.length,
                "hashes": {"sha256": self.target.sha256},
                "hardware_id": self.target.hardware_id,
            },
            "counter": self.counter,
            "expires": format_time(self.expires),
        })
    }

    /// The statement signed by `key`, as the compact JSON an update command carries.
    #[must_use]
    pub fn sign(&self, key: &SigningKey) -> String {
        String::from_utf8(Signed::sign(self.to_json(), &[key]).to_bytes()).unwrap_or_default()
    }

    /// A statement, once `director` is found to have signed it.
    ///
    /// # Errors
    /// [`TufError::Threshold`] without the director's signature; [`TufError::Malformed`] for
    /// a statement that lacks a field.
    pub fn verify(text: &str, director: &PublicKey) -> Result<Self, TufError> {
        let m = Signed::parse(text.as_bytes())?;
        let bytes = super::metadata::canonical(&m.signed);
        let id = director.key_id();
        if bytes.is_empty()
            || !m
                .signatures
                .iter()
                .any(|s| s.keyid == id && director.verifies(&bytes, &s.sig))
        {
            return Err(TufError::Threshold {
                role: "director".into(),
                valid: 0,
                threshold: 1,
            });
        }
        let s = &m.signed;
        if s.get("_type").and_then(Value::as_str) != Some("director-statement") {
            return Err(malformed(
                "director statement",
                "_type is not director-statement",
            ));
        }
        let text = |p: &str| {
            s.pointer(p)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| malformed("director statement", format!("no {p}")))
        };
        let number = |p: &str| {
            s.pointer(p)
                .and_then(Value::as_u64)
                .ok_or_else(|| malformed("director statement", format!("no {p}")))
        };
        Ok(Statement {
            device_id: text("/device_id")?,
            target: DirectedTarget {
                name: text("/target/name")?,
                length: number("/target/length")?,
                sha256: text("/target/hashes/sha256")?,
                hardware_id: text("/target/hardware_id")?,
            },
            counter: number("/counter")?,
            expires: parse_time(&text("/expires")?)?,
        })
    }
}

/// What a device was provisioned with and remembers.
#[derive(Debug, Clone)]
pub struct DeviceTrust {
    pub device_id: String,
    /// The device's model: the hardware id it accepts images for.
    pub hardware_id: String,
    pub hardware_rev: Option<String>,
    pub director: PublicKey,
    /// The highest statement counter the device has accepted.
    pub last_counter: u64,
}

impl DeviceTrust {
    /// Checks a statement from an update command at `now` (seconds).
    ///
    /// # Errors
    /// The first check that fails, with a reason a device reports.
    pub fn check_statement(&self, text: &str, now: i64) -> Result<Statement, TufError> {
        let st = Statement::verify(text, &self.director)?;
        if st.device_id != self.device_id {
            return Err(TufError::Mismatch(format!(
                "the director statement is for device {}, not this one",
                st.device_id
            )));
        }
        if st.target.hardware_id != self.hardware_id {
            return Err(TufError::Mismatch(format!(
                "the director statement's target is for hardware {}, not {}",
                st.target.hardware_id, self.hardware_id
            )));
        }
        if st.counter <= self.last_counter {
            return Err(TufError::Mismatch(format!(
                "director statement number {} is not above {}, the last accepted (a replay)",
                st.counter, self.last_counter
            )));
        }
        if st.expires <= now {
            return Err(TufError::Expired {
                role: "director statement".into(),
                expires: format_time(st.expires),
            });
        }
        Ok(st)
    }

    /// Checks the image repository's chain, timestamp → snapshot → targets, against `root`
    /// at `now`, and that its targets agree with the statement and allow this hardware.
    ///
    /// # Errors
    /// The first check that fails.
    pub fn check_image(
        &self,
        root: &Root,
        timestamp: &Signed,
        snapshot: &Signed,
        targets: &Signed,
        st: &Statement,
        now: i64,
    ) -> Result<Target, TufError> {
        timestamp.verify(root, "timestamp")?;
        timestamp.check_fresh("timestamp", now)?;
        snapshot.verify(root, "snapshot")?;
        let sh = snapshot.check_fresh("snapshot", now)?;
        let want = meta_version(&timestamp.signed, "snapshot.json")?;
        if sh.version != want {
            return Err(TufError::Version {
                role: "snapshot".into(),
                got: sh.version,
                expected: want.to_string(),
            });
        }
        targets.verify(root, "targets")?;
        let th = targets.check_fresh("targets", now)?;
        let want = meta_version(&snapshot.signed, "targets.json")?;
        if th.version != want {
            return Err(TufError::Version {
                role: "targets".into(),
                got: th.version,
                expected: want.to_string(),
            });
        }
        let all = targets_of(&targets.signed)?;
        let Some(t) = all.get(&st.target.name) else {
            return Err(TufError::Mismatch(format!(
                "the image repository has no target {}",
                st.target.name
            )));
        };
        if t.length != st.target.length || t.sha256 != st.target.sha256 {
            return Err(TufError::Mismatch(format!(
                "the director and the image repository disagree on target {}",
                t.name
            )));
        }
        let listed = |key: &str, value: &str| {
            t.custom
                .get(key)
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().any(|v| v.as_str() == Some(value)))
        };
        let any_rev = t
            .custom
            .get("hardware_revs")
            .and_then(Value::as_array)
            .is_none_or(Vec::is_empty);
        if !listed("models", &self.hardware_id)
            || !(any_rev
                || self
                    .hardware_rev
                    .as_deref()
                    .is_some_and(|r| listed("hardware_revs", r)))
        {
            return Err(TufError::Mismatch(format!(
                "target {} is not signed for this hardware ({}{})",
                t.name,
                self.hardware_id,
                self.hardware_rev
                    .as_deref()
                    .map(|r| format!(" revision {r}"))
                    .unwrap_or_default()
            )));
        }
        Ok(t.clone())
    }
}

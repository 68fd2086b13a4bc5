//! The release catalogue (ADR 0038): a release is an image (artifact digest and length) with
//! its version and the models and hardware revisions it is for. It is registered as a draft,
//! published once signed targets metadata that lists it exactly verifies against the image
//! repository's root, and deprecated when it must no longer be rolled out.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::digest::Sha256;
use crate::events::ReleaseRegistered;
use crate::tuf::metadata::{targets_of, Root, Signed, Target};
use crate::tuf::TufError;
use crate::version::SemVer;

/// The longest release id.
pub const MAX_RELEASE_ID_LEN: usize = 64;
/// At most this many models or hardware revisions per release.
pub const MAX_COMPATIBLE: usize = 64;
/// The longest model or hardware revision name, and the longest notes.
pub const MAX_NAME_LEN: usize = 128;
pub const MAX_NOTES_LEN: usize = 4096;

/// Why a registration or a state change is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseError {
    #[error("release_id: 1 to {MAX_RELEASE_ID_LEN} letters, digits, '.', '_' or '-', starting with a letter or digit")]
    Id,
    #[error("version: {0}")]
    Version(String),
    #[error("sha256: {0}")]
    Sha256(String),
    #[error("length: must be positive")]
    Length,
    #[error("{0}: 1 to {MAX_COMPATIBLE} distinct names of 1 to {MAX_NAME_LEN} characters, not blank, without NUL")]
    Names(&'static str),
    #[error("notes: at most {MAX_NOTES_LEN} characters, without NUL")]
    Notes,
    #[error("a {from} release cannot become {to}")]
    Transition {
        from: ReleaseState,
        to: ReleaseState,
    },
}

/// Whether `id` is a release id.
#[must_use]
pub fn is_release_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_RELEASE_ID_LEN
        && id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A release's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReleaseState {
    Draft,
    Published,
    Deprecated,
}

impl ReleaseState {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseState::Draft => "draft",
            ReleaseState::Published => "published",
            ReleaseState::Deprecated => "deprecated",
        }
    }

    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "draft" => Some(ReleaseState::Draft),
            "published" => Some(ReleaseState::Published),
            "deprecated" => Some(ReleaseState::Deprecated),
            _ => None,
        }
    }

    /// The one way through: draft → published → deprecated (a draft may be deprecated
    /// without ever being published); nothing goes back.
    ///
    /// # Errors
    /// [`ReleaseError::Transition`] for every other change.
    pub fn to(self, next: ReleaseState) -> Result<ReleaseState, ReleaseError> {
        use ReleaseState::{Deprecated, Draft, Published};
        match (self, next) {
            (Draft, Published | Deprecated) | (Published, Deprecated) => Ok(next),
            (from, to) => Err(ReleaseError::Transition { from, to }),
        }
    }
}

impl std::fmt::Display for ReleaseState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A registration as a client writes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterIn {
    pub release_id: String,
    pub version: String,
    pub models: Vec<String>,
    #[serde(default)]
    pub hardware_revs: Vec<String>,
    pub sha256: String,
    #[serde(deserialize_with = "crate::json_number::int")]
    pub length: i64,
    #[serde(default)]
    pub notes: String,
}

fn names(field: &'static str, v: &[String], at_least_one: bool) -> Result<(), ReleaseError> {
    let mut seen = std::collections::BTreeSet::new();
    let bad = (at_least_one && v.is_empty())
        || v.len() > MAX_COMPATIBLE
        || v.iter().any(|n| {
            n.trim().is_empty()
                || n.chars().count() > MAX_NAME_LEN
                || n.contains('\0')
                || !seen.insert(n.as_str())
        });
    if bad {
        return Err(ReleaseError::Names(field));
    }
    Ok(())
}

impl RegisterIn {
    /// The registration event, every field checked.
    ///
    /// # Errors
    /// The first field that is not right.
    pub fn parse(self, registered_by: &str) -> Result<ReleaseRegistered, ReleaseError> {
        if !is_release_id(&self.release_id) {
            return Err(ReleaseError::Id);
        }
        SemVer::try_from(self.version.as_str())
            .map_err(|e| ReleaseError::Version(e.to_string()))?;
        let sha256 = Sha256::try_from(self.sha256.as_str())
            .map_err(|e| ReleaseError::Sha256(e.to_string()))?;
        if self.length <= 0 {
            return Err(ReleaseError::Length);
        }
        names("models", &self.models, true)?;
        names("hardware_revs", &self.hardware_revs, false)?;
        if self.notes.chars().count() > MAX_NOTES_LEN || self.notes.contains('\0') {
            return Err(ReleaseError::Notes);
        }
        Ok(ReleaseRegistered {
            release_id: self.release_id,
            version: self.version,
            models: self.models,
            hardware_revs: self.hardware_revs,
            sha256: sha256.to_string(),
            length: self.length,
            notes: self.notes,
            registered_by: registered_by.to_owned(),
        })
    }
}

/// The target the image repository must list for `r`: named by the release id, with the
/// release's facts in `custom`, which devices check (models, hardware revisions).
#[must_use]
pub fn target(r: &ReleaseRegistered) -> Target {
    Target {
        name: r.release_id.clone(),
        length: u64::try_from(r.length).unwrap_or(0),
        sha256: r.sha256.clone(),
        custom: json!({
            "version": r.version,
            "models": r.models,
            "hardware_revs": r.hardware_revs,
        }),
    }
}

/// Checks targets metadata offered to publish `r`: signed by a threshold of the targets keys
/// `root` names, not expired at `now`, the version after `current` (the targets version the
/// repository serves, if any), listing `r` exactly as [`target`] writes it, and keeping every
/// target `current` lists unchanged (a release once published stays installable).
///
/// # Errors
/// The first check that fails.
pub fn check_targets(
    r: &ReleaseRegistered,
    offered: &Signed,
    root: &Root,
    current: Option<(u64, &BTreeMap<String, Target>)>,
    now: i64,
) -> Result<u64, TufError> {
    let h = offered.header("targets")?;
    offered.verify(root, "targets")?;
    offered.check_fresh("targets", now)?;
    let expected = current.map_or(1, |(v, _)| v + 1);
    if h.version != expected {
        return Err(TufError::Version {
            role: "targets".into(),
            got: h.version,
            expected: expected.to_string(),
        });
    }
    let listed = targets_of(&offered.signed)?;
    let want = target(r);
    match listed.get(&want.name) {
        Some(t) if *t == want => {}
        Some(_) => {
            return Err(TufError::Mismatch(format!(
                "target {} differs from the release (length, sha256, version, models and \
                 hardware_revs must be the catalogue's)",
                want.name
            )))
        }
        None => {
            return Err(TufError::Mismatch(format!(
                "the targets metadata does not list {}",
                want.name
            )))
        }
    }
    let before = current.map(|(_, b)| b);
    if before.is_some_and(|b| b.contains_key(&want.name)) {
        return Err(TufError::Mismatch(format!(
            "target {} is listed already: a published image is never replaced",
            want.name
        )));
    }
    for t in listed.values() {
        match before.and_then(|b| b.get(&t.name)) {
            _ if t.name == want.name => {}
            Some(was) if was == t => {}
            Some(_) => {
                return Err(TufError::Mismatch(format!(
                    "target {} of the current targets metadata is changed",
                    t.name
                )))
            }
            None => {
                return Err(TufError::Mismatch(format!(
                    "target {} is neither listed already nor the release being published",
                    t.name
                )))
            }
        }
    }
    if let Some(gone) = before.and_then(|b| b.values().find(|t| !listed.contains_key(&t.name))) {
        return Err(TufError::Mismatch(format!(
            "target {} of the current targets metadata is missing",
            gone.name
        )));
    }
    Ok(h.version)
}

/// Checks targets metadata offered to renew the current one before it expires: signed like any
/// targets, the next version, fresh, and listing exactly the current targets.
///
/// # Errors
/// The first check that fails.
pub fn check_renewal(
    offered: &Signed,
    root: &Root,
    current: (u64, &BTreeMap<String, Target>),
    now: i64,
) -> Result<u64, TufError> {
    let h = offered.header("targets")?;
    offered.verify(root, "targets")?;
    offered.check_fresh("targets", now)?;
    if h.version != current.0 + 1 {
        return Err(TufError::Version {
            role: "targets".into(),
            got: h.version,
            expected: (current.0 + 1).to_string(),
        });
    }
    if targets_of(&offered.signed)? != *current.1 {
        return Err(TufError::Mismatch(
            "a renewal lists exactly the current targets (a new release is published instead)"
                .into(),
        ));
    }
    Ok(h.version)
}

/// The compatible models of a rollout by catalogue release: the release's, narrowed to the
/// request's when it names some. Empty when none is left (nothing may be targeted).
#[must_use]
pub fn compatible_models(release: &[String], requested: &[String]) -> Vec<String> {
    if requested.is_empty() {
        return release.to_vec();
    }
    requested
        .iter()
        .filter(|m| release.contains(m))
        .cloned()
        .collect()
}

/// Whether a device on `current` may be given `release` (its version): an upgrade, a device
/// that never reported a version, or anything when downgrades are allowed. A version that does
/// not parse is not known to be older, so it needs `allow_downgrade` too.
#[must_use]
pub fn allowed(current: &str, release: &str, allow_downgrade: bool) -> bool {
    if allow_downgrade {
        return true;
    }
    if current.is_empty() {
        return true;
    }
    match (SemVer::try_from(current), SemVer::try_from(release)) {
        (Ok(c), Ok(r)) => c < r,
        _ => false,
    }
}

/// The catalogue's view of a release as the API answers it.
#[must_use]
pub fn to_json(r: &ReleaseRegistered, state: ReleaseState, targets_version: Option<i64>) -> Value {
    json!({
        "release_id": r.release_id, "version": r.version, "models": r.models,
        "hardware_revs": r.hardware_revs, "sha256": r.sha256, "length": r.length,
        "notes": r.notes, "registered_by": r.registered_by, "state": state.as_str(),
        "targets_version": targets_version,
    })
}

/// The OpenAPI schema of a registration, from the limits [`RegisterIn::parse`] checks.
impl utoipa::PartialSchema for RegisterIn {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let names = |min| {
            crate::json_schema::array_of(
                crate::json_schema::text(MAX_NAME_LEN).build(),
                Some(MAX_COMPATIBLE),
            )
            .min_items(Some(min))
            .unique_items(true)
        };
        crate::json_schema::closed_object("A release to register as a draft.")
            .property(
                "release_id",
                crate::json_schema::release_id().description(Some(
                    "Its name in the catalogue and its target name in the image repository",
                )),
            )
            .required("release_id")
            .property("version", crate::json_schema::semver())
            .required("version")
            .property("models", names(1))
            .required("models")
            .property(
                "hardware_revs",
                names(0).description(Some("Empty or absent: every revision of those models")),
            )
            .property("sha256", crate::json_schema::sha256())
            .required("sha256")
            .property("length", crate::json_schema::integer(&(1..=i64::MAX)))
            .required("length")
            .property(
                "notes",
                utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .max_length(Some(MAX_NOTES_LEN))
                    .pattern(Some(r"^[^\u0000]*$")),
            )
            .into()
    }
}
impl utoipa::ToSchema for RegisterIn {}

#[cfg(test)]
mod tests;

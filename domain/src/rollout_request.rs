//! Rollout requests: [`RolloutIn`] is the request as a client writes it (JSON through serde,
//! unknown fields refused, left-out strategy fields filled from [`Strategy::default`]);
//! [`RolloutRequest::parse`] checks every field and yields a request that is valid by
//! construction, which becomes the `UpdateRequested` event. A refused request names the first
//! bad field, in the order the fields are checked below.

use serde::Deserialize;
use thiserror::Error;

use crate::digest::{Sha256, Sha256Error};
use crate::events::{
    MaintenanceWindow, Release, RollbackPolicy, Strategy, TargetSelector, UpdateRequested,
};
use crate::ids::{IdError, RolloutId};
use crate::version::{SemVer, SemVerError};

/// The longest artifact URI, in bytes.
pub const MAX_ARTIFACT_URI_LEN: usize = 2048;
/// The largest artifact, in bytes (64 GiB).
pub const MAX_SIZE_BYTES: i64 = 64 * 1024 * 1024 * 1024;
/// The longest signature, in bytes.
pub const MAX_SIGNATURE_LEN: usize = 8192;
/// The longest selector value and requester name, in bytes.
pub const MAX_NAME_LEN: usize = 256;
/// The most waves a strategy may have.
pub const MAX_WAVES: usize = 20;
/// The latest scheduled start, in milliseconds since the epoch (9999-12-31T23:59:59Z).
pub const MAX_SCHEDULED_START_MS: i64 = 253_402_300_799_000;

/// The ranges of a strategy's numbers, inclusive; the OpenAPI schema is built from them too.
pub mod limits {
    use std::ops::RangeInclusive;

    pub const SIZE_BYTES: RangeInclusive<i64> = 1..=super::MAX_SIZE_BYTES;
    pub const THRESHOLD_PCT: RangeInclusive<f64> = 0.0..=100.0;
    pub const MIN_DEVICES_FOR_VERDICT: RangeInclusive<i64> = 1..=1_000_000;
    pub const DEVICE_TIMEOUT_S: RangeInclusive<i64> = 10..=7 * 86_400;
    pub const MAX_RETRIES: RangeInclusive<i64> = 0..=10;
    pub const RETRY_BACKOFF_S: RangeInclusive<i64> = 0..=86_400;
    pub const MAX_IN_FLIGHT: RangeInclusive<i64> = 1..=1_000_000;
    pub const HEALTH_GATE_WINDOW_S: RangeInclusive<i64> = 0..=86_400;
    pub const SCHEDULED_START_MS: RangeInclusive<i64> = 1..=super::MAX_SCHEDULED_START_MS;
    pub const START_MINUTE: RangeInclusive<i64> = 0..=1439;
    pub const DURATION_MINUTES: RangeInclusive<i64> = 1..=1440;
}

/// The rollback policies by the names a request uses.
pub(crate) const ROLLBACK_POLICIES: [(&str, RollbackPolicy); 3] = [
    ("none", RollbackPolicy::None),
    ("on_abort", RollbackPolicy::OnAbort),
    ("on_failure", RollbackPolicy::OnFailure),
];

/// A rollout request as written by a client.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutIn {
    /// Optional, for idempotent retries by the caller; a new UUID otherwise.
    pub rollout_id: Option<String>,
    /// The release in full; or `release_id`, which the API resolves from the catalogue into this.
    /// Absent, not `null`, when not given (the document says exactly one of the two).
    #[serde(default, deserialize_with = "present")]
    pub release: Option<ReleaseIn>,
    /// A published release of the catalogue (ADR 0038).
    #[serde(default, deserialize_with = "present")]
    pub release_id: Option<String>,
    /// Lets devices on a newer version than the catalogue release be taken back to it.
    #[serde(default)]
    pub allow_downgrade: bool,
    pub selector: SelectorIn,
    #[serde(default)]
    pub strategy: StrategyIn,
}

/// A field that may be left out but, when given, is a value: `null` is refused.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseIn {
    pub version: String,
    pub artifact_uri: String,
    pub sha256: String,
    #[serde(deserialize_with = "crate::json_number::int")]
    pub size_bytes: i64,
    pub signature: String,
}

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SelectorIn {
    pub models: Vec<String>,
    pub sites: Vec<String>,
    pub tags: Vec<String>,
    pub current_versions: Vec<String>,
    pub device_ids: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowIn {
    #[serde(deserialize_with = "crate::json_number::int")]
    pub start_minute: i32,
    #[serde(deserialize_with = "crate::json_number::int")]
    pub duration_minutes: i32,
}

/// A strategy as written by a client: [`Strategy`] with the start in milliseconds and the
/// rollback policy by name. Every field left out takes [`Strategy::default`]'s value.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StrategyIn {
    pub waves_pct: Vec<f64>,
    pub success_threshold_pct: f64,
    pub failure_threshold_pct: f64,
    #[serde(deserialize_with = "crate::json_number::int")]
    pub min_devices_for_verdict: i32,
    #[serde(deserialize_with = "crate::json_number::int")]
    pub device_timeout_s: i64,
    #[serde(deserialize_with = "crate::json_number::int")]
    pub max_retries: i32,
    #[serde(deserialize_with = "crate::json_number::int")]
    pub retry_backoff_s: i64,
    #[serde(deserialize_with = "crate::json_number::int")]
    pub max_in_flight: i32,
    #[serde(deserialize_with = "crate::json_number::int")]
    pub health_gate_window_s: i64,
    /// Milliseconds since the epoch; absent: start now.
    #[serde(deserialize_with = "crate::json_number::opt_int")]
    pub scheduled_start_ms: Option<i64>,
    pub maintenance_window: Option<WindowIn>,
    /// `none`, `on_abort` or `on_failure`.
    pub rollback_policy: String,
}

impl Default for StrategyIn {
    fn default() -> Self {
        let s = Strategy::default();
        StrategyIn {
            waves_pct: s.waves_pct,
            success_threshold_pct: s.success_threshold_pct,
            failure_threshold_pct: s.failure_threshold_pct,
            min_devices_for_verdict: s.min_devices_for_verdict,
            device_timeout_s: s.device_timeout_s,
            max_retries: s.max_retries,
            retry_backoff_s: s.retry_backoff_s,
            max_in_flight: s.max_in_flight,
            health_gate_window_s: s.health_gate_window_s,
            scheduled_start_ms: s.scheduled_start.map(|us| us / 1000),
            maintenance_window: s.maintenance_window.map(|w| WindowIn {
                start_minute: w.start_minute,
                duration_minutes: w.duration_minutes,
            }),
            rollback_policy: ROLLBACK_POLICIES
                .iter()
                .find(|(_, p)| *p == s.rollback_policy)
                .map_or("", |(name, _)| name)
                .to_owned(),
        }
    }
}

/// Why a rollout request was refused. The message starts with the field's path.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum RequestError {
    #[error("release: give a release in full or a catalogue release_id, exactly one of them")]
    NoRelease,
    #[error("release.version: {0}")]
    Version(#[from] SemVerError),
    #[error("release.artifact_uri: must be an https:// URI of at most {MAX_ARTIFACT_URI_LEN} characters, or /v1/artifacts/<sha256> for otaledger's own artifact store")]
    ArtifactUri,
    #[error("release.sha256: {0}")]
    Sha256(#[from] Sha256Error),
    #[error("{field}: must be between {lo} and {hi}, got {got}")]
    OutOfRange {
        field: &'static str,
        lo: String,
        hi: String,
        got: String,
    },
    #[error("{field}: must be 1 to {max} characters")]
    Text { field: &'static str, max: usize },
    #[error(
        "selector: must name at least one of models, sites, tags, current_versions, device_ids"
    )]
    NoSelector,
    #[error("{field}: {source}")]
    Id {
        field: &'static str,
        source: IdError,
    },
    #[error("strategy.waves_pct: must list 1 to {MAX_WAVES} waves")]
    WaveCount,
    #[error("strategy.waves_pct: cumulative shares must be distinct and lie in (0, 100]")]
    WaveShares,
    #[error("strategy.rollback_policy: must be none, on_abort or on_failure, not {0:?}")]
    RollbackPolicy(String),
}

impl RequestError {
    /// The path of the refused field, as in the request (`release.sha256`, `strategy.waves_pct`).
    #[must_use]
    pub fn field(&self) -> &'static str {
        match self {
            RequestError::NoRelease => "release",
            RequestError::Version(_) => "release.version",
            RequestError::ArtifactUri => "release.artifact_uri",
            RequestError::Sha256(_) => "release.sha256",
            RequestError::OutOfRange { field, .. }
            | RequestError::Text { field, .. }
            | RequestError::Id { field, .. } => field,
            RequestError::NoSelector => "selector",
            RequestError::WaveCount | RequestError::WaveShares => "strategy.waves_pct",
            RequestError::RollbackPolicy(_) => "strategy.rollback_policy",
        }
    }
}

fn text(field: &'static str, v: &str, max: usize) -> Result<(), RequestError> {
    // Characters, not bytes: the limit the error message and the OpenAPI schema state.
    if v.trim().is_empty() || v.chars().count() > max {
        return Err(RequestError::Text { field, max });
    }
    Ok(())
}

/// Checks that `v` lies in `r` (integers are compared as `i64`).
fn range<T: PartialOrd + std::fmt::Display + Copy>(
    field: &'static str,
    v: T,
    r: &std::ops::RangeInclusive<T>,
) -> Result<(), RequestError> {
    if !r.contains(&v) {
        return Err(RequestError::OutOfRange {
            field,
            lo: r.start().to_string(),
            hi: r.end().to_string(),
            got: v.to_string(),
        });
    }
    Ok(())
}

/// An artifact URI of otaledger's own store: this prefix, then the release's SHA-256.
pub const ARTIFACT_STORE_PATH: &str = "/v1/artifacts/";

/// A release as requested, checked: a semantic version, an https artifact (or one of
/// otaledger's store) and its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseSpec {
    version: SemVer,
    artifact_uri: String,
    sha256: Sha256,
    size_bytes: i64,
    signature: String,
}

impl ReleaseSpec {
    /// Checks a release: version, artifact URI, digest, size and signature, in that order.
    pub fn parse(r: ReleaseIn) -> Result<Self, RequestError> {
        let version = SemVer::try_from(r.version)?;
        // otaledger's own store, by digest: devices fetch it from the server they report to
        // (ADR 0037; the API checks that the store holds the release's bytes).
        let stored = r
            .artifact_uri
            .strip_prefix(ARTIFACT_STORE_PATH)
            .map(Sha256::try_from);
        let https = r.artifact_uri.starts_with("https://")
            && r.artifact_uri.chars().count() <= MAX_ARTIFACT_URI_LEN
            && r.artifact_uri.len() > "https://".len();
        if !https && !matches!(stored, Some(Ok(_))) {
            return Err(RequestError::ArtifactUri);
        }
        let sha256 = Sha256::try_from(r.sha256)?;
        range("release.size_bytes", r.size_bytes, &limits::SIZE_BYTES)?;
        text("release.signature", &r.signature, MAX_SIGNATURE_LEN)?;
        Ok(ReleaseSpec {
            version,
            artifact_uri: r.artifact_uri,
            sha256,
            size_bytes: r.size_bytes,
            signature: r.signature,
        })
    }

    #[must_use]
    pub fn version(&self) -> &SemVer {
        &self.version
    }

    #[must_use]
    pub fn artifact_uri(&self) -> &str {
        &self.artifact_uri
    }

    #[must_use]
    pub fn sha256(&self) -> &Sha256 {
        &self.sha256
    }

    #[must_use]
    pub fn size_bytes(&self) -> i64 {
        self.size_bytes
    }

    #[must_use]
    pub fn signature(&self) -> &str {
        &self.signature
    }
}

impl From<ReleaseSpec> for Release {
    fn from(r: ReleaseSpec) -> Release {
        Release {
            version: r.version.into_string(),
            artifact_uri: r.artifact_uri,
            sha256: r.sha256.into_string(),
            size_bytes: r.size_bytes,
            signature: r.signature,
        }
    }
}

/// Checks a selector: it names something, and every value is a short name or a device id.
pub fn parse_selector(sel: SelectorIn) -> Result<TargetSelector, RequestError> {
    if sel.models.is_empty()
        && sel.sites.is_empty()
        && sel.tags.is_empty()
        && sel.current_versions.is_empty()
        && sel.device_ids.is_empty()
    {
        return Err(RequestError::NoSelector);
    }
    for (field, list) in [
        ("selector.models", &sel.models),
        ("selector.sites", &sel.sites),
        ("selector.tags", &sel.tags),
        ("selector.current_versions", &sel.current_versions),
    ] {
        for v in list {
            text(field, v, MAX_NAME_LEN)?;
        }
    }
    for id in &sel.device_ids {
        crate::ids::validate_device_id(id).map_err(|source| RequestError::Id {
            field: "selector.device_ids",
            source,
        })?;
    }
    Ok(TargetSelector {
        models: sel.models,
        sites: sel.sites,
        tags: sel.tags,
        current_versions: sel.current_versions,
        device_ids: sel.device_ids,
    })
}

/// Checks a strategy: waves, thresholds, limits, schedule and rollback policy, in that order.
pub fn parse_strategy(s: StrategyIn) -> Result<Strategy, RequestError> {
    if s.waves_pct.is_empty() || s.waves_pct.len() > MAX_WAVES {
        return Err(RequestError::WaveCount);
    }
    // The shares are cumulative, so their order carries nothing: they are sorted, and the last
    // wave reaches the whole selection (100 is added when the request stops short of it). JSON
    // Schema can say "distinct, in (0, 100]" but not "increasing", and the document must
    // promise exactly what the server accepts.
    let mut waves = s.waves_pct.clone();
    waves.sort_by(f64::total_cmp);
    let distinct = waves.windows(2).all(|w| w[0] < w[1]);
    let in_range = waves.iter().all(|p| *p > 0.0 && *p <= 100.0);
    if !distinct || !in_range {
        return Err(RequestError::WaveShares);
    }
    if waves.last() != Some(&100.0) {
        waves.push(100.0);
    }
    range(
        "strategy.success_threshold_pct",
        s.success_threshold_pct,
        &limits::THRESHOLD_PCT,
    )?;
    range(
        "strategy.failure_threshold_pct",
        s.failure_threshold_pct,
        &limits::THRESHOLD_PCT,
    )?;
    range(
        "strategy.min_devices_for_verdict",
        i64::from(s.min_devices_for_verdict),
        &limits::MIN_DEVICES_FOR_VERDICT,
    )?;
    range(
        "strategy.device_timeout_s",
        s.device_timeout_s,
        &limits::DEVICE_TIMEOUT_S,
    )?;
    range(
        "strategy.max_retries",
        i64::from(s.max_retries),
        &limits::MAX_RETRIES,
    )?;
    range(
        "strategy.retry_backoff_s",
        s.retry_backoff_s,
        &limits::RETRY_BACKOFF_S,
    )?;
    range(
        "strategy.max_in_flight",
        i64::from(s.max_in_flight),
        &limits::MAX_IN_FLIGHT,
    )?;
    range(
        "strategy.health_gate_window_s",
        s.health_gate_window_s,
        &limits::HEALTH_GATE_WINDOW_S,
    )?;
    if let Some(ms) = s.scheduled_start_ms {
        range(
            "strategy.scheduled_start_ms",
            ms,
            &limits::SCHEDULED_START_MS,
        )?;
    }
    if let Some(w) = &s.maintenance_window {
        range(
            "strategy.maintenance_window.start_minute",
            i64::from(w.start_minute),
            &limits::START_MINUTE,
        )?;
        range(
            "strategy.maintenance_window.duration_minutes",
            i64::from(w.duration_minutes),
            &limits::DURATION_MINUTES,
        )?;
    }
    let Some((_, rollback_policy)) = ROLLBACK_POLICIES
        .iter()
        .find(|(name, _)| *name == s.rollback_policy)
    else {
        return Err(RequestError::RollbackPolicy(s.rollback_policy));
    };
    Ok(Strategy {
        waves_pct: waves,
        success_threshold_pct: s.success_threshold_pct,
        failure_threshold_pct: s.failure_threshold_pct,
        min_devices_for_verdict: s.min_devices_for_verdict,
        device_timeout_s: s.device_timeout_s,
        max_retries: s.max_retries,
        retry_backoff_s: s.retry_backoff_s,
        max_in_flight: s.max_in_flight,
        health_gate_window_s: s.health_gate_window_s,
        scheduled_start: s.scheduled_start_ms.map(|ms| ms * 1000),
        maintenance_window: s.maintenance_window.map(|w| MaintenanceWindow {
            start_minute: w.start_minute,
            duration_minutes: w.duration_minutes,
        }),
        rollback_policy: *rollback_policy,
    })
}

/// A rollout request whose every field was checked.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutRequest {
    rollout_id: RolloutId,
    requested_by: String,
    release: ReleaseSpec,
    selector: TargetSelector,
    strategy: Strategy,
}

impl RolloutRequest {
    /// Checks a request: release, selector, strategy, rollout id, then the requester, who is
    /// `operator` when the request names nobody. A request without a rollout id gets a new UUID.
    pub fn parse(input: RolloutIn, operator: &str) -> Result<Self, RequestError> {
        let release = ReleaseSpec::parse(input.release.ok_or(RequestError::NoRelease)?)?;
        let selector = parse_selector(input.selector)?;
        let strategy = parse_strategy(input.strategy)?;
        let rollout_id = match input.rollout_id {
            Some(id) => RolloutId::try_from(id).map_err(|source| RequestError::Id {
                field: "rollout_id",
                source,
            })?,
            None => RolloutId::new_random(),
        };
        // The requester is who authenticated, never what the request says of itself.
        let requested_by = operator.to_owned();
        text("requested_by", &requested_by, MAX_NAME_LEN)?;
        Ok(RolloutRequest {
            rollout_id,
            requested_by,
            release,
            selector,
            strategy,
        })
    }

    #[must_use]
    pub fn rollout_id(&self) -> &RolloutId {
        &self.rollout_id
    }

    #[must_use]
    pub fn requested_by(&self) -> &str {
        &self.requested_by
    }

    #[must_use]
    pub fn release(&self) -> &ReleaseSpec {
        &self.release
    }

    #[must_use]
    pub fn selector(&self) -> &TargetSelector {
        &self.selector
    }

    #[must_use]
    pub fn strategy(&self) -> &Strategy {
        &self.strategy
    }
}

impl From<RolloutRequest> for UpdateRequested {
    fn from(r: RolloutRequest) -> UpdateRequested {
        UpdateRequested {
            rollout_id: r.rollout_id.into_string(),
            requested_by: r.requested_by,
            release: r.release.into(),
            selector: r.selector,
            strategy: r.strategy,
            catalogue: None,
        }
    }
}

mod schema;

#[cfg(test)]
mod tests;

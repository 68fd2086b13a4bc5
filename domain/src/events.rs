//! The event catalogue. Every fact in the ledger is an [`Event`]: common metadata plus one
//! [`Payload`]. Field names match the Avro schemas in `schemas/avro/` one to one.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ids::new_event_id;
use crate::time::{now_micros, Micros};

/// Which ledger topic a payload belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// `ota.device-events`, keyed by device id.
    DeviceEvents,
    /// `ota.rollout-events`, keyed by rollout id.
    RolloutEvents,
    /// `ota.device-commands`, keyed by device id.
    DeviceCommands,
    /// `ota.access-events`, keyed by token id (a device's attachment by device id): who was
    /// given or lost access, by whom.
    AccessEvents,
    /// `ota.release-events`, keyed by release id: the release catalogue (ADR 0038).
    ReleaseEvents,
}

/// Metadata every event carries. The schema fingerprint travels in the encoding itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventMeta {
    #[serde(with = "crate::serde_uuid")]
    pub event_id: Uuid,
    /// When the fact happened, by the clock of whoever observed it.
    pub occurred_at: Micros,
    /// When otaledger recorded it.
    pub recorded_at: Micros,
    pub trace_id: String,
}

/// One event of the ledger.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub meta: EventMeta,
    pub payload: Payload,
}

impl Event {
    /// An event with all of its metadata given: for derived events, whose id is deterministic
    /// (a command's id, a routed report's id), and for tests.
    #[must_use]
    pub fn new(
        event_id: Uuid,
        payload: Payload,
        occurred_at: Micros,
        recorded_at: Micros,
        trace_id: impl Into<String>,
    ) -> Self {
        Event {
            meta: EventMeta {
                event_id,
                occurred_at,
                recorded_at,
                trace_id: trace_id.into(),
            },
            payload,
        }
    }

    /// A new fact with a fresh random id, that occurred and was recorded at the times given.
    #[must_use]
    pub fn at(
        payload: Payload,
        occurred_at: Micros,
        recorded_at: Micros,
        trace_id: impl Into<String>,
    ) -> Self {
        Event::new(new_event_id(), payload, occurred_at, recorded_at, trace_id)
    }

    /// A new fact with a fresh random id, occurring and recorded now.
    #[must_use]
    pub fn now(payload: Payload, trace_id: impl Into<String>) -> Self {
        let now = now_micros();
        Event::at(payload, now, now, trace_id)
    }

    #[must_use]
    pub fn event_type(&self) -> EventType {
        self.payload.event_type()
    }

    /// The Kafka key: the device id or the rollout id the event belongs to.
    #[must_use]
    pub fn key(&self) -> &str {
        self.payload.key()
    }
}

/// A name that is not one of a state enum's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} must be one of {expected}, not {got:?}")]
pub struct UnknownState {
    pub kind: &'static str,
    pub expected: String,
    pub got: String,
}

/// A state enum whose names (the Avro enum symbols, used as such in the API and the tables)
/// are written once: serde's names, `ALL`, `NAMES`, `as_str`, `FromStr` and `Display` all come
/// from this one list.
macro_rules! named_states {
    ($(#[$doc:meta])* $name:ident { $( $variant:ident => $text:literal, )* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $( #[serde(rename = $text)] $variant, )*
        }

        impl $name {
            /// Every state, in declaration order.
            pub const ALL: [$name; [$( $text, )*].len()] = [$( $name::$variant, )*];
            /// Every state's name, in the order of `ALL`.
            pub const NAMES: [&'static str; [$( $text, )*].len()] = [$( $text, )*];

            /// The state's name: the Avro enum symbol, as the API and the tables spell it.
            #[must_use]
            pub const fn as_str(self) -> &'static str {
                match self { $( $name::$variant => $text, )* }
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownState;

            fn from_str(s: &str) -> Result<Self, UnknownState> {
                match s {
                    $( $text => Ok($name::$variant), )*
                    _ => Err(UnknownState {
                        kind: stringify!($name),
                        expected: Self::NAMES.join(", "),
                        got: s.to_owned(),
                    }),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

// ---- device events -------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRegistered {
    pub device_id: String,
    pub model: String,
    pub site: String,
    pub tags: Vec<String>,
    pub firmware_version: String,
    pub gateway_id: Option<String>,
    pub hardware_rev: Option<String>,
}

/// A device's health as its last heartbeat reported it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Health {
    pub uptime_s: i64,
    pub cpu_pct: f32,
    pub mem_pct: f32,
    pub temperature_c: f32,
    pub error_count: i32,
    /// Added in `Heartbeat` v2; data written with v1 reads as `None`.
    pub signal_dbm: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub device_id: String,
    pub firmware_version: String,
    pub gateway_id: Option<String>,
    pub health: Health,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InstallPhase {
    Downloading,
    Installing,
    Rebooting,
    Verifying,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstallProgress {
    pub device_id: String,
    pub rollout_id: Option<String>,
    #[serde(with = "crate::serde_uuid::option")]
    pub command_id: Option<Uuid>,
    pub phase: InstallPhase,
    pub percent: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InstallOutcome {
    Succeeded,
    Failed,
    Rejected,
    RolledBack,
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstallResult {
    pub device_id: String,
    pub rollout_id: Option<String>,
    #[serde(with = "crate::serde_uuid::option")]
    pub command_id: Option<Uuid>,
    pub outcome: InstallOutcome,
    /// The version the device runs after the attempt.
    pub firmware_version: String,
    pub error_code: Option<String>,
    pub message: Option<String>,
}

// ---- rollout events ------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Release {
    pub version: String,
    pub artifact_uri: String,
    pub sha256: String,
    pub size_bytes: i64,
    pub signature: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetSelector {
    pub models: Vec<String>,
    pub sites: Vec<String>,
    pub tags: Vec<String>,
    pub current_versions: Vec<String>,
    pub device_ids: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RollbackPolicy {
    None,
    OnAbort,
    OnFailure,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MaintenanceWindow {
    /// Minutes after midnight UTC when the window opens.
    pub start_minute: i32,
    pub duration_minutes: i32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Strategy {
    /// Cumulative share of the targeted devices reached by the end of each wave, in percent;
    /// the first wave is the canary.
    pub waves_pct: Vec<f64>,
    pub success_threshold_pct: f64,
    pub failure_threshold_pct: f64,
    pub min_devices_for_verdict: i32,
    pub device_timeout_s: i64,
    pub max_retries: i32,
    pub retry_backoff_s: i64,
    pub max_in_flight: i32,
    pub health_gate_window_s: i64,
    pub scheduled_start: Option<Micros>,
    pub maintenance_window: Option<MaintenanceWindow>,
    pub rollback_policy: RollbackPolicy,
}

impl Default for Strategy {
    /// The strategy of a rollout request that leaves it out (or any of its fields): four waves
    /// (1%, 10%, 50%, 100%), at or over 95% success to go on, at or over 5% failures to abort.
    fn default() -> Self {
        Strategy {
            waves_pct: vec![1.0, 10.0, 50.0, 100.0],
            success_threshold_pct: 95.0,
            failure_threshold_pct: 5.0,
            min_devices_for_verdict: 5,
            device_timeout_s: 1800,
            max_retries: 2,
            retry_backoff_s: 60,
            max_in_flight: 500,
            health_gate_window_s: 300,
            scheduled_start: None,
            maintenance_window: None,
            rollback_policy: RollbackPolicy::OnAbort,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateRequested {
    pub rollout_id: String,
    pub requested_by: String,
    pub release: Release,
    pub selector: TargetSelector,
    pub strategy: Strategy,
    /// The catalogue release the rollout names (`None`: a release given in full, as before
    /// the catalogue; its commands carry no director statement). Added in schema v2.
    pub catalogue: Option<Box<CatalogueRelease>>,
}

/// What a rollout by catalogue release adds to its request: the release, the hardware
/// revisions it was signed for (an empty list allows every revision), and whether devices on a
/// newer version may be taken back to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogueRelease {
    pub release_id: String,
    pub hardware_revs: Vec<String>,
    pub allow_downgrade: bool,
}

// ---- release events ------------------------------------------------------------------------

/// A release entered the catalogue (as a draft): the image and whom it is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRegistered {
    pub release_id: String,
    pub version: String,
    pub models: Vec<String>,
    /// Empty: every hardware revision of those models.
    pub hardware_revs: Vec<String>,
    pub sha256: String,
    pub length: i64,
    pub notes: String,
    pub registered_by: String,
}

/// A release moved draft → published (its signed targets metadata was verified and is
/// version `targets_version` of the image repository) or → deprecated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseStateChanged {
    pub release_id: String,
    pub from: String,
    pub to: String,
    pub by: String,
    pub targets_version: Option<i64>,
    pub reason: Option<String>,
}

/// An API token or a device credential was issued. The secret is not in the ledger (only its
/// holder has it; the credential store keeps its hash).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenIssued {
    pub token_id: String,
    /// The token's name, or the device's id for a device credential.
    pub name: String,
    pub role: String,
    pub expires_at: Option<Micros>,
    pub issued_by: String,
    /// The device selector the token is confined to, as JSON (ADR 0031); added in v2.
    #[serde(default)]
    pub scope: Option<String>,
}

/// A device was attached to the gateway that reports for it (or detached: `gateway_id` null),
/// at provisioning. Only this event moves a device between gateways: the AMQP bridge accepts a
/// gateway's report for a device only while the device is attached to it (ADR 0029).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceAttached {
    pub device_id: String,
    pub gateway_id: Option<String>,
    pub attached_by: String,
}

/// An admin decided a device's request to be admitted (`admission.pending`, ADR 0032): the
/// device that holds the secret whose SHA-256 is `fingerprint` may now claim its credential
/// (`accepted`), or may not. Requests themselves stay out of the ledger: anyone can make one,
/// and only a decision is a fact worth keeping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdmissionDecided {
    pub device_id: String,
    pub fingerprint: String,
    pub accepted: bool,
    pub decided_by: String,
}

/// A token or device credential was revoked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenRevoked {
    pub token_id: String,
    pub name: String,
    pub revoked_by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperatorRequest {
    pub rollout_id: String,
    pub requested_by: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WaveStarted {
    pub rollout_id: String,
    pub wave: i32,
    /// A wave's device list is split into chunks so that a wave of any size fits Kafka's
    /// message size limit.
    pub chunk: i32,
    pub chunks: i32,
    pub device_ids: Vec<String>,
    /// The firmware each device ran when targeted, in the order of `device_ids`: what a
    /// rollback returns it to.
    pub from_versions: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CommandKind {
    Update,
    Rollback,
    Cancel,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceCommanded {
    pub rollout_id: String,
    pub device_id: String,
    #[serde(with = "crate::serde_uuid")]
    pub command_id: Uuid,
    pub kind: CommandKind,
    pub attempt: i32,
    /// When the device times out without a result: the timer survives restarts in the ledger.
    pub deadline: Micros,
}

named_states! {
    /// Where one device stands in a rollout.
    DeviceRolloutState {
        Targeted => "TARGETED",
        Commanded => "COMMANDED",
        Downloading => "DOWNLOADING",
        Installing => "INSTALLING",
        Verifying => "VERIFYING",
        Succeeded => "SUCCEEDED",
        Failed => "FAILED",
        Rejected => "REJECTED",
        TimedOut => "TIMED_OUT",
        RolledBack => "ROLLED_BACK",
        Cancelled => "CANCELLED",
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceOutcome {
    pub rollout_id: String,
    pub device_id: String,
    #[serde(with = "crate::serde_uuid::option")]
    pub command_id: Option<Uuid>,
    pub state: DeviceRolloutState,
    pub reason: String,
    /// Health gate: a device in `Verifying` fails unless it heartbeats on the new version by
    /// then. The timer survives restarts because it is data.
    pub verify_until: Option<Micros>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceTimedOut {
    pub rollout_id: String,
    pub device_id: String,
    #[serde(with = "crate::serde_uuid")]
    pub command_id: Uuid,
    pub attempt: i32,
    /// When the retry may go out; `None` when the retries are used up.
    pub retry_at: Option<Micros>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateCounts {
    pub targeted: i64,
    pub in_flight: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub timed_out: i64,
    pub rejected: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Verdict {
    Continue,
    NextWave,
    Pause,
    Abort,
    Complete,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThresholdEvaluated {
    pub rollout_id: String,
    pub wave: i32,
    pub counts: StateCounts,
    pub success_threshold_pct: f64,
    pub failure_threshold_pct: f64,
    pub min_devices_for_verdict: i32,
    /// The rule that fired, in words an operator reads.
    pub rule: String,
    pub verdict: Verdict,
}

named_states! {
    /// Where a rollout stands.
    RolloutState {
        Requested => "REQUESTED",
        Scheduled => "SCHEDULED",
        Running => "RUNNING",
        Paused => "PAUSED",
        Completed => "COMPLETED",
        Aborted => "ABORTED",
        RolledBack => "ROLLED_BACK",
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutStateChanged {
    pub rollout_id: String,
    pub from: RolloutState,
    pub to: RolloutState,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ReportKind {
    Progress,
    Result,
    Heartbeat,
}

/// A device report copied by the router from `ota.device-events` into the stream of the
/// rollout it concerns, so the rollout's single writer sees its inputs in its own partition.
/// Its event id derives from the source event's, so routing twice yields the same event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceReportRouted {
    pub rollout_id: String,
    pub device_id: String,
    #[serde(with = "crate::serde_uuid::option")]
    pub command_id: Option<Uuid>,
    pub report: ReportKind,
    pub phase: Option<InstallPhase>,
    pub outcome: Option<InstallOutcome>,
    pub firmware_version: Option<String>,
    #[serde(with = "crate::serde_uuid")]
    pub source_event_id: Uuid,
    pub source_partition: i32,
    pub source_offset: i64,
    /// A result's error code and message as the device reported them (why it refused or
    /// failed), so the decision can say why. Added in schema v2 (last: fields are written in
    /// the schema's order).
    pub error_code: Option<String>,
    pub message: Option<String>,
}

/// Devices that joined the fleet while the rollout ran and match its selector, added to the
/// current wave.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DevicesJoined {
    pub rollout_id: String,
    pub wave: i32,
    pub device_ids: Vec<String>,
    pub from_versions: Vec<String>,
}

// ---- device commands -----------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateCommand {
    #[serde(with = "crate::serde_uuid")]
    pub command_id: Uuid,
    pub device_id: String,
    pub rollout_id: String,
    pub gateway_id: Option<String>,
    pub release: Release,
    pub deadline: Micros,
    /// The director's signed statement for this device and target (`director::Statement`),
    /// for rollouts of catalogue releases. Added in schema v2.
    pub director: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollbackCommand {
    #[serde(with = "crate::serde_uuid")]
    pub command_id: Uuid,
    pub device_id: String,
    pub rollout_id: String,
    pub gateway_id: Option<String>,
    pub target_version: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CancelCommand {
    #[serde(with = "crate::serde_uuid")]
    pub command_id: Uuid,
    pub device_id: String,
    pub rollout_id: String,
    pub gateway_id: Option<String>,
    pub reason: String,
}

/// What every command to a device carries: its id, whom it is for, which rollout sent it and the
/// gateway (if any) that relays it.
pub trait Addressed {
    fn command_id(&self) -> Uuid;
    fn device_id(&self) -> &str;
    fn rollout_id(&self) -> &str;
    fn gateway_id(&self) -> Option<&str>;
}

macro_rules! addressed {
    ($($command:ty),*) => {$(
        impl Addressed for $command {
            fn command_id(&self) -> Uuid {
                self.command_id
            }
            fn device_id(&self) -> &str {
                &self.device_id
            }
            fn rollout_id(&self) -> &str {
                &self.rollout_id
            }
            fn gateway_id(&self) -> Option<&str> {
                self.gateway_id.as_deref()
            }
        }
    )*};
}
addressed!(UpdateCommand, RollbackCommand, CancelCommand);

impl Payload {
    /// The command this event is, if it is one.
    #[must_use]
    pub fn as_command(&self) -> Option<&dyn Addressed> {
        match self {
            Payload::UpdateCommand(c) => Some(c),
            Payload::RollbackCommand(c) => Some(c),
            Payload::CancelCommand(c) => Some(c),
            _ => None,
        }
    }
}

/// The dispatcher could not hand a command to the device's broker (MQTT) or gateway (AMQP
/// return or nack); it retries with backoff and gives up after its attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandDeliveryFailed {
    #[serde(with = "crate::serde_uuid")]
    pub command_id: Uuid,
    pub device_id: String,
    pub rollout_id: String,
    /// `mqtt` or `amqp`.
    pub channel: String,
    pub gateway_id: Option<String>,
    pub attempt: i32,
    pub error: String,
    pub gave_up: bool,
}

// ---- the catalogue -------------------------------------------------------------------------

macro_rules! catalogue {
    ($( $variant:ident($ty:ty) => $name:literal, $stream:ident, $key:ident; )*) => {
        /// The payload of an event: one variant per event type. Serialises as the bare payload
        /// (the type travels beside it).
        #[derive(Debug, Clone, PartialEq, Serialize)]
        #[serde(untagged)]
        pub enum Payload {
            $( $variant($ty), )*
        }

        /// The event types, as named in headers, schemas and queries.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum EventType {
            $( $variant, )*
        }

        impl EventType {
            pub const ALL: &'static [EventType] = &[ $( EventType::$variant, )* ];

            /// The name used in the `event-type` header and as the Avro record name.
            #[must_use]
            pub fn name(self) -> &'static str {
                match self { $( EventType::$variant => $name, )* }
            }

            #[must_use]
            pub fn from_name(name: &str) -> Option<Self> {
                match name { $( $name => Some(EventType::$variant), )* _ => None }
            }

            #[must_use]
            pub fn stream(self) -> Stream {
                match self { $( EventType::$variant => Stream::$stream, )* }
            }
        }

        impl Payload {
            #[must_use]
            pub fn event_type(&self) -> EventType {
                match self { $( Payload::$variant(_) => EventType::$variant, )* }
            }

            #[must_use]
            pub fn key(&self) -> &str {
                match self { $( Payload::$variant(p) => &p.$key, )* }
            }
        }
    };
}

catalogue! {
    DeviceRegistered(DeviceRegistered) => "DeviceRegistered", DeviceEvents, device_id;
    Heartbeat(Heartbeat) => "Heartbeat", DeviceEvents, device_id;
    InstallProgress(InstallProgress) => "InstallProgress", DeviceEvents, device_id;
    InstallResult(InstallResult) => "InstallResult", DeviceEvents, device_id;
    UpdateRequested(UpdateRequested) => "UpdateRequested", RolloutEvents, rollout_id;
    PauseRequested(OperatorRequest) => "PauseRequested", RolloutEvents, rollout_id;
    ResumeRequested(OperatorRequest) => "ResumeRequested", RolloutEvents, rollout_id;
    AbortRequested(OperatorRequest) => "AbortRequested", RolloutEvents, rollout_id;
    WaveStarted(WaveStarted) => "WaveStarted", RolloutEvents, rollout_id;
    DeviceCommanded(DeviceCommanded) => "DeviceCommanded", RolloutEvents, rollout_id;
    DeviceOutcome(DeviceOutcome) => "DeviceOutcome", RolloutEvents, rollout_id;
    DeviceTimedOut(DeviceTimedOut) => "DeviceTimedOut", RolloutEvents, rollout_id;
    ThresholdEvaluated(ThresholdEvaluated) => "ThresholdEvaluated", RolloutEvents, rollout_id;
    RolloutStateChanged(RolloutStateChanged) => "RolloutStateChanged", RolloutEvents, rollout_id;
    DeviceReportRouted(DeviceReportRouted) => "DeviceReportRouted", RolloutEvents, rollout_id;
    DevicesJoined(DevicesJoined) => "DevicesJoined", RolloutEvents, rollout_id;
    UpdateCommand(UpdateCommand) => "UpdateCommand", DeviceCommands, device_id;
    RollbackCommand(RollbackCommand) => "RollbackCommand", DeviceCommands, device_id;
    CancelCommand(CancelCommand) => "CancelCommand", DeviceCommands, device_id;
    CommandDeliveryFailed(CommandDeliveryFailed) => "CommandDeliveryFailed", DeviceCommands, device_id;
    TokenIssued(TokenIssued) => "TokenIssued", AccessEvents, token_id;
    TokenRevoked(TokenRevoked) => "TokenRevoked", AccessEvents, token_id;
    DeviceAttached(DeviceAttached) => "DeviceAttached", AccessEvents, device_id;
    AdmissionDecided(AdmissionDecided) => "AdmissionDecided", AccessEvents, device_id;
    ReleaseRegistered(ReleaseRegistered) => "ReleaseRegistered", ReleaseEvents, release_id;
    ReleaseStateChanged(ReleaseStateChanged) => "ReleaseStateChanged", ReleaseEvents, release_id;
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests;

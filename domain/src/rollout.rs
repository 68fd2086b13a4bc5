//! The rollout saga's pure decider: `handle(&Rollout, Input) -> Result<Vec<Payload>>` decides,
//! `Rollout::apply(&Payload)` evolves. Every decision is an event that carries its inputs, so a
//! rollout's course can be explained from the ledger alone. Nothing here performs I/O: the
//! saga runtime resolves target devices from the fleet view, reads the clock and passes both in.
//!
//! Determinism: given the same inputs in the same order, the decider produces the same events;
//! command ids are derived from (rollout, device, kind, attempt), so a saga restarted after a
//! crash re-derives the same ids and never sends a second, different command.
//!
//! Convergence: every decision follows from the state (fill the in-flight window, evaluate the
//! wave when its counts say so, time out what is overdue), so a runtime that crashed after
//! appending only part of an input's decisions folds those back and, at its next `Tick`, decides
//! exactly the rest.
//!
//! Cost: the runtime calls [`Rollout::decide`] in place; counts per wave, the in-flight total,
//! the retry queue and the deadlines are kept incrementally, so one result costs O(log n) in a
//! rollout of n devices, not O(n).

use std::collections::{BTreeMap, BTreeSet};

use thiserror::Error;
use uuid::Uuid;

use crate::command_key::CommandKey;
use crate::events::{
    CommandKind, DeviceCommanded, DeviceOutcome, DeviceReportRouted, DeviceRolloutState,
    DeviceTimedOut, DevicesJoined, InstallOutcome, InstallPhase, Payload, ReportKind,
    RollbackPolicy, RolloutState, RolloutStateChanged, StateCounts, Strategy, ThresholdEvaluated,
    UpdateRequested, Verdict, WaveStarted,
};
use crate::time::Micros;

mod decide;
#[cfg(test)]
mod tests;

use decide::Decisions;

/// Most devices in one `WaveStarted` or `DevicesJoined` chunk.
pub const WAVE_CHUNK: usize = 5_000;
/// Most bytes of device ids and versions in one chunk: with the longest ids and versions,
/// 5,000 devices would make a record over Kafka's 1,000,000-byte `message.max.bytes` and stall
/// the saga (aborts included). A chunk is cut at whichever of the two limits it reaches first;
/// half a megabyte leaves room for the record's other fields.
pub const WAVE_CHUNK_BYTES: usize = 512 * 1024;

/// What one target adds to a chunk: its id and version and, per string, the Avro length
/// prefix (a varint of at most 2 bytes for strings this short).
fn chunk_bytes(t: &Target) -> usize {
    t.device_id.len() + t.firmware_version.len() + 4
}

/// `targets` cut into chunks of at most [`WAVE_CHUNK`] devices and [`WAVE_CHUNK_BYTES`] bytes,
/// in order; none for no targets. A single target is never split, whatever its size.
#[must_use]
pub fn wave_chunks(targets: &[Target]) -> Vec<&[Target]> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, t) in targets.iter().enumerate() {
        let size = chunk_bytes(t);
        if i > start && (i - start == WAVE_CHUNK || bytes + size > WAVE_CHUNK_BYTES) {
            chunks.push(&targets[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < targets.len() {
        chunks.push(&targets[start..]);
    }
    chunks
}

const MICROS_PER_S: i64 = 1_000_000;
const MICROS_PER_MINUTE: i64 = 60 * MICROS_PER_S;
const MINUTES_PER_DAY: i64 = 24 * 60;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DomainError {
    #[error("rollout {0} was already requested")]
    AlreadyRequested(String),
    #[error("rollout has not been requested")]
    NotRequested,
    #[error("rollout is {0:?}; {1}")]
    InvalidState(RolloutState, &'static str),
    #[error("no device matches the target selector")]
    NoTargets,
}

/// A device matching the selector, as the fleet view showed it when its wave started.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    pub device_id: String,
    pub firmware_version: String,
}

/// What the saga runtime feeds the decider.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Request(Box<UpdateRequested>),
    /// The awaited wave may start now; `targets` are every device matching the selector,
    /// resolved from the fleet view by the runtime.
    Start {
        now: Micros,
        targets: Vec<Target>,
    },
    Pause {
        reason: String,
    },
    Resume {
        now: Micros,
        reason: String,
    },
    Abort {
        now: Micros,
        reason: String,
    },
    /// An install result from a device of this rollout.
    Result {
        now: Micros,
        /// What the device said of it (`error_code: message`), for the decision's reason.
        detail: Option<String>,
        device_id: String,
        command_id: Option<Uuid>,
        outcome: InstallOutcome,
    },
    /// A heartbeat of a device in this rollout (the health gate).
    Health {
        now: Micros,
        device_id: String,
        firmware_version: String,
    },
    /// Devices that joined the fleet and match the selector.
    Join {
        now: Micros,
        targets: Vec<Target>,
    },
    /// The clock moved: time out overdue devices, retry, refill the in-flight window.
    Tick {
        now: Micros,
    },
}

impl Input {
    /// The input a routed device report stands for (progress only evolves state).
    #[must_use]
    pub fn from_report(now: Micros, r: &DeviceReportRouted) -> Option<Input> {
        match r.report {
            ReportKind::Progress => None,
            ReportKind::Result => r.outcome.map(|outcome| Input::Result {
                now,
                detail: match (&r.error_code, &r.message) {
                    (None, None) => None,
                    (code, message) => Some(
                        [code.as_deref(), message.as_deref()]
                            .into_iter()
                            .flatten()
                            .collect::<Vec<_>>()
                            .join(": "),
                    ),
                },
                device_id: r.device_id.clone(),
                command_id: r.command_id,
                outcome,
            }),
            ReportKind::Heartbeat => r.firmware_version.as_ref().map(|v| Input::Health {
                now,
                device_id: r.device_id.clone(),
                firmware_version: v.clone(),
            }),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeviceProgress {
    pub wave: i32,
    pub state: DeviceRolloutState,
    pub attempt: i32,
    /// The current update command.
    pub command_id: Option<Uuid>,
    /// A later rollback or cancel command, once the rollout was aborted.
    pub follow_up: Option<(CommandKind, Uuid)>,
    /// When the current command times out, when a retry may go out, or when the health gate
    /// closes.
    pub due: Option<Micros>,
    /// The firmware the device ran when targeted.
    pub from_version: String,
}

/// A rollout as the decider sees it, folded from its events.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rollout {
    pub request: Option<UpdateRequested>,
    pub state: Option<RolloutState>,
    /// Device ids of each wave, in command order.
    pub waves: BTreeMap<i32, Vec<String>>,
    pub current_wave: i32,
    /// The wave the runtime should start next (with the targets it resolves), if any.
    pub awaiting_wave: Option<i32>,
    pub devices: BTreeMap<String, DeviceProgress>,
    /// The saga's key for command ids (ADR 0027); not folded from events: the saga sets it.
    pub command_key: CommandKey,
    counts: BTreeMap<i32, StateCounts>,
    in_flight_total: i64,
    /// Index of the first never-commanded device of the current wave.
    cursor: usize,
    /// Targeted devices waiting for their retry, by due time.
    retries: BTreeSet<(Micros, String)>,
    /// Devices in flight, by deadline (command timeout or health gate).
    deadlines: BTreeSet<(Micros, String)>,
}

fn in_flight(s: DeviceRolloutState) -> bool {
    use DeviceRolloutState as D;
    matches!(
        s,
        D::Commanded | D::Downloading | D::Installing | D::Verifying
    )
}

/// Adds `by` to the count a device state belongs to.
fn count(c: &mut StateCounts, s: DeviceRolloutState, by: i64) {
    use DeviceRolloutState as D;
    match s {
        D::Targeted => {}
        D::Commanded | D::Downloading | D::Installing | D::Verifying => c.in_flight += by,
        D::Succeeded => c.succeeded += by,
        D::Failed | D::RolledBack | D::Cancelled => c.failed += by,
        D::TimedOut => c.timed_out += by,
        D::Rejected => c.rejected += by,
    }
}

/// Whether commands may go out at `now`: after the scheduled start and inside the maintenance
/// window, if the strategy has them.
#[must_use]
pub fn may_command(s: &Strategy, now: Micros) -> bool {
    if s.scheduled_start.is_some_and(|t| now < t) {
        return false;
    }
    let Some(w) = &s.maintenance_window else {
        return true;
    };
    if w.duration_minutes >= 24 * 60 {
        return true;
    }
    let minute = now
        .div_euclid(MICROS_PER_MINUTE)
        .rem_euclid(MINUTES_PER_DAY);
    let start = i64::from(w.start_minute);
    let since_open = (minute - start).rem_euclid(MINUTES_PER_DAY);
    since_open < i64::from(w.duration_minutes)
}

/// Splits `n` targets into waves by cumulative percentages; the canary gets at least one device.
#[must_use]
pub fn wave_sizes(n: usize, waves_pct: &[f64]) -> Vec<usize> {
    let mut out = Vec::with_capacity(waves_pct.len());
    let mut done = 0usize;
    for (i, pct) in waves_pct.iter().enumerate() {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let mut upto = ((n as f64) * pct.clamp(0.0, 100.0) / 100.0).ceil() as usize;
        if i + 1 == waves_pct.len() {
            upto = n;
        }
        let upto = upto.clamp(done.min(n), n).max((done + 1).min(n));
        out.push(upto - done);
        done = upto;
    }
    out
}

impl Rollout {
    fn id(&self) -> &str {
        self.request.as_ref().map_or("", |r| r.rollout_id.as_str())
    }

    /// A rollout before its first event, deriving its command ids with `key`.
    #[must_use]
    pub fn keyed(key: CommandKey) -> Self {
        Rollout {
            command_key: key,
            ..Rollout::default()
        }
    }

    /// Whether `command_id` names a command this rollout gave (or may yet give) `device_id`, of
    /// any kind, up to the device's current attempt: an install result naming anything else is
    /// forged or misrouted (ADR 0027).
    #[must_use]
    pub fn issued(&self, device_id: &str, command_id: Option<Uuid>) -> bool {
        match (self.devices.get(device_id), command_id) {
            (Some(d), Some(id)) => self.command_key.issued(self.id(), device_id, d.attempt, id),
            _ => false,
        }
    }

    /// Counts of one wave's devices by state group.
    #[must_use]
    pub fn counts(&self, wave: i32) -> StateCounts {
        self.counts.get(&wave).cloned().unwrap_or_default()
    }

    /// Whether the rollout reached a final state.
    #[must_use]
    pub fn is_over(&self) -> bool {
        matches!(
            self.state,
            Some(RolloutState::Completed | RolloutState::Aborted | RolloutState::RolledBack)
        )
    }

    /// The wave the runtime should resolve targets for and start at `now`, if any.
    #[must_use]
    pub fn wave_due(&self, now: Micros) -> Option<i32> {
        let req = self.request.as_ref()?;
        let startable = matches!(
            self.state,
            Some(RolloutState::Requested | RolloutState::Scheduled | RolloutState::Running)
        );
        (startable && may_command(&req.strategy, now))
            .then_some(self.awaiting_wave)
            .flatten()
    }

    /// Whether devices that join the fleet now would be added (the current wave is running).
    #[must_use]
    pub fn accepts_joiners(&self) -> bool {
        self.state == Some(RolloutState::Running) && self.awaiting_wave.is_none()
    }

    fn add_device(&mut self, wave: i32, id: &str, from_version: &str) {
        if self.devices.contains_key(id) {
            return;
        }
        self.devices.insert(
            id.to_owned(),
            DeviceProgress {
                wave,
                state: DeviceRolloutState::Targeted,
                attempt: 0,
                command_id: None,
                follow_up: None,
                due: None,
                from_version: from_version.to_owned(),
            },
        );
        self.waves.entry(wave).or_default().push(id.to_owned());
        self.counts.entry(wave).or_default().targeted += 1;
    }

    /// Moves a device to a state, keeping counts, retry queue and deadlines in step.
    fn set(&mut self, id: &str, state: DeviceRolloutState, due: Option<Micros>) {
        let Some(d) = self.devices.get_mut(id) else {
            return;
        };
        if let Some(old) = d.due {
            if d.state == DeviceRolloutState::Targeted {
                self.retries.remove(&(old, id.to_owned()));
            } else if in_flight(d.state) {
                self.deadlines.remove(&(old, id.to_owned()));
            }
        }
        let c = self.counts.entry(d.wave).or_default();
        count(c, d.state, -1);
        count(c, state, 1);
        self.in_flight_total += i64::from(in_flight(state)) - i64::from(in_flight(d.state));
        d.state = state;
        d.due = due;
        if let Some(due) = due {
            if state == DeviceRolloutState::Targeted {
                self.retries.insert((due, id.to_owned()));
            } else if in_flight(state) {
                self.deadlines.insert((due, id.to_owned()));
            }
        }
    }

    fn advance_cursor(&mut self) {
        let Some(list) = self.waves.get(&self.current_wave) else {
            return;
        };
        while let Some(id) = list.get(self.cursor) {
            if self.devices.get(id).is_some_and(|d| d.attempt > 0) {
                self.cursor += 1;
            } else {
                break;
            }
        }
    }

    fn add_all(&mut self, wave: i32, ids: &[String], versions: &[String]) {
        for (i, id) in ids.iter().enumerate() {
            let v = versions.get(i).map_or("", String::as_str);
            self.add_device(wave, id, v);
        }
    }

    /// Folds one event of the rollout's stream.
    #[must_use]
    pub fn apply(mut self, event: &Payload) -> Self {
        self.apply_mut(event);
        self
    }

    /// As [`Rollout::apply`], in place.
    pub fn apply_mut(&mut self, event: &Payload) {
        match event {
            Payload::UpdateRequested(r) if self.request.is_none() => {
                self.request = Some(r.clone());
                self.state = Some(RolloutState::Requested);
                self.awaiting_wave = Some(0);
            }
            Payload::ThresholdEvaluated(t) if t.verdict == Verdict::NextWave => {
                self.awaiting_wave = Some(t.wave + 1);
            }
            Payload::RolloutStateChanged(c) => self.state = Some(c.to),
            Payload::WaveStarted(w) => {
                if w.wave != self.current_wave {
                    self.cursor = 0;
                }
                self.current_wave = w.wave;
                self.awaiting_wave = None;
                self.add_all(w.wave, &w.device_ids, &w.from_versions);
                self.advance_cursor();
            }
            Payload::DevicesJoined(j) => {
                self.add_all(j.wave, &j.device_ids, &j.from_versions);
            }
            Payload::DeviceCommanded(c) if c.kind == CommandKind::Update => {
                if let Some(d) = self.devices.get_mut(&c.device_id) {
                    d.attempt = c.attempt;
                    d.command_id = Some(c.command_id);
                    self.set(
                        &c.device_id,
                        DeviceRolloutState::Commanded,
                        Some(c.deadline),
                    );
                    self.advance_cursor();
                }
            }
            Payload::DeviceCommanded(c) => {
                if let Some(d) = self.devices.get_mut(&c.device_id) {
                    d.follow_up = Some((c.kind, c.command_id));
                }
            }
            Payload::DeviceTimedOut(t) => {
                if let Some(retry_at) = t.retry_at {
                    // Waiting for a retry: back to targeted, due once the backoff has passed.
                    self.set(&t.device_id, DeviceRolloutState::Targeted, Some(retry_at));
                }
            }
            Payload::DeviceOutcome(o) => {
                let due = if o.state == DeviceRolloutState::Verifying {
                    o.verify_until
                } else {
                    None
                };
                self.set(&o.device_id, o.state, due);
            }
            Payload::DeviceReportRouted(r) if r.report == ReportKind::Progress => {
                let Some(d) = self.devices.get(&r.device_id) else {
                    return;
                };
                let current = r.command_id.is_none() || r.command_id == d.command_id;
                let phase_state = match r.phase {
                    Some(InstallPhase::Downloading) => DeviceRolloutState::Downloading,
                    Some(InstallPhase::Installing | InstallPhase::Rebooting) => {
                        DeviceRolloutState::Installing
                    }
                    // The device verifying its own install is still installing for the saga;
                    // `Verifying` is the health gate after the result.
                    Some(InstallPhase::Verifying) | None => DeviceRolloutState::Installing,
                };
                if current
                    && in_flight(d.state)
                    && d.state != DeviceRolloutState::Verifying
                    && d.state != phase_state
                {
                    let due = d.due;
                    self.set(&r.device_id, phase_state, due);
                }
            }
            _ => {}
        }
    }

    /// Decides what happens on an input and applies the decisions to `self`. On an error
    /// nothing changed.
    pub fn decide(&mut self, input: Input) -> Result<Vec<Payload>, DomainError> {
        let id = self.id().to_owned();
        let mut d = Decisions {
            rollout: self,
            id: &id,
            out: Vec::new(),
        };
        d.run(input)?;
        Ok(d.out)
    }
}

/// Decides what happens on an input. The returned events are to be appended (in order) to
/// `ota.rollout-events`; commands among them go out through the dispatcher.
pub fn handle(rollout: &Rollout, input: Input) -> Result<Vec<Payload>, DomainError> {
    let mut scratch = rollout.clone();
    scratch.decide(input)
}

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

use crate::events::{
    CommandKind, DeviceCommanded, DeviceOutcome, DeviceReportRouted, DeviceRolloutState,
    DeviceTimedOut, DevicesJoined, InstallOutcome, InstallPhase, Payload, ReportKind,
    RollbackPolicy, RolloutState, RolloutStateChanged, StateCounts, Strategy, ThresholdEvaluated,
    UpdateRequested, Verdict, WaveStarted,
};
use crate::ids::derived_event_id;
use crate::time::Micros;

#[cfg(test)]
mod tests;

/// Device ids per `WaveStarted` chunk, so a wave of any size fits Kafka's message size.
pub const WAVE_CHUNK: usize = 5_000;

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

struct Decisions<'a> {
    rollout: &'a mut Rollout,
    id: &'a str,
    out: Vec<Payload>,
}

impl Decisions<'_> {
    fn push(&mut self, p: Payload) {
        self.rollout.apply_mut(&p);
        self.out.push(p);
    }

    fn strategy(&self) -> Option<&Strategy> {
        self.rollout.request.as_ref().map(|r| &r.strategy)
    }

    fn change_state(&mut self, to: RolloutState, reason: String) {
        let from = self.rollout.state.unwrap_or(RolloutState::Requested);
        if from != to {
            self.push(Payload::RolloutStateChanged(RolloutStateChanged {
                rollout_id: self.id.to_owned(),
                from,
                to,
                reason,
            }));
        }
    }

    fn start_wave(&mut self, wave: i32, targets: &[Target]) {
        let chunks = targets.chunks(WAVE_CHUNK).count().max(1);
        let mut parts: Vec<&[Target]> = targets.chunks(WAVE_CHUNK).collect();
        if parts.is_empty() {
            parts.push(&[]);
        }
        for (i, chunk) in parts.into_iter().enumerate() {
            self.push(Payload::WaveStarted(WaveStarted {
                rollout_id: self.id.to_owned(),
                wave,
                chunk: i32::try_from(i).unwrap_or(i32::MAX),
                chunks: i32::try_from(chunks).unwrap_or(i32::MAX),
                device_ids: chunk.iter().map(|t| t.device_id.clone()).collect(),
                from_versions: chunk.iter().map(|t| t.firmware_version.clone()).collect(),
            }));
        }
    }

    fn command(&mut self, device_id: &str, kind: CommandKind, attempt: i32, now: Micros) {
        let kind_name = match kind {
            CommandKind::Update => "update",
            CommandKind::Rollback => "rollback",
            CommandKind::Cancel => "cancel",
        };
        let command_id = derived_event_id(&[self.id, device_id, kind_name, &attempt.to_string()]);
        let timeout = self.strategy().map_or(0, |s| s.device_timeout_s);
        self.push(Payload::DeviceCommanded(DeviceCommanded {
            rollout_id: self.id.to_owned(),
            device_id: device_id.to_owned(),
            command_id,
            kind,
            attempt,
            deadline: now.saturating_add(timeout.saturating_mul(MICROS_PER_S)),
        }));
    }

    /// Commands devices of the current wave (retries first) until `max_in_flight` are in
    /// flight, while commands may go out.
    fn fill_window(&mut self, now: Micros) {
        if self.rollout.state != Some(RolloutState::Running) {
            return;
        }
        let Some(s) = self.strategy() else { return };
        if !may_command(s, now) {
            return;
        }
        let mut room = i64::from(s.max_in_flight) - self.rollout.in_flight_total;
        while room > 0 {
            let Some((due, id)) = self.rollout.retries.first().cloned() else {
                break;
            };
            if due > now {
                break;
            }
            let attempt = self.rollout.devices.get(&id).map_or(1, |d| d.attempt + 1);
            self.command(&id, CommandKind::Update, attempt, now);
            room -= 1;
        }
        while room > 0 {
            self.rollout.advance_cursor();
            let wave = self.rollout.current_wave;
            let Some(id) = self
                .rollout
                .waves
                .get(&wave)
                .and_then(|l| l.get(self.rollout.cursor))
                .cloned()
            else {
                break;
            };
            self.command(&id, CommandKind::Update, 1, now);
            room -= 1;
        }
    }

    /// Evaluates the current wave's thresholds and acts on the verdict.
    fn evaluate(&mut self, now: Micros) {
        let Some(req) = self.rollout.request.as_ref() else {
            return;
        };
        if self.rollout.state != Some(RolloutState::Running) || self.rollout.awaiting_wave.is_some()
        {
            return;
        }
        let s = req.strategy.clone();
        let wave = self.rollout.current_wave;
        let c = self.rollout.counts(wave);
        let done = c.succeeded + c.failed + c.timed_out + c.rejected;
        #[allow(clippy::cast_precision_loss)]
        let pct = |n: i64| {
            if c.targeted == 0 {
                100.0
            } else {
                n as f64 * 100.0 / c.targeted as f64
            }
        };
        let bad = c.failed + c.timed_out + c.rejected;
        let failed_pct = if c.targeted == 0 { 0.0 } else { pct(bad) };
        let min = i64::from(s.min_devices_for_verdict).min(c.targeted);
        let (verdict, rule) = if done >= min && bad > 0 && failed_pct >= s.failure_threshold_pct {
            (Verdict::Abort, format!(
                "wave {wave}: {failed_pct:.1}% of {} devices failed, timed out or rejected, at or over the failure threshold {}% (after {done} outcomes, minimum {min})",
                c.targeted, s.failure_threshold_pct))
        } else if done == c.targeted {
            let success_pct = pct(c.succeeded);
            if success_pct < s.success_threshold_pct {
                (Verdict::Pause, format!(
                    "wave {wave}: {success_pct:.1}% succeeded, under the success threshold {}%; paused for an operator",
                    s.success_threshold_pct))
            } else if usize::try_from(wave + 1).unwrap_or(usize::MAX) < s.waves_pct.len() {
                (Verdict::NextWave, format!(
                    "wave {wave}: {success_pct:.1}% of {} devices succeeded, at or over the success threshold {}%",
                    c.targeted, s.success_threshold_pct))
            } else {
                (
                    Verdict::Complete,
                    format!("last wave {wave}: {success_pct:.1}% succeeded; every wave is done"),
                )
            }
        } else {
            return;
        };
        self.push(Payload::ThresholdEvaluated(ThresholdEvaluated {
            rollout_id: self.id.to_owned(),
            wave,
            counts: c,
            success_threshold_pct: s.success_threshold_pct,
            failure_threshold_pct: s.failure_threshold_pct,
            min_devices_for_verdict: s.min_devices_for_verdict,
            rule: rule.clone(),
            verdict,
        }));
        match verdict {
            Verdict::Abort => self.abort(&rule, now, true),
            Verdict::Pause => self.change_state(RolloutState::Paused, rule),
            Verdict::Complete => self.change_state(RolloutState::Completed, rule),
            // The runtime resolves the next wave's devices and calls `Input::Start`.
            Verdict::NextWave | Verdict::Continue => {}
        }
    }

    fn rolls_back(&self, by_threshold: bool) -> bool {
        match self
            .strategy()
            .map_or(RollbackPolicy::None, |s| s.rollback_policy)
        {
            RollbackPolicy::None => false,
            RollbackPolicy::OnAbort => true,
            RollbackPolicy::OnFailure => by_threshold,
        }
    }

    fn abort(&mut self, reason: &str, now: Micros, by_threshold: bool) {
        let rollback = self.rolls_back(by_threshold);
        self.change_state(RolloutState::Aborted, reason.to_owned());
        // Devices with a command out are told to cancel; with a rollback policy, devices that
        // installed the release (verified or not) are told to roll back.
        let devices: Vec<(String, DeviceRolloutState)> = self
            .rollout
            .devices
            .iter()
            .filter(|(_, d)| in_flight(d.state) || d.state == DeviceRolloutState::Succeeded)
            .map(|(id, d)| (id.clone(), d.state))
            .collect();
        let mut rolled_back = 0;
        for (id, state) in devices {
            let installed = matches!(
                state,
                DeviceRolloutState::Succeeded | DeviceRolloutState::Verifying
            );
            if installed && rollback {
                self.command(&id, CommandKind::Rollback, 1, now);
                rolled_back += 1;
            } else if in_flight(state) && state != DeviceRolloutState::Verifying {
                self.command(&id, CommandKind::Cancel, 1, now);
            }
        }
        if rolled_back > 0 {
            self.change_state(
                RolloutState::RolledBack,
                format!("{reason}; rollback sent to {rolled_back} updated devices"),
            );
        }
    }

    fn outcome(
        &mut self,
        device_id: &str,
        command_id: Option<Uuid>,
        state: DeviceRolloutState,
        reason: String,
        verify_until: Option<Micros>,
    ) {
        self.push(Payload::DeviceOutcome(DeviceOutcome {
            rollout_id: self.id.to_owned(),
            device_id: device_id.to_owned(),
            command_id,
            state,
            reason,
            verify_until,
        }));
    }

    fn result(
        &mut self,
        now: Micros,
        device_id: &str,
        command_id: Option<Uuid>,
        outcome: InstallOutcome,
    ) {
        let Some(dev) = self.rollout.devices.get(device_id).cloned() else {
            return;
        };
        // Results of a rollback or cancel sent after an abort.
        if let (Some(cid), Some((kind, fid))) = (command_id, dev.follow_up) {
            if cid == fid {
                let state = match (kind, outcome) {
                    (
                        CommandKind::Rollback,
                        InstallOutcome::RolledBack | InstallOutcome::Succeeded,
                    ) => DeviceRolloutState::RolledBack,
                    (CommandKind::Cancel, InstallOutcome::Cancelled) => {
                        DeviceRolloutState::Cancelled
                    }
                    _ => return,
                };
                if dev.state != state {
                    self.outcome(
                        device_id,
                        command_id,
                        state,
                        format!("device reported {outcome:?} for the {kind:?} command"),
                        None,
                    );
                }
                return;
            }
        }
        let current = command_id.is_none() || command_id == dev.command_id;
        if !in_flight(dev.state) || dev.state == DeviceRolloutState::Verifying || !current {
            // A duplicate, late or foreign result changes nothing.
            return;
        }
        let gate = self.strategy().map_or(0, |s| s.health_gate_window_s);
        let version = self
            .rollout
            .request
            .as_ref()
            .map_or(String::new(), |r| r.release.version.clone());
        let (state, reason, verify_until) = match outcome {
            InstallOutcome::Succeeded if gate > 0 => (
                DeviceRolloutState::Verifying,
                format!("installed {version}; counts as succeeded once it heartbeats on it within {gate} s"),
                Some(now.saturating_add(gate.saturating_mul(MICROS_PER_S))),
            ),
            InstallOutcome::Succeeded => (
                DeviceRolloutState::Succeeded,
                format!("device reported {outcome:?}"),
                None,
            ),
            InstallOutcome::Failed => (
                DeviceRolloutState::Failed,
                format!("device reported {outcome:?}"),
                None,
            ),
            InstallOutcome::Rejected => (
                DeviceRolloutState::Rejected,
                format!("device reported {outcome:?}"),
                None,
            ),
            InstallOutcome::RolledBack => (
                DeviceRolloutState::RolledBack,
                format!("device reported {outcome:?}"),
                None,
            ),
            InstallOutcome::Cancelled => (
                DeviceRolloutState::Cancelled,
                format!("device reported {outcome:?}"),
                None,
            ),
        };
        self.outcome(device_id, dev.command_id, state, reason, verify_until);
        // An install that finished after an abort is rolled back too, under the policy.
        if self.rollout.is_over()
            && outcome == InstallOutcome::Succeeded
            && self.rolls_back(true)
            && dev
                .follow_up
                .is_none_or(|(k, _)| k != CommandKind::Rollback)
        {
            self.command(device_id, CommandKind::Rollback, 1, now);
        }
    }

    fn health(&mut self, device_id: &str, firmware_version: &str) {
        let Some(dev) = self.rollout.devices.get(device_id) else {
            return;
        };
        if dev.state != DeviceRolloutState::Verifying {
            return;
        }
        let command_id = dev.command_id;
        let Some(gate) = self.strategy().map(|s| s.health_gate_window_s) else {
            return;
        };
        let version = self
            .rollout
            .request
            .as_ref()
            .map_or(String::new(), |r| r.release.version.clone());
        if firmware_version == version {
            self.outcome(
                device_id,
                command_id,
                DeviceRolloutState::Succeeded,
                format!("health gate passed: heartbeat on {version} within {gate} s"),
                None,
            );
        } else {
            self.outcome(
                device_id,
                command_id,
                DeviceRolloutState::Failed,
                format!("health gate failed: heartbeat on {firmware_version}, not {version}"),
                None,
            );
        }
    }

    fn tick(&mut self, now: Micros) {
        if self.rollout.state == Some(RolloutState::Requested) {
            if let Some(s) = self.strategy() {
                if !may_command(s, now) {
                    let why = match s.scheduled_start {
                        Some(t) if now < t => format!("waiting for the scheduled start at {t} µs"),
                        _ => "waiting for the maintenance window".to_owned(),
                    };
                    self.change_state(RolloutState::Scheduled, why);
                }
            }
        }
        let (max_retries, backoff, gate) = self.strategy().map_or((0, 0, 0), |s| {
            (s.max_retries, s.retry_backoff_s, s.health_gate_window_s)
        });
        let overdue: Vec<String> = self
            .rollout
            .deadlines
            .iter()
            .take_while(|(due, _)| *due <= now)
            .map(|(_, id)| id.clone())
            .collect();
        for device_id in overdue {
            let Some(p) = self.rollout.devices.get(&device_id).cloned() else {
                continue;
            };
            if p.state == DeviceRolloutState::Verifying {
                self.outcome(
                    &device_id,
                    p.command_id,
                    DeviceRolloutState::Failed,
                    format!("health gate failed: no heartbeat on the new version within {gate} s"),
                    None,
                );
                continue;
            }
            let retry = p.attempt <= max_retries;
            self.push(Payload::DeviceTimedOut(DeviceTimedOut {
                rollout_id: self.id.to_owned(),
                device_id: device_id.clone(),
                command_id: p.command_id.unwrap_or_default(),
                attempt: p.attempt,
                retry_at: retry.then(|| now.saturating_add(backoff.saturating_mul(MICROS_PER_S))),
            }));
            if !retry {
                self.outcome(
                    &device_id,
                    p.command_id,
                    DeviceRolloutState::TimedOut,
                    format!("no result after {} attempts", p.attempt),
                    None,
                );
            }
        }
    }

    fn run(&mut self, input: Input) -> Result<(), DomainError> {
        let state = self.rollout.state.unwrap_or(RolloutState::Requested);
        match input {
            Input::Request(r) => {
                if self.rollout.request.is_some() {
                    return Err(DomainError::AlreadyRequested(r.rollout_id));
                }
                self.push(Payload::UpdateRequested(*r));
                return Ok(());
            }
            _ if self.rollout.request.is_none() => return Err(DomainError::NotRequested),
            Input::Start { now, mut targets } => {
                let Some(wave) = self.rollout.awaiting_wave else {
                    return Err(DomainError::InvalidState(state, "no wave is due"));
                };
                if matches!(state, RolloutState::Requested | RolloutState::Scheduled) {
                    if targets.is_empty() {
                        return Err(DomainError::NoTargets);
                    }
                    self.change_state(RolloutState::Running, "start time reached".into());
                } else if state != RolloutState::Running {
                    return Err(DomainError::InvalidState(
                        state,
                        "waves start only while running",
                    ));
                }
                targets.sort();
                targets.dedup_by(|a, b| a.device_id == b.device_id);
                let known = &self.rollout.devices;
                let fresh: Vec<Target> = targets
                    .into_iter()
                    .filter(|t| !known.contains_key(&t.device_id))
                    .collect();
                let total = known.len() + fresh.len();
                let pcts = self
                    .strategy()
                    .map(|s| s.waves_pct.clone())
                    .unwrap_or_default();
                let sizes = wave_sizes(total, &pcts);
                let upto: usize = sizes
                    .iter()
                    .take(usize::try_from(wave).unwrap_or(0) + 1)
                    .sum();
                let take = upto.saturating_sub(known.len());
                let picked: Vec<Target> = fresh.into_iter().take(take).collect();
                self.start_wave(wave, &picked);
                self.fill_window(now);
                self.evaluate(now);
            }
            Input::Join { now, mut targets } => {
                if !self.rollout.accepts_joiners() {
                    return Ok(());
                }
                targets.sort();
                targets.dedup_by(|a, b| a.device_id == b.device_id);
                targets.retain(|t| !self.rollout.devices.contains_key(&t.device_id));
                let wave = self.rollout.current_wave;
                for chunk in targets.chunks(WAVE_CHUNK) {
                    self.push(Payload::DevicesJoined(DevicesJoined {
                        rollout_id: self.id.to_owned(),
                        wave,
                        device_ids: chunk.iter().map(|t| t.device_id.clone()).collect(),
                        from_versions: chunk.iter().map(|t| t.firmware_version.clone()).collect(),
                    }));
                }
                self.fill_window(now);
            }
            Input::Pause { reason } => {
                if state != RolloutState::Running {
                    return Err(DomainError::InvalidState(
                        state,
                        "only a running rollout pauses",
                    ));
                }
                self.change_state(RolloutState::Paused, format!("operator: {reason}"));
            }
            Input::Resume { now, reason } => {
                if state != RolloutState::Paused {
                    return Err(DomainError::InvalidState(
                        state,
                        "only a paused rollout resumes",
                    ));
                }
                self.change_state(RolloutState::Running, format!("operator: {reason}"));
                self.fill_window(now);
                self.evaluate(now);
            }
            Input::Abort { now, reason } => {
                if self.rollout.is_over() {
                    return Err(DomainError::InvalidState(state, "the rollout is over"));
                }
                self.abort(&format!("operator: {reason}"), now, false);
            }
            Input::Result {
                now,
                device_id,
                command_id,
                outcome,
            } => {
                self.result(now, &device_id, command_id, outcome);
                self.fill_window(now);
                self.evaluate(now);
            }
            Input::Health {
                now,
                device_id,
                firmware_version,
            } => {
                self.health(&device_id, &firmware_version);
                self.fill_window(now);
                self.evaluate(now);
            }
            Input::Tick { now } => {
                self.tick(now);
                self.fill_window(now);
                self.evaluate(now);
            }
        }
        Ok(())
    }
}

/// Decides what happens on an input. The returned events are to be appended (in order) to
/// `ota.rollout-events`; commands among them go out through the dispatcher.
pub fn handle(rollout: &Rollout, input: Input) -> Result<Vec<Payload>, DomainError> {
    let mut scratch = rollout.clone();
    scratch.decide(input)
}

//! The rollout saga's pure decider: `handle(&Rollout, Input) -> Result<Vec<Payload>>` decides,
//! `Rollout::apply(&Payload)` evolves. Every decision is an event that carries its inputs, so a
//! rollout's course can be explained from the ledger alone. Nothing here performs I/O: the
//! saga runtime resolves target devices from the fleet view, reads the clock and passes both in.
//!
//! Determinism: given the same inputs in the same order, the decider produces the same events;
//! command ids are derived from (rollout, device, kind, attempt), so a saga restarted after a
//! crash re-derives the same ids and never sends a second, different command.

use std::collections::BTreeMap;

use thiserror::Error;
use uuid::Uuid;

use crate::events::{
    CommandKind, DeviceCommanded, DeviceOutcome, DeviceRolloutState, DeviceTimedOut,
    InstallOutcome, Payload, RollbackPolicy, RolloutState, RolloutStateChanged, StateCounts,
    ThresholdEvaluated, UpdateRequested, Verdict, WaveStarted,
};
use crate::ids::derived_event_id;
use crate::time::Micros;

#[cfg(test)]
mod tests;

/// Device ids per `WaveStarted` chunk, so a wave of any size fits Kafka's message size.
pub const WAVE_CHUNK: usize = 5_000;

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

/// What the saga runtime feeds the decider.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Request(Box<UpdateRequested>),
    /// The rollout may start now; `targets` are the devices matching the selector, resolved
    /// from the fleet view by the runtime (sorted for determinism).
    Start {
        now: Micros,
        targets: Vec<String>,
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
    /// The clock moved: time out overdue devices, retry, refill the in-flight window.
    Tick {
        now: Micros,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeviceProgress {
    pub wave: i32,
    pub state: DeviceRolloutState,
    pub attempt: i32,
    pub command_id: Option<Uuid>,
    /// When the current command times out, or when a retry may go out.
    pub due: Option<Micros>,
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
}

fn is_final(s: DeviceRolloutState) -> bool {
    use DeviceRolloutState as D;
    matches!(
        s,
        D::Succeeded | D::Failed | D::Rejected | D::TimedOut | D::RolledBack | D::Cancelled
    )
}

fn in_flight(s: DeviceRolloutState) -> bool {
    use DeviceRolloutState as D;
    matches!(
        s,
        D::Commanded | D::Downloading | D::Installing | D::Verifying
    )
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
        use DeviceRolloutState as D;
        let mut c = StateCounts::default();
        for d in self.devices.values().filter(|d| d.wave == wave) {
            c.targeted += 1;
            match d.state {
                D::Succeeded => c.succeeded += 1,
                D::Failed | D::RolledBack | D::Cancelled => c.failed += 1,
                D::TimedOut => c.timed_out += 1,
                D::Rejected => c.rejected += 1,
                s if in_flight(s) => c.in_flight += 1,
                _ => {}
            }
        }
        c
    }

    /// Folds one event of the rollout's stream.
    #[must_use]
    pub fn apply(mut self, event: &Payload) -> Self {
        match event {
            Payload::UpdateRequested(r) => {
                self.request = Some(r.clone());
                self.state = Some(RolloutState::Requested);
                self.awaiting_wave = Some(0);
            }
            Payload::ThresholdEvaluated(t) if t.verdict == Verdict::NextWave => {
                self.awaiting_wave = Some(t.wave + 1);
            }
            Payload::RolloutStateChanged(c) => self.state = Some(c.to),
            Payload::WaveStarted(w) => {
                self.current_wave = w.wave;
                self.awaiting_wave = None;
                let list = self.waves.entry(w.wave).or_default();
                for id in &w.device_ids {
                    list.push(id.clone());
                    self.devices.insert(
                        id.clone(),
                        DeviceProgress {
                            wave: w.wave,
                            state: DeviceRolloutState::Targeted,
                            attempt: 0,
                            command_id: None,
                            due: None,
                        },
                    );
                }
            }
            Payload::DeviceCommanded(c) if c.kind == CommandKind::Update => {
                if let Some(d) = self.devices.get_mut(&c.device_id) {
                    d.state = DeviceRolloutState::Commanded;
                    d.attempt = c.attempt;
                    d.command_id = Some(c.command_id);
                    d.due = Some(c.deadline);
                }
            }
            Payload::DeviceTimedOut(t) => {
                if let (Some(d), Some(retry_at)) = (self.devices.get_mut(&t.device_id), t.retry_at)
                {
                    // Waiting for a retry: back to targeted, due once the backoff has passed.
                    d.state = DeviceRolloutState::Targeted;
                    d.due = Some(retry_at);
                }
            }
            Payload::DeviceOutcome(o) => {
                if let Some(d) = self.devices.get_mut(&o.device_id) {
                    d.state = o.state;
                    if is_final(o.state) {
                        d.due = None;
                    }
                }
            }
            _ => {}
        }
        self
    }
}

struct Decisions<'a> {
    rollout: Rollout,
    id: &'a str,
    out: Vec<Payload>,
}

impl Decisions<'_> {
    fn push(&mut self, p: Payload) {
        self.rollout = std::mem::take(&mut self.rollout).apply(&p);
        self.out.push(p);
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

    fn start_wave(&mut self, wave: i32, devices: &[String]) {
        let chunks = devices.chunks(WAVE_CHUNK).count().max(1);
        for (i, chunk) in devices.chunks(WAVE_CHUNK).enumerate() {
            self.push(Payload::WaveStarted(WaveStarted {
                rollout_id: self.id.to_owned(),
                wave,
                chunk: i32::try_from(i).unwrap_or(i32::MAX),
                chunks: i32::try_from(chunks).unwrap_or(i32::MAX),
                device_ids: chunk.to_vec(),
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
        let timeout = self
            .rollout
            .request
            .as_ref()
            .map_or(0, |r| r.strategy.device_timeout_s);
        self.push(Payload::DeviceCommanded(DeviceCommanded {
            rollout_id: self.id.to_owned(),
            device_id: device_id.to_owned(),
            command_id,
            kind,
            attempt,
            deadline: now.saturating_add(timeout.saturating_mul(1_000_000)),
        }));
    }

    /// Commands targeted devices of the current wave until `max_in_flight` are in flight.
    fn fill_window(&mut self, now: Micros) {
        if self.rollout.state != Some(RolloutState::Running) {
            return;
        }
        let Some(req) = self.rollout.request.clone() else {
            return;
        };
        let wave = self.rollout.current_wave;
        let busy = self
            .rollout
            .devices
            .values()
            .filter(|d| in_flight(d.state))
            .count();
        let room = usize::try_from(req.strategy.max_in_flight)
            .unwrap_or(0)
            .saturating_sub(busy);
        let ready: Vec<(String, i32)> = self
            .rollout
            .waves
            .get(&wave)
            .into_iter()
            .flatten()
            .filter_map(|id| {
                let d = &self.rollout.devices[id];
                let waiting =
                    d.state == DeviceRolloutState::Targeted && d.due.is_none_or(|due| due <= now);
                waiting.then(|| (id.clone(), d.attempt + 1))
            })
            .take(room)
            .collect();
        for (id, attempt) in ready {
            self.command(&id, CommandKind::Update, attempt, now);
        }
    }

    /// Evaluates the current wave's thresholds and acts on the verdict.
    fn evaluate(&mut self, now: Micros) {
        let Some(req) = self.rollout.request.clone() else {
            return;
        };
        if self.rollout.state != Some(RolloutState::Running) {
            return;
        }
        let s = &req.strategy;
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
        let failed_pct = pct(c.failed + c.timed_out + c.rejected);
        let min = i64::from(s.min_devices_for_verdict).min(c.targeted);
        let bad = c.failed + c.timed_out + c.rejected;
        let failed_pct = if c.targeted == 0 { 0.0 } else { failed_pct };
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
            Verdict::Abort => self.abort(&rule, now),
            Verdict::Pause => self.change_state(RolloutState::Paused, rule),
            Verdict::Complete => self.change_state(RolloutState::Completed, rule),
            // The runtime resolves the next wave's devices and calls `Input::Start`.
            Verdict::NextWave | Verdict::Continue => {}
        }
    }

    fn abort(&mut self, reason: &str, now: Micros) {
        let policy = self
            .rollout
            .request
            .as_ref()
            .map_or(RollbackPolicy::None, |r| r.strategy.rollback_policy);
        self.change_state(RolloutState::Aborted, reason.to_owned());
        // Devices with a command out are told to cancel; with a rollback policy, devices that
        // already updated are told to roll back.
        let devices: Vec<(String, DeviceRolloutState)> = self
            .rollout
            .devices
            .iter()
            .map(|(id, d)| (id.clone(), d.state))
            .collect();
        let mut rolled_back = 0;
        for (id, state) in devices {
            if in_flight(state) {
                self.command(&id, CommandKind::Cancel, 1, now);
            } else if state == DeviceRolloutState::Succeeded && policy != RollbackPolicy::None {
                self.command(&id, CommandKind::Rollback, 1, now);
                rolled_back += 1;
            }
        }
        if rolled_back > 0 {
            self.change_state(
                RolloutState::RolledBack,
                format!("{reason}; rollback sent to {rolled_back} updated devices"),
            );
        }
    }
}

/// Decides what happens on an input. The returned events are to be appended (in order) to
/// `ota.rollout-events`; commands among them go out through the dispatcher.
pub fn handle(rollout: &Rollout, input: Input) -> Result<Vec<Payload>, DomainError> {
    let id_owned = rollout.id().to_owned();
    let mut d = Decisions {
        rollout: rollout.clone(),
        id: &id_owned,
        out: Vec::new(),
    };
    match input {
        Input::Request(r) => {
            if rollout.request.is_some() {
                return Err(DomainError::AlreadyRequested(r.rollout_id));
            }
            // The id comes from the request itself.
            let out = vec![Payload::UpdateRequested(*r)];
            return Ok(out);
        }
        _ if rollout.request.is_none() => return Err(DomainError::NotRequested),
        Input::Start { now, mut targets } => {
            let state = rollout.state.unwrap_or(RolloutState::Requested);
            if matches!(state, RolloutState::Requested | RolloutState::Scheduled) {
                if targets.is_empty() {
                    return Err(DomainError::NoTargets);
                }
                d.change_state(RolloutState::Running, "start time reached".into());
            } else if state != RolloutState::Running {
                return Err(DomainError::InvalidState(
                    state,
                    "waves start only while running",
                ));
            }
            let Some(wave) = d.rollout.awaiting_wave else {
                return Err(DomainError::InvalidState(state, "no wave is due"));
            };
            targets.sort();
            targets.dedup();
            let fresh: Vec<String> = targets
                .into_iter()
                .filter(|t| !d.rollout.devices.contains_key(t))
                .collect();
            let total = d.rollout.devices.len() + fresh.len();
            let pcts = d
                .rollout
                .request
                .as_ref()
                .map(|r| r.strategy.waves_pct.clone())
                .unwrap_or_default();
            let sizes = wave_sizes(total, &pcts);
            let upto: usize = sizes
                .iter()
                .take(usize::try_from(wave).unwrap_or(0) + 1)
                .sum();
            let take = upto.saturating_sub(d.rollout.devices.len());
            let picked: Vec<String> = fresh.into_iter().take(take).collect();
            d.start_wave(wave, &picked);
            d.fill_window(now);
            d.evaluate(now);
        }
        Input::Pause { reason } => {
            let state = rollout.state.unwrap_or(RolloutState::Requested);
            if state != RolloutState::Running {
                return Err(DomainError::InvalidState(
                    state,
                    "only a running rollout pauses",
                ));
            }
            d.change_state(RolloutState::Paused, format!("operator: {reason}"));
        }
        Input::Resume { now, reason } => {
            let state = rollout.state.unwrap_or(RolloutState::Requested);
            if state != RolloutState::Paused {
                return Err(DomainError::InvalidState(
                    state,
                    "only a paused rollout resumes",
                ));
            }
            d.change_state(RolloutState::Running, format!("operator: {reason}"));
            d.fill_window(now);
            d.evaluate(now);
        }
        Input::Abort { now, reason } => {
            let state = rollout.state.unwrap_or(RolloutState::Requested);
            if matches!(
                state,
                RolloutState::Completed | RolloutState::Aborted | RolloutState::RolledBack
            ) {
                return Err(DomainError::InvalidState(state, "the rollout is over"));
            }
            d.abort(&format!("operator: {reason}"), now);
        }
        Input::Result {
            now,
            device_id,
            command_id,
            outcome,
        } => {
            let Some(dev) = d.rollout.devices.get(&device_id) else {
                return Ok(Vec::new());
            };
            let current = command_id.is_none() || command_id == dev.command_id;
            if !in_flight(dev.state) || !current {
                // A duplicate, late or foreign result changes nothing.
                return Ok(Vec::new());
            }
            let state = match outcome {
                InstallOutcome::Succeeded => DeviceRolloutState::Succeeded,
                InstallOutcome::Failed => DeviceRolloutState::Failed,
                InstallOutcome::Rejected => DeviceRolloutState::Rejected,
                InstallOutcome::RolledBack => DeviceRolloutState::RolledBack,
                InstallOutcome::Cancelled => DeviceRolloutState::Cancelled,
            };
            d.push(Payload::DeviceOutcome(DeviceOutcome {
                rollout_id: id_owned.clone(),
                device_id,
                command_id: dev.command_id,
                state,
                reason: format!("device reported {outcome:?}"),
            }));
            d.fill_window(now);
            d.evaluate(now);
        }
        Input::Tick { now } => {
            let max_retries = d
                .rollout
                .request
                .as_ref()
                .map_or(0, |r| r.strategy.max_retries);
            let backoff = d
                .rollout
                .request
                .as_ref()
                .map_or(0, |r| r.strategy.retry_backoff_s);
            let overdue: Vec<(String, DeviceProgress)> = d
                .rollout
                .devices
                .iter()
                .filter(|(_, p)| in_flight(p.state) && p.due.is_some_and(|due| due <= now))
                .map(|(id, p)| (id.clone(), p.clone()))
                .collect();
            for (device_id, p) in overdue {
                let retry = p.attempt <= max_retries;
                d.push(Payload::DeviceTimedOut(DeviceTimedOut {
                    rollout_id: id_owned.clone(),
                    device_id: device_id.clone(),
                    command_id: p.command_id.unwrap_or_default(),
                    attempt: p.attempt,
                    retry_at: retry.then(|| now.saturating_add(backoff.saturating_mul(1_000_000))),
                }));
                if !retry {
                    d.push(Payload::DeviceOutcome(DeviceOutcome {
                        rollout_id: id_owned.clone(),
                        device_id,
                        command_id: p.command_id,
                        state: DeviceRolloutState::TimedOut,
                        reason: format!("no result after {} attempts", p.attempt),
                    }));
                }
            }
            d.fill_window(now);
            d.evaluate(now);
        }
    }
    Ok(d.out)
}

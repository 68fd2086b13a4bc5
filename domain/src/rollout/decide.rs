//! The rollout decider's rules: waves, the in-flight window, verdicts, aborts and rollbacks,
//! device results, the health gate and the clock.

#[allow(clippy::wildcard_imports)]
use super::*;

/// One decision in the making: the decider's rules, each appending events and applying them
/// to the rollout as it goes, so that later rules see the state earlier ones left.
pub(super) struct Decisions<'a> {
    pub(super) rollout: &'a mut Rollout,
    pub(super) id: &'a str,
    pub(super) out: Vec<Payload>,
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
        let mut parts = super::wave_chunks(targets);
        if parts.is_empty() {
            parts.push(&[]);
        }
        let chunks = parts.len();
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
        let command_id = self
            .rollout
            .command_key
            .derive(self.id, device_id, kind, attempt);
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
        detail: Option<&str>,
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
        // A result counts only for the command the device was sent: one that names no command
        // could have been written by anyone who knows a device id (issue 16).
        let current = command_id.is_some() && command_id == dev.command_id;
        if !in_flight(dev.state) || dev.state == DeviceRolloutState::Verifying || !current {
            // A duplicate, late, foreign or anonymous result changes nothing.
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
            // Why, in the device's words, when it said.
            InstallOutcome::Failed | InstallOutcome::Rejected => (
                if outcome == InstallOutcome::Failed {
                    DeviceRolloutState::Failed
                } else {
                    DeviceRolloutState::Rejected
                },
                match detail {
                    Some(d) => format!("device reported {outcome:?}: {d}"),
                    None => format!("device reported {outcome:?}"),
                },
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

    pub(super) fn run(&mut self, input: Input) -> Result<(), DomainError> {
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
                for chunk in super::wave_chunks(&targets) {
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
                detail,
                device_id,
                command_id,
                outcome,
            } => {
                self.result(now, &device_id, command_id, outcome, detail.as_deref());
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

//! Readable timelines for auditors, built from events alone (pure).
//!
//! A device's heartbeats are summarised (runs per firmware version, version changes, silences
//! longer than a gap); every registration, command and install report is listed. A rollout's
//! timeline lists every request and every saga decision with the inputs and the rule it carried.

use std::fmt::Write as _;

use crate::events::{CommandKind, Payload};
use crate::time::Micros;
use crate::Event;

/// One line of a timeline: when, and what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub at: Micros,
    pub text: String,
}

fn duration(micros: i64) -> String {
    let s = micros / 1_000_000;
    match s {
        s if s >= 86_400 => format!("{}d{}h", s / 86_400, (s % 86_400) / 3600),
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

struct Run {
    version: String,
    first: Micros,
    last: Micros,
    count: u64,
}

/// The timeline of one device from its events in ledger order.
#[must_use]
pub fn device_timeline(events: &[Event], gap: Micros) -> Vec<Line> {
    let mut out = Vec::new();
    let mut run: Option<Run> = None;
    let close = |run: Option<Run>, out: &mut Vec<Line>| {
        if let Some(r) = run {
            out.push(Line {
                at: r.first,
                text: format!(
                    "{} heartbeat(s) on {} over {}",
                    r.count,
                    r.version,
                    duration(r.last - r.first)
                ),
            });
        }
    };
    for e in events {
        let at = e.meta.occurred_at;
        match &e.payload {
            Payload::Heartbeat(h) => {
                match run.as_mut() {
                    Some(r) if r.version == h.firmware_version && at - r.last <= gap => {
                        r.count += 1;
                        r.last = r.last.max(at);
                        continue;
                    }
                    _ => {}
                }
                let previous = run.take();
                if let Some(p) = &previous {
                    if at - p.last > gap {
                        let (prev_last, prev_version) = (p.last, p.version.clone());
                        close(previous, &mut out);
                        out.push(Line {
                            at: prev_last,
                            text: format!("silent for {} (no heartbeat)", duration(at - prev_last)),
                        });
                        if prev_version != h.firmware_version {
                            out.push(Line {
                                at,
                                text: format!("firmware {prev_version} -> {}", h.firmware_version),
                            });
                        }
                    } else {
                        let prev_version = p.version.clone();
                        close(previous, &mut out);
                        out.push(Line {
                            at,
                            text: format!("firmware {prev_version} -> {}", h.firmware_version),
                        });
                    }
                }
                run = Some(Run {
                    version: h.firmware_version.clone(),
                    first: at,
                    last: at,
                    count: 1,
                });
            }
            other => {
                let Some(text) = describe(other) else {
                    continue;
                };
                out.push(Line { at, text });
            }
        }
    }
    close(run, &mut out);
    out.sort_by_key(|l| l.at);
    out
}

/// One line for a device's event other than a heartbeat (heartbeats are summarised in runs),
/// or `None` for events that say nothing about the device itself.
#[must_use]
pub fn describe(payload: &Payload) -> Option<String> {
    Some(match payload {
        Payload::DeviceRegistered(r) => format!(
            "registered: model {}, site {}, firmware {}, tags [{}]{}",
            r.model,
            r.site,
            r.firmware_version,
            r.tags.join(", "),
            r.gateway_id
                .as_ref()
                .map_or(String::new(), |g| format!(", behind gateway {g}"))
        ),
        Payload::InstallProgress(p) => format!(
            "install {:?} {}%{}",
            p.phase,
            p.percent,
            rollout(p.rollout_id.as_deref())
        ),
        Payload::InstallResult(r) => format!(
            "install result {:?}, now on {}{}{}",
            r.outcome,
            r.firmware_version,
            r.error_code
                .as_ref()
                .map_or(String::new(), |c| format!(", error {c}")),
            rollout(r.rollout_id.as_deref())
        ),
        Payload::DeviceCommanded(c) => format!(
            "{} commanded (attempt {}, command {}){}",
            kind(c.kind),
            c.attempt,
            c.command_id,
            rollout(Some(&c.rollout_id))
        ),
        Payload::DeviceTimedOut(t) => format!(
            "timed out on attempt {}{}",
            t.attempt,
            rollout(Some(&t.rollout_id))
        ),
        Payload::DeviceOutcome(o) => format!(
            "outcome {:?}: {}{}",
            o.state,
            o.reason,
            rollout(Some(&o.rollout_id))
        ),
        Payload::UpdateCommand(c) => format!(
            "update to {} sent (command {})",
            c.release.version, c.command_id
        ),
        Payload::RollbackCommand(c) => format!(
            "rollback to {} sent (command {})",
            c.target_version, c.command_id
        ),
        Payload::CancelCommand(c) => {
            format!("cancel sent (command {}): {}", c.command_id, c.reason)
        }
        Payload::CommandDeliveryFailed(f) => format!(
            "delivery of command {} over {}{} failed (attempt {}{}): {}",
            f.command_id,
            f.channel,
            f.gateway_id
                .as_ref()
                .map_or(String::new(), |g| format!(" via gateway {g}")),
            f.attempt,
            if f.gave_up { ", gave up" } else { "" },
            f.error
        ),
        _ => return None,
    })
}

fn rollout(id: Option<&str>) -> String {
    id.map_or(String::new(), |r| format!(" [rollout {r}]"))
}

fn kind(k: CommandKind) -> &'static str {
    match k {
        CommandKind::Update => "update",
        CommandKind::Rollback => "rollback",
        CommandKind::Cancel => "cancel",
    }
}

/// Who was given or lost access, by whom: every token and device credential issued or revoked.
#[must_use]
pub fn access_timeline(events: &[Event]) -> Vec<Line> {
    events
        .iter()
        .filter_map(|e| {
            let text = match &e.payload {
                Payload::TokenIssued(t) => format!(
                    "{} {} issued to {} (token {}) by {}{}",
                    t.role,
                    if t.role == "device" || t.role == "gateway" {
                        "credential"
                    } else {
                        "token"
                    },
                    t.name,
                    t.token_id,
                    t.issued_by,
                    t.expires_at
                        .map_or(String::new(), |at| format!(", expires at {at} µs")),
                ),
                Payload::AdmissionDecided(d) => format!(
                    "admission of device {} (key fingerprint {}) {} by {}",
                    d.device_id,
                    d.fingerprint.get(..16).unwrap_or(&d.fingerprint),
                    if d.accepted { "accepted" } else { "rejected" },
                    d.decided_by
                ),
                Payload::DeviceAttached(a) => match &a.gateway_id {
                    Some(g) => format!(
                        "device {} attached to gateway {} by {}",
                        a.device_id, g, a.attached_by
                    ),
                    None => format!(
                        "device {} reports directly (no gateway), set by {}",
                        a.device_id, a.attached_by
                    ),
                },
                Payload::TokenRevoked(t) => format!(
                    "access of {} (token {}) revoked by {}",
                    t.name, t.token_id, t.revoked_by
                ),
                _ => return None,
            };
            Some(Line {
                at: e.meta.occurred_at,
                text,
            })
        })
        .collect()
}

/// The timeline of one rollout: requests and every decision with its inputs.
#[must_use]
pub fn rollout_timeline(events: &[Event]) -> Vec<Line> {
    let mut out = Vec::new();
    let mut commanded: u64 = 0;
    for e in events {
        let at = e.meta.occurred_at;
        let text = match &e.payload {
            Payload::UpdateRequested(r) => {
                let mut t = format!(
                    "requested by {}: release {} ({} bytes, sha256 {}), waves {:?}%, success >= {}%, failure >= {}% after {} devices, timeout {}s, {} retries, {} in flight, rollback {:?}",
                    r.requested_by, r.release.version, r.release.size_bytes, r.release.sha256, r.strategy.waves_pct,
                    r.strategy.success_threshold_pct, r.strategy.failure_threshold_pct, r.strategy.min_devices_for_verdict,
                    r.strategy.device_timeout_s, r.strategy.max_retries, r.strategy.max_in_flight, r.strategy.rollback_policy
                );
                let s = &r.selector;
                let _ = write!(t, "; targets models {:?} sites {:?} tags {:?} versions {:?} ids {:?}", s.models, s.sites, s.tags, s.current_versions, s.device_ids);
                t
            }
            Payload::PauseRequested(o) => format!("pause requested by {}: {}", o.requested_by, o.reason),
            Payload::ResumeRequested(o) => format!("resume requested by {}: {}", o.requested_by, o.reason),
            Payload::AbortRequested(o) => format!("abort requested by {}: {}", o.requested_by, o.reason),
            Payload::WaveStarted(w) => format!("wave {} started (chunk {}/{}): {} devices", w.wave, w.chunk + 1, w.chunks, w.device_ids.len()),
            Payload::DeviceCommanded(_) => {
                commanded += 1;
                continue;
            }
            Payload::ThresholdEvaluated(t) => format!(
                "verdict {:?} on wave {}: {} [targeted {}, in flight {}, succeeded {}, failed {}, timed out {}, rejected {}]",
                t.verdict, t.wave, t.rule, t.counts.targeted, t.counts.in_flight, t.counts.succeeded, t.counts.failed, t.counts.timed_out, t.counts.rejected
            ),
            Payload::RolloutStateChanged(c) => format!("state {:?} -> {:?}: {}", c.from, c.to, c.reason),
            Payload::DevicesJoined(j) => format!("{} devices joined the fleet and were added to wave {}", j.device_ids.len(), j.wave),
            _ => continue,
        };
        out.push(Line { at, text });
    }
    if commanded > 0 {
        let at = out.last().map_or(0, |l| l.at);
        out.push(Line {
            at,
            text: format!("{commanded} device command(s) issued in all"),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Health, Heartbeat, InstallOutcome, InstallResult};
    use uuid::Uuid;

    const S: i64 = 1_000_000;

    fn texts(lines: Vec<Line>) -> Vec<String> {
        lines.into_iter().map(|l| l.text).collect()
    }

    fn at(t: i64, payload: Payload) -> Event {
        Event::new(Uuid::nil(), payload, t, t, "")
    }

    fn hb(t: i64, fw: &str) -> Event {
        at(
            t,
            Payload::Heartbeat(Heartbeat {
                device_id: "d".into(),
                firmware_version: fw.into(),
                gateway_id: None,
                health: Health {
                    uptime_s: 0,
                    cpu_pct: 0.0,
                    mem_pct: 0.0,
                    temperature_c: 0.0,
                    error_count: 0,
                    signal_dbm: None,
                },
            }),
        )
    }

    #[test]
    fn heartbeats_are_summarised_with_version_changes_and_silences() {
        let mut events: Vec<Event> = (0..10).map(|i| hb(i * 30 * S, "1.0.0")).collect();
        events.push(at(
            301 * S,
            Payload::InstallResult(InstallResult {
                device_id: "d".into(),
                rollout_id: Some("r1".into()),
                command_id: None,
                outcome: InstallOutcome::Succeeded,
                firmware_version: "1.1.0".into(),
                error_code: None,
                message: None,
            }),
        ));
        events.extend((0..3).map(|i| hb(330 * S + i * 30 * S, "1.1.0")));
        events.push(hb(2000 * S, "1.1.0"));
        let lines = texts(device_timeline(&events, 300 * S));
        assert_eq!(
            lines,
            vec![
                "10 heartbeat(s) on 1.0.0 over 4m30s",
                "install result Succeeded, now on 1.1.0 [rollout r1]",
                "firmware 1.0.0 -> 1.1.0",
                "3 heartbeat(s) on 1.1.0 over 1m00s",
                "silent for 26m50s (no heartbeat)",
                "1 heartbeat(s) on 1.1.0 over 0s",
            ]
        );
    }

    #[test]
    fn durations_read_in_the_largest_unit_that_fits() {
        for (secs, text) in [
            (0, "0s"),
            (59, "59s"),
            (60, "1m00s"),
            (3599, "59m59s"),
            (3600, "1h00m"),
            (86_399, "23h59m"),
            (86_400, "1d0h"),
            (90_061, "1d1h"),
        ] {
            assert_eq!(duration(secs * S), text, "{secs} s");
        }
    }

    #[test]
    fn a_new_version_exactly_one_gap_later_is_no_silence() {
        let events = vec![hb(0, "1.0.0"), hb(300 * S, "1.1.0")];
        let lines = texts(device_timeline(&events, 300 * S));
        assert_eq!(
            lines,
            vec![
                "1 heartbeat(s) on 1.0.0 over 0s",
                "firmware 1.0.0 -> 1.1.0",
                "1 heartbeat(s) on 1.1.0 over 0s",
            ]
        );
    }

    fn release() -> crate::events::Release {
        crate::events::Release {
            version: "2.0.0".into(),
            artifact_uri: "https://a/fw.bin".into(),
            sha256: "ab".repeat(32),
            size_bytes: 10,
            signature: "s".into(),
        }
    }

    #[test]
    fn every_device_event_reads_as_one_line() {
        use crate::events::{
            CancelCommand, CommandDeliveryFailed, DeviceCommanded, DeviceOutcome, DeviceRegistered,
            DeviceRolloutState, DeviceTimedOut, InstallPhase, InstallProgress, RollbackCommand,
            UpdateCommand,
        };
        let id = Uuid::from_u128(1);
        let cases: Vec<(Payload, &str)> = vec![
            (
                Payload::DeviceRegistered(DeviceRegistered {
                    device_id: "d".into(),
                    model: "m".into(),
                    site: "s".into(),
                    tags: vec!["a".into(), "b".into()],
                    firmware_version: "1.0.0".into(),
                    gateway_id: Some("gw".into()),
                    hardware_rev: None,
                }),
                "registered: model m, site s, firmware 1.0.0, tags [a, b], behind gateway gw",
            ),
            (
                Payload::InstallProgress(InstallProgress {
                    device_id: "d".into(),
                    rollout_id: Some("r".into()),
                    command_id: None,
                    phase: InstallPhase::Downloading,
                    percent: 40,
                }),
                "install Downloading 40% [rollout r]",
            ),
            (
                Payload::InstallResult(InstallResult {
                    device_id: "d".into(),
                    rollout_id: None,
                    command_id: None,
                    outcome: InstallOutcome::Failed,
                    firmware_version: "1.0.0".into(),
                    error_code: Some("E42".into()),
                    message: None,
                }),
                "install result Failed, now on 1.0.0, error E42",
            ),
            (
                Payload::DeviceCommanded(DeviceCommanded {
                    rollout_id: "r".into(),
                    device_id: "d".into(),
                    command_id: id,
                    kind: CommandKind::Rollback,
                    attempt: 2,
                    deadline: 0,
                }),
                "rollback commanded (attempt 2, command 00000000-0000-0000-0000-000000000001) [rollout r]",
            ),
            (
                Payload::DeviceTimedOut(DeviceTimedOut {
                    rollout_id: "r".into(),
                    device_id: "d".into(),
                    command_id: id,
                    attempt: 3,
                    retry_at: None,
                }),
                "timed out on attempt 3 [rollout r]",
            ),
            (
                Payload::DeviceOutcome(DeviceOutcome {
                    rollout_id: "r".into(),
                    device_id: "d".into(),
                    command_id: None,
                    state: DeviceRolloutState::RolledBack,
                    reason: "why".into(),
                    verify_until: None,
                }),
                "outcome RolledBack: why [rollout r]",
            ),
            (
                Payload::UpdateCommand(UpdateCommand {
                    director: None,
                    command_id: id,
                    device_id: "d".into(),
                    rollout_id: "r".into(),
                    gateway_id: None,
                    release: release(),
                    deadline: 0,
                }),
                "update to 2.0.0 sent (command 00000000-0000-0000-0000-000000000001)",
            ),
            (
                Payload::RollbackCommand(RollbackCommand {
                    command_id: id,
                    device_id: "d".into(),
                    rollout_id: "r".into(),
                    gateway_id: None,
                    target_version: "1.0.0".into(),
                }),
                "rollback to 1.0.0 sent (command 00000000-0000-0000-0000-000000000001)",
            ),
            (
                Payload::CancelCommand(CancelCommand {
                    command_id: id,
                    device_id: "d".into(),
                    rollout_id: "r".into(),
                    gateway_id: None,
                    reason: "stop".into(),
                }),
                "cancel sent (command 00000000-0000-0000-0000-000000000001): stop",
            ),
            (
                Payload::CommandDeliveryFailed(CommandDeliveryFailed {
                    command_id: id,
                    device_id: "d".into(),
                    rollout_id: "r".into(),
                    channel: "amqp".into(),
                    gateway_id: Some("gw".into()),
                    attempt: 3,
                    error: "no route".into(),
                    gave_up: true,
                }),
                "delivery of command 00000000-0000-0000-0000-000000000001 over amqp via gateway gw failed (attempt 3, gave up): no route",
            ),
        ];
        for (payload, text) in cases {
            assert_eq!(describe(&payload).as_deref(), Some(text));
        }
        for (k, name) in [
            (CommandKind::Update, "update"),
            (CommandKind::Rollback, "rollback"),
            (CommandKind::Cancel, "cancel"),
        ] {
            assert_eq!(kind(k), name);
        }
    }

    #[test]
    fn a_rollout_reads_as_its_requests_and_decisions() {
        use crate::events::{
            DeviceCommanded, DevicesJoined, OperatorRequest, RollbackPolicy, RolloutState,
            RolloutStateChanged, StateCounts, Strategy, TargetSelector, ThresholdEvaluated,
            UpdateRequested, Verdict, WaveStarted,
        };
        let op = |reason: &str| OperatorRequest {
            rollout_id: "r".into(),
            requested_by: "ops".into(),
            reason: reason.into(),
        };
        let commanded = |n: u128| {
            Payload::DeviceCommanded(DeviceCommanded {
                rollout_id: "r".into(),
                device_id: "d".into(),
                command_id: Uuid::from_u128(n),
                kind: CommandKind::Update,
                attempt: 1,
                deadline: 0,
            })
        };
        let events = vec![
            at(
                S,
                Payload::UpdateRequested(UpdateRequested {
                    catalogue: None,
                    rollout_id: "r".into(),
                    requested_by: "alice".into(),
                    release: release(),
                    selector: TargetSelector {
                        models: vec!["m".into()],
                        ..TargetSelector::default()
                    },
                    strategy: Strategy {
                        rollback_policy: RollbackPolicy::OnFailure,
                        ..Strategy::default()
                    },
                }),
            ),
            at(
                2 * S,
                Payload::WaveStarted(WaveStarted {
                    rollout_id: "r".into(),
                    wave: 0,
                    chunk: 0,
                    chunks: 1,
                    device_ids: vec!["d".into(), "e".into()],
                    from_versions: vec![],
                }),
            ),
            at(3 * S, commanded(1)),
            at(3 * S, commanded(2)),
            at(4 * S, Payload::PauseRequested(op("night"))),
            at(5 * S, Payload::ResumeRequested(op("day"))),
            at(
                6 * S,
                Payload::DevicesJoined(DevicesJoined {
                    rollout_id: "r".into(),
                    wave: 0,
                    device_ids: vec!["f".into()],
                    from_versions: vec!["1.0.0".into()],
                }),
            ),
            at(
                7 * S,
                Payload::ThresholdEvaluated(ThresholdEvaluated {
                    rollout_id: "r".into(),
                    wave: 0,
                    counts: StateCounts {
                        targeted: 3,
                        in_flight: 1,
                        succeeded: 0,
                        failed: 2,
                        timed_out: 0,
                        rejected: 0,
                    },
                    success_threshold_pct: 95.0,
                    failure_threshold_pct: 5.0,
                    min_devices_for_verdict: 1,
                    rule: "the rule".into(),
                    verdict: Verdict::Abort,
                }),
            ),
            at(
                8 * S,
                Payload::RolloutStateChanged(RolloutStateChanged {
                    rollout_id: "r".into(),
                    from: RolloutState::Running,
                    to: RolloutState::Aborted,
                    reason: "the rule".into(),
                }),
            ),
            at(9 * S, Payload::AbortRequested(op("late"))),
            hb(10 * S, "1.0.0"),
        ];
        let lines: Vec<(i64, String)> = rollout_timeline(&events)
            .into_iter()
            .map(|l| (l.at / S, l.text))
            .collect();
        let expected: Vec<(i64, String)> = [
            (1, "requested by alice: release 2.0.0 (10 bytes, sha256 abababababababababababababababababababababababababababababababab), waves [1.0, 10.0, 50.0, 100.0]%, success >= 95%, failure >= 5% after 5 devices, timeout 1800s, 2 retries, 500 in flight, rollback OnFailure; targets models [\"m\"] sites [] tags [] versions [] ids []"),
            (2, "wave 0 started (chunk 1/1): 2 devices"),
            (4, "pause requested by ops: night"),
            (5, "resume requested by ops: day"),
            (6, "1 devices joined the fleet and were added to wave 0"),
            (7, "verdict Abort on wave 0: the rule [targeted 3, in flight 1, succeeded 0, failed 2, timed out 0, rejected 0]"),
            (8, "state Running -> Aborted: the rule"),
            (9, "abort requested by ops: late"),
            (9, "2 device command(s) issued in all"),
        ]
        .into_iter()
        .map(|(t, s)| (t, s.to_owned()))
        .collect();
        assert_eq!(lines, expected);
        // Without commands, no count line.
        let lines = rollout_timeline(&events[..2]);
        assert_eq!(lines.len(), 2);
        assert!(rollout_timeline(&[]).is_empty());
    }
}

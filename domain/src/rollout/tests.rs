//! Given/when/then tests of the rollout decider: given the events so far, when an input
//! arrives, then these events are decided.

use super::*;
use crate::events::{Release, Strategy, TargetSelector};

mod abort;
mod chunks;
mod fold;
mod verdict;
mod window;

const S: Micros = 1_000_000;

/// The default strategy (four waves, a verdict after five outcomes, rollback on abort) with
/// 90/20 % thresholds, one retry after 30 s, a 600 s timeout, no health gate.
fn strategy() -> Strategy {
    Strategy {
        success_threshold_pct: 90.0,
        failure_threshold_pct: 20.0,
        device_timeout_s: 600,
        max_retries: 1,
        retry_backoff_s: 30,
        max_in_flight: 1000,
        health_gate_window_s: 0,
        ..Strategy::default()
    }
}

fn request(strategy: Strategy) -> UpdateRequested {
    UpdateRequested {
        catalogue: None,
        rollout_id: "r1".into(),
        requested_by: "ops".into(),
        release: Release {
            version: "2.0.0".into(),
            artifact_uri: "https://a/fw.bin".into(),
            sha256: "00".repeat(32),
            size_bytes: 1,
            signature: "s".into(),
        },
        selector: TargetSelector::default(),
        strategy,
    }
}

fn fleet(n: usize) -> Vec<Target> {
    (0..n)
        .map(|i| Target {
            device_id: format!("d{i:03}"),
            firmware_version: "1.0.0".into(),
        })
        .collect()
}

/// Given these inputs from the start, the folded rollout.
fn given(inputs: Vec<Input>) -> Rollout {
    inputs.into_iter().fold(Rollout::default(), |r, i| {
        let events = handle(&r, i).expect("given inputs are valid");
        events.iter().fold(r, |r, e| r.apply(e))
    })
}

fn when(r: &Rollout, input: Input) -> (Rollout, Vec<Payload>) {
    let events = handle(r, input).expect("valid input");
    (events.iter().fold(r.clone(), |r, e| r.apply(e)), events)
}

fn commanded(events: &[Payload], kind: CommandKind) -> Vec<&DeviceCommanded> {
    events
        .iter()
        .filter_map(|e| match e {
            Payload::DeviceCommanded(c) if c.kind == kind => Some(c),
            _ => None,
        })
        .collect()
}

fn verdicts(events: &[Payload]) -> Vec<(Verdict, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            Payload::ThresholdEvaluated(t) => Some((t.verdict, t.rule.clone())),
            _ => None,
        })
        .collect()
}

fn result(r: &Rollout, device: &str, outcome: InstallOutcome, now: Micros) -> Input {
    Input::Result {
        detail: None,
        now,
        device_id: device.into(),
        command_id: r.devices[device].command_id,
        outcome,
    }
}

fn succeed_all_in_flight(mut r: Rollout, now: Micros) -> (Rollout, Vec<Payload>) {
    let mut all = Vec::new();
    loop {
        let next = r
            .devices
            .iter()
            .find(|(_, d)| in_flight(d.state))
            .map(|(id, _)| id.clone());
        let Some(id) = next else { return (r, all) };
        let (r2, events) = when(&r, result(&r, &id, InstallOutcome::Succeeded, now));
        all.extend(events);
        r = r2;
    }
}

#[test]
fn waves_split_the_fleet_by_cumulative_share_with_a_canary_of_at_least_one() {
    assert_eq!(
        wave_sizes(1000, &[1.0, 10.0, 50.0, 100.0]),
        vec![10, 90, 400, 500]
    );
    assert_eq!(wave_sizes(20, &[1.0, 10.0, 50.0, 100.0]), vec![1, 1, 8, 10]);
    assert_eq!(wave_sizes(3, &[1.0, 10.0, 50.0, 100.0]), vec![1, 1, 1, 0]);
    assert_eq!(
        wave_sizes(1000, &[1.0, 10.0, 50.0, 100.0])
            .iter()
            .sum::<usize>(),
        1000
    );
}

#[test]
fn given_a_request_when_started_then_the_canary_wave_is_commanded() {
    let r = given(vec![Input::Request(Box::new(request(strategy())))]);
    let (r, events) = when(
        &r,
        Input::Start {
            now: 10 * S,
            targets: fleet(200),
        },
    );
    assert_eq!(r.state, Some(RolloutState::Running));
    let wave: Vec<&WaveStarted> = events
        .iter()
        .filter_map(|e| {
            if let Payload::WaveStarted(w) = e {
                Some(w)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(wave.len(), 1);
    assert_eq!(wave[0].device_ids, vec!["d000", "d001"], "1% of 200");
    let cmds = commanded(&events, CommandKind::Update);
    assert_eq!(cmds.len(), 2);
    assert_eq!(cmds[0].deadline, 10 * S + 600 * S);
    assert_eq!(
        cmds[0].command_id,
        CommandKey::default().derive("r1", "d000", CommandKind::Update, 1)
    );
}

#[test]
fn given_a_healthy_release_when_every_wave_succeeds_then_the_rollout_completes() {
    let mut r = given(vec![Input::Request(Box::new(request(strategy())))]);
    let mut all = Vec::new();
    for wave in 0..4 {
        let (r2, events) = when(
            &r,
            Input::Start {
                now: S,
                targets: fleet(100),
            },
        );
        all.extend(events);
        let (r3, events) = succeed_all_in_flight(r2, 2 * S);
        all.extend(events);
        r = r3;
        let expected = if wave < 3 {
            Verdict::NextWave
        } else {
            Verdict::Complete
        };
        assert_eq!(
            verdicts(&all).last().map(|v| v.0),
            Some(expected),
            "wave {wave}"
        );
        if wave < 3 {
            assert_eq!(r.awaiting_wave, Some(wave + 1));
        }
    }
    assert_eq!(r.state, Some(RolloutState::Completed));
    assert_eq!(r.devices.len(), 100);
    assert!(r
        .devices
        .values()
        .all(|d| d.state == DeviceRolloutState::Succeeded));
    assert_eq!(
        r.waves.values().map(Vec::len).collect::<Vec<_>>(),
        vec![1, 9, 40, 50]
    );
}

#[test]
fn given_a_bad_release_when_the_canary_fails_then_it_aborts_and_rolls_back_with_the_rule() {
    let mut s = strategy();
    s.waves_pct = vec![10.0, 100.0];
    let r = given(vec![
        Input::Request(Box::new(request(s))),
        Input::Start {
            now: S,
            targets: fleet(100),
        },
    ]);
    assert_eq!(r.waves[&0].len(), 10);
    // Two succeed, then failures: after 5 outcomes 3 of 10 devices (30%) failed, over 20%.
    let mut r = r;
    let mut events = Vec::new();
    for (i, outcome) in [
        InstallOutcome::Succeeded,
        InstallOutcome::Succeeded,
        InstallOutcome::Failed,
        InstallOutcome::Failed,
        InstallOutcome::Failed,
    ]
    .into_iter()
    .enumerate()
    {
        let (r2, e) = when(&r, result(&r, &format!("d{i:03}"), outcome, 3 * S));
        events.extend(e);
        r = r2;
    }
    let v = verdicts(&events);
    assert_eq!(v.len(), 1);
    assert_eq!(v[0].0, Verdict::Abort);
    assert!(v[0].1.contains("30.0% of 10 devices failed"), "{}", v[0].1);
    assert!(v[0].1.contains("failure threshold 20%"), "{}", v[0].1);
    let rollbacks: Vec<&str> = commanded(&events, CommandKind::Rollback)
        .iter()
        .map(|c| c.device_id.as_str())
        .collect();
    assert_eq!(
        rollbacks,
        vec!["d000", "d001"],
        "the devices that updated roll back"
    );
    assert_eq!(
        commanded(&events, CommandKind::Cancel).len(),
        5,
        "devices still installing are cancelled"
    );
    assert_eq!(r.state, Some(RolloutState::RolledBack));
    assert!(matches!(
        handle(
            &r,
            Input::Start {
                now: 4 * S,
                targets: fleet(100)
            }
        ),
        Err(DomainError::InvalidState(..))
    ));
}

#[test]
fn given_a_silent_device_when_its_deadline_passes_then_it_is_retried_after_backoff_then_timed_out()
{
    let mut s = strategy();
    s.waves_pct = vec![100.0];
    s.min_devices_for_verdict = 1;
    s.failure_threshold_pct = 100.0;
    s.success_threshold_pct = 0.0;
    let r = started(s, 1);
    let (r, events) = when(&r, Input::Tick { now: 599 * S });
    assert!(events.is_empty(), "not due yet");
    let (r, events) = when(&r, Input::Tick { now: 600 * S });
    assert!(
        matches!(&events[..], [Payload::DeviceTimedOut(t)] if t.attempt == 1 && t.retry_at == Some(630 * S))
    );
    let (r, events) = when(&r, Input::Tick { now: 629 * S });
    assert!(events.is_empty(), "backing off");
    let (r, events) = when(&r, Input::Tick { now: 630 * S });
    let retry = commanded(&events, CommandKind::Update);
    assert_eq!(retry.len(), 1);
    assert_eq!(retry[0].attempt, 2);
    assert_eq!(
        retry[0].command_id,
        CommandKey::default().derive("r1", "d000", CommandKind::Update, 2)
    );
    let (r, events) = when(&r, Input::Tick { now: 1230 * S });
    assert!(events
        .iter()
        .any(|e| matches!(e, Payload::DeviceTimedOut(t) if t.retry_at.is_none())));
    assert!(events.iter().any(
        |e| matches!(e, Payload::DeviceOutcome(o) if o.state == DeviceRolloutState::TimedOut)
    ));
    assert_eq!(r.devices["d000"].state, DeviceRolloutState::TimedOut);
    // A result for the first, superseded command changes nothing.
    let stale = Input::Result {
        detail: None,
        now: 1231 * S,
        device_id: "d000".into(),
        command_id: Some(CommandKey::default().derive("r1", "d000", CommandKind::Update, 1)),
        outcome: InstallOutcome::Succeeded,
    };
    assert_eq!(handle(&r, stale), Ok(vec![]));
}

#[test]
fn only_ids_derived_with_the_saga_key_count_as_issued() {
    let mut r = started(single_wave(0), 3);
    r.command_key = CommandKey::new([9; 32]);
    let attempt = r.devices["d000"].attempt;
    let real = CommandKey::new([9; 32]).derive("r1", "d000", CommandKind::Update, attempt);
    assert!(r.issued("d000", Some(real)));
    // What anyone could compute from public values: the unkeyed derivation, the default key.
    let public = crate::ids::derived_event_id(&["r1", "d000", "update", &attempt.to_string()]);
    for forged in [
        public,
        CommandKey::default().derive("r1", "d000", CommandKind::Update, attempt),
    ] {
        assert!(!r.issued("d000", Some(forged)), "{forged}");
    }
    assert!(!r.issued("d001", Some(real)), "another device's id");
    assert!(!r.issued("d000", None), "no id at all");
    assert!(
        !r.issued("nobody", Some(real)),
        "a device outside the rollout"
    );
    // The saga's way in: a state before its first event, with the key.
    let keyed = Rollout::keyed(CommandKey::new([9; 32]));
    assert_eq!(keyed.command_key, CommandKey::new([9; 32]));
    assert_eq!(
        Rollout {
            command_key: CommandKey::default(),
            ..keyed
        },
        Rollout::default()
    );
}

#[test]
fn given_a_window_of_two_when_results_arrive_then_commands_follow_at_that_pace() {
    let mut s = strategy();
    s.waves_pct = vec![100.0];
    s.max_in_flight = 2;
    let r = given(vec![Input::Request(Box::new(request(s)))]);
    let (r, events) = when(
        &r,
        Input::Start {
            now: 0,
            targets: fleet(5),
        },
    );
    assert_eq!(commanded(&events, CommandKind::Update).len(), 2);
    let (r, events) = when(&r, result(&r, "d000", InstallOutcome::Succeeded, S));
    let next: Vec<&str> = commanded(&events, CommandKind::Update)
        .iter()
        .map(|c| c.device_id.as_str())
        .collect();
    assert_eq!(next, vec!["d002"]);
    // A duplicate of the same result is ignored.
    let dup = Input::Result {
        detail: None,
        now: S,
        device_id: "d000".into(),
        command_id: r.devices["d000"].command_id,
        outcome: InstallOutcome::Succeeded,
    };
    assert_eq!(handle(&r, dup), Ok(vec![]));
}

#[test]
fn given_a_paused_rollout_then_nothing_is_commanded_until_resumed() {
    let mut s = strategy();
    s.waves_pct = vec![100.0];
    s.max_in_flight = 1;
    let r = started(s, 3);
    let (r, events) = when(
        &r,
        Input::Pause {
            reason: "night shift".into(),
        },
    );
    assert!(
        matches!(&events[..], [Payload::RolloutStateChanged(c)] if c.to == RolloutState::Paused && c.reason.contains("night shift"))
    );
    let (r, events) = when(&r, result(&r, "d000", InstallOutcome::Succeeded, S));
    assert!(
        commanded(&events, CommandKind::Update).is_empty(),
        "paused: the outcome is recorded, nothing new goes out"
    );
    let (r, events) = when(
        &r,
        Input::Resume {
            now: 2 * S,
            reason: "morning".into(),
        },
    );
    assert_eq!(commanded(&events, CommandKind::Update).len(), 1);
    assert_eq!(r.state, Some(RolloutState::Running));
    assert!(matches!(
        handle(
            &r,
            Input::Resume {
                now: 3 * S,
                reason: "again".into()
            }
        ),
        Err(DomainError::InvalidState(RolloutState::Running, _))
    ));
}

#[test]
fn the_same_inputs_give_the_same_decisions() {
    let inputs = || {
        vec![
            Input::Request(Box::new(request(strategy()))),
            Input::Start {
                now: S,
                targets: fleet(300),
            },
            Input::Tick { now: 700 * S },
        ]
    };
    let run = || {
        let mut r = Rollout::default();
        let mut all = Vec::new();
        for i in inputs() {
            let events = handle(&r, i).unwrap();
            r = events.iter().fold(r, |r, e| r.apply(e));
            all.extend(events);
        }
        all
    };
    assert_eq!(run(), run());
}

#[test]
fn inputs_before_the_request_are_refused() {
    assert_eq!(
        handle(&Rollout::default(), Input::Tick { now: 0 }),
        Err(DomainError::NotRequested)
    );
    let r = given(vec![Input::Request(Box::new(request(strategy())))]);
    assert_eq!(
        handle(
            &r,
            Input::Start {
                now: 0,
                targets: vec![]
            }
        ),
        Err(DomainError::NoTargets)
    );
    assert!(matches!(
        handle(&r, Input::Request(Box::new(request(strategy())))),
        Err(DomainError::AlreadyRequested(_))
    ));
}

/// Given request `s`, started now over `n` devices d000, d001, ...
fn started(s: Strategy, n: usize) -> Rollout {
    given(vec![
        Input::Request(Box::new(request(s))),
        Input::Start {
            now: 0,
            targets: fleet(n),
        },
    ])
}

/// A running single wave of `n` devices with room for `window` commands.
fn running(n: usize, window: i32, gate_s: i64) -> Rollout {
    let mut s = single_wave(gate_s);
    s.max_in_flight = window;
    started(s, n)
}

fn single_wave(gate_s: i64) -> Strategy {
    let mut s = strategy();
    s.waves_pct = vec![100.0];
    s.min_devices_for_verdict = 1;
    s.failure_threshold_pct = 100.0;
    s.success_threshold_pct = 0.0;
    s.health_gate_window_s = gate_s;
    s
}

fn health(device: &str, version: &str, now: Micros) -> Input {
    Input::Health {
        now,
        device_id: device.into(),
        firmware_version: version.into(),
    }
}

#[test]
fn given_a_health_gate_an_install_counts_only_after_a_heartbeat_on_the_release() {
    let r = given(vec![
        Input::Request(Box::new(request(single_wave(60)))),
        Input::Start {
            now: 0,
            targets: fleet(3),
        },
    ]);
    let (r, events) = when(&r, result(&r, "d000", InstallOutcome::Succeeded, S));
    assert!(matches!(&events[..], [Payload::DeviceOutcome(o)]
        if o.state == DeviceRolloutState::Verifying && o.verify_until == Some(61 * S)));
    assert_eq!(r.counts(0).in_flight, 3, "verifying is still in flight");
    // The heartbeat on the release passes the gate.
    let (r, events) = when(&r, health("d000", "2.0.0", 2 * S));
    assert!(matches!(&events[..], [Payload::DeviceOutcome(o)]
        if o.state == DeviceRolloutState::Succeeded && o.reason.contains("health gate passed")));
    // A heartbeat on another version fails it.
    let (r, _) = when(&r, result(&r, "d001", InstallOutcome::Succeeded, 3 * S));
    let (r, events) = when(&r, health("d001", "1.0.0", 4 * S));
    assert!(matches!(&events[0], Payload::DeviceOutcome(o)
        if o.state == DeviceRolloutState::Failed && o.reason.contains("not 2.0.0")));
    // Silence until the window closes fails it too; then the wave is complete.
    let (r, _) = when(&r, result(&r, "d002", InstallOutcome::Succeeded, 5 * S));
    let (r, events) = when(&r, Input::Tick { now: 64 * S });
    assert!(events.is_empty(), "window still open");
    let (r, events) = when(&r, Input::Tick { now: 65 * S });
    assert!(matches!(&events[0], Payload::DeviceOutcome(o)
        if o.state == DeviceRolloutState::Failed && o.reason.contains("no heartbeat")));
    assert_eq!(verdicts(&events)[0].0, Verdict::Complete);
    assert_eq!(r.counts(0).succeeded, 1);
    assert_eq!(r.counts(0).failed, 2);
}

#[test]
fn devices_joining_a_running_wave_are_added_and_commanded() {
    let r = running(2, 10, 0);
    let joiner = Target {
        device_id: "new-1".into(),
        firmware_version: "0.9.0".into(),
    };
    let (r, events) = when(
        &r,
        Input::Join {
            now: S,
            targets: vec![joiner, fleet(1)[0].clone()],
        },
    );
    assert!(
        matches!(&events[0], Payload::DevicesJoined(j) if j.device_ids == ["new-1"] && j.from_versions == ["0.9.0"]),
        "only the device not yet in the rollout joins: {events:?}"
    );
    assert_eq!(commanded(&events, CommandKind::Update).len(), 1);
    assert_eq!(r.counts(0).targeted, 3);
    // Once the rollout is over, nobody joins.
    let (r, _) = succeed_all_in_flight(r, 2 * S);
    assert!(r.is_over());
    let (_, events) = when(
        &r,
        Input::Join {
            now: 3 * S,
            targets: vec![Target {
                device_id: "late".into(),
                firmware_version: "0.9.0".into(),
            }],
        },
    );
    assert!(events.is_empty());
}

#[test]
fn a_scheduled_rollout_waits_and_commands_only_inside_its_maintenance_window() {
    let mut s = single_wave(0);
    s.scheduled_start = Some(100 * S);
    let r = given(vec![Input::Request(Box::new(request(s.clone())))]);
    assert_eq!(r.wave_due(50 * S), None, "before the scheduled start");
    let (r, events) = when(&r, Input::Tick { now: 50 * S });
    assert!(
        matches!(&events[..], [Payload::RolloutStateChanged(c)] if c.to == RolloutState::Scheduled)
    );
    assert_eq!(r.wave_due(100 * S), Some(0));
    // A window from 01:00 for an hour.
    s.scheduled_start = None;
    s.maintenance_window = Some(crate::events::MaintenanceWindow {
        start_minute: 60,
        duration_minutes: 60,
    });
    assert!(!may_command(&s, 30 * 60 * S));
    assert!(may_command(&s, 90 * 60 * S));
    assert!(!may_command(&s, 121 * 60 * S));
    assert!(may_command(&s, (24 * 60 + 61) * 60 * S), "every day");
}

#[test]
fn a_saga_that_crashed_after_part_of_its_decisions_decides_only_the_rest() {
    // The uninterrupted run: a result frees two slots of the window.
    let r = running(4, 2, 0);
    let input = result(&r, "d000", InstallOutcome::Succeeded, S);
    let full = handle(&r, input.clone()).unwrap();
    assert_eq!(commanded(&full, CommandKind::Update).len(), 1);
    // The crash: only the outcome made it to the ledger. Folded back, the same input (or the
    // next tick) decides exactly the missing command, with the same id, and nothing twice.
    let partial = r.apply(&full[0]);
    let again = handle(&partial, input).unwrap();
    assert!(
        !again.iter().any(|e| matches!(e, Payload::DeviceOutcome(_))),
        "the outcome is not decided twice"
    );
    assert_eq!(again.len(), full.len() - 1);
    let rest = handle(&partial, Input::Tick { now: S }).unwrap();
    assert_eq!(
        commanded(&rest, CommandKind::Update)
            .iter()
            .map(|c| c.command_id)
            .collect::<Vec<_>>(),
        commanded(&full, CommandKind::Update)
            .iter()
            .map(|c| c.command_id)
            .collect::<Vec<_>>()
    );
}

#[test]
fn an_abort_rolls_back_installed_devices_including_those_still_verifying() {
    let r = running(3, 10, 60);
    let (r, _) = when(&r, result(&r, "d000", InstallOutcome::Succeeded, S));
    let (r, events) = when(
        &r,
        Input::Abort {
            now: 2 * S,
            reason: "stop".into(),
        },
    );
    assert_eq!(commanded(&events, CommandKind::Rollback).len(), 1);
    assert_eq!(commanded(&events, CommandKind::Cancel).len(), 2);
    // The rollback's result is recorded against the device.
    let rb = r.devices["d000"].follow_up.unwrap().1;
    let (r, events) = when(
        &r,
        Input::Result {
            detail: None,
            now: 3 * S,
            device_id: "d000".into(),
            command_id: Some(rb),
            outcome: InstallOutcome::RolledBack,
        },
    );
    assert!(
        matches!(&events[..], [Payload::DeviceOutcome(o)] if o.state == DeviceRolloutState::RolledBack)
    );
    assert_eq!(r.devices["d000"].state, DeviceRolloutState::RolledBack);
}

#[test]
fn given_a_commanded_device_when_a_result_names_no_command_or_another_then_nothing_changes() {
    let r = running(1, 1, 0);
    let device = r.devices.keys().next().cloned().expect("one device");
    assert!(r.devices[&device].command_id.is_some());
    // The forgeries of someone who knows only the device id: no command, or a guessed one.
    for forged in [None, Some(Uuid::from_u128(42))] {
        let (after, events) = when(
            &r,
            Input::Result {
                detail: None,
                now: 1,
                device_id: device.clone(),
                command_id: forged,
                outcome: InstallOutcome::Succeeded,
            },
        );
        assert!(events.is_empty(), "{forged:?}: {events:?}");
        assert_eq!(after.devices[&device].state, r.devices[&device].state);
    }
    // The device's own result for its command counts.
    let (after, _) = when(&r, result(&r, &device, InstallOutcome::Succeeded, 1));
    assert_eq!(after.devices[&device].state, DeviceRolloutState::Succeeded);
}

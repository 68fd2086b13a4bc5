//! The verdict rule at its boundaries.
//!
//! "Failed, timed out or rejected at or over the failure threshold aborts (once at least one
//! device failed and enough outcomes are in); a finished wave at or over the success threshold
//! goes on, under it pauses." Each test pins one edge of that sentence.

use super::*;

/// One wave of `n` devices under `failure_pct`/`success_pct`, a verdict after `min` outcomes.
fn verdict_strategy(failure_pct: f64, success_pct: f64, min: i32) -> Strategy {
    let mut s = single_wave(0);
    s.failure_threshold_pct = failure_pct;
    s.success_threshold_pct = success_pct;
    s.min_devices_for_verdict = min;
    s
}

/// Given a running wave of `n` devices, when devices d000, d001, ... report `outcomes` in
/// turn, then the rollout and every event decided on the way.
fn given_outcomes(s: Strategy, n: usize, outcomes: &[InstallOutcome]) -> (Rollout, Vec<Payload>) {
    let mut r = started(s, n);
    let mut all = Vec::new();
    for (i, outcome) in outcomes.iter().enumerate() {
        let (r2, events) = when(&r, result(&r, &format!("d{i:03}"), *outcome, S));
        all.extend(events);
        r = r2;
    }
    (r, all)
}

fn verdict_kinds(events: &[Payload]) -> Vec<Verdict> {
    verdicts(events).into_iter().map(|v| v.0).collect()
}

use InstallOutcome::{Failed, Rejected, Succeeded};

#[test]
fn given_failures_exactly_at_the_failure_threshold_then_the_wave_aborts() {
    // 2 of 10 devices is 20%: at the threshold, not over it.
    let (r, events) = given_outcomes(verdict_strategy(20.0, 0.0, 1), 10, &[Failed, Failed]);
    let v = verdicts(&events);
    assert_eq!(verdict_kinds(&events), vec![Verdict::Abort], "{v:?}");
    assert!(v[0].1.contains("20.0% of 10 devices"), "{}", v[0].1);
    assert!(
        v[0].1.contains("at or over the failure threshold 20%"),
        "{}",
        v[0].1
    );
    assert_eq!(
        r.state,
        Some(RolloutState::Aborted),
        "nobody updated, nothing to roll back"
    );
}

#[test]
fn given_failures_just_under_the_failure_threshold_then_the_wave_goes_on() {
    let (r, events) = given_outcomes(verdict_strategy(20.5, 0.0, 1), 10, &[Failed, Failed]);
    assert!(verdicts(&events).is_empty(), "{events:?}");
    assert_eq!(r.state, Some(RolloutState::Running));
}

#[test]
fn rejections_count_as_failures_at_the_threshold() {
    let (_, events) = given_outcomes(verdict_strategy(20.0, 0.0, 1), 10, &[Rejected, Failed]);
    assert_eq!(verdict_kinds(&events), vec![Verdict::Abort]);
}

#[test]
fn given_a_finished_wave_exactly_at_the_success_threshold_then_it_passes() {
    // 9 of 10 succeeded is 90%; the one failure (10%) stays under the failure threshold.
    let mut outcomes = vec![Succeeded; 9];
    outcomes.push(Failed);
    let (r, events) = given_outcomes(verdict_strategy(50.0, 90.0, 1), 10, &outcomes);
    assert_eq!(verdict_kinds(&events), vec![Verdict::Complete]);
    assert_eq!(r.state, Some(RolloutState::Completed));
}

#[test]
fn given_a_finished_wave_exactly_at_the_success_threshold_then_the_next_wave_is_due() {
    let mut s = verdict_strategy(50.0, 90.0, 1);
    s.waves_pct = vec![50.0, 100.0];
    let mut outcomes = vec![Succeeded; 9];
    outcomes.push(Failed);
    let (r, events) = given_outcomes(s, 20, &outcomes);
    let v = verdicts(&events);
    assert_eq!(verdict_kinds(&events), vec![Verdict::NextWave], "{v:?}");
    assert!(
        v[0].1.contains("90.0% of 10 devices succeeded"),
        "{}",
        v[0].1
    );
    assert!(
        v[0].1.contains("at or over the success threshold 90%"),
        "{}",
        v[0].1
    );
    assert_eq!(r.awaiting_wave, Some(1));
    assert_eq!(r.state, Some(RolloutState::Running));
}

#[test]
fn given_a_finished_wave_just_under_the_success_threshold_then_it_pauses() {
    let mut outcomes = vec![Succeeded; 9];
    outcomes.push(Failed);
    let (r, events) = given_outcomes(verdict_strategy(50.0, 90.5, 1), 10, &outcomes);
    let v = verdicts(&events);
    assert_eq!(verdict_kinds(&events), vec![Verdict::Pause], "{v:?}");
    assert!(
        v[0].1
            .contains("90.0% succeeded, under the success threshold 90.5%"),
        "{}",
        v[0].1
    );
    assert_eq!(r.state, Some(RolloutState::Paused));
    assert_eq!(r.awaiting_wave, None, "a pause starts no next wave");
}

#[test]
fn given_no_failure_then_even_a_zero_failure_threshold_never_aborts() {
    let (r, events) = given_outcomes(verdict_strategy(0.0, 100.0, 1), 3, &[Succeeded; 3]);
    assert_eq!(verdict_kinds(&events), vec![Verdict::Complete]);
    assert_eq!(r.state, Some(RolloutState::Completed));
}

#[test]
fn given_a_zero_failure_threshold_then_the_first_failure_aborts() {
    let (_, events) = given_outcomes(verdict_strategy(0.0, 100.0, 1), 3, &[Succeeded, Failed]);
    assert_eq!(verdict_kinds(&events), vec![Verdict::Abort]);
}

#[test]
fn failures_over_the_threshold_wait_for_the_minimum_number_of_outcomes() {
    // 2 of 10 failed (20%) after 2 outcomes: under the minimum of 3, no verdict yet.
    let (_, events) = given_outcomes(verdict_strategy(20.0, 0.0, 3), 10, &[Failed, Failed]);
    assert!(verdicts(&events).is_empty(), "{events:?}");
    // The third outcome, a success, reaches the minimum: still 20%, so it aborts.
    let (_, events) = given_outcomes(
        verdict_strategy(20.0, 0.0, 3),
        10,
        &[Failed, Failed, Succeeded],
    );
    assert_eq!(verdict_kinds(&events), vec![Verdict::Abort]);
}

#[test]
fn a_minimum_larger_than_the_wave_is_capped_at_the_wave() {
    // A minimum of 5 in a wave of 2: both outcomes are all there will be.
    let (_, events) = given_outcomes(verdict_strategy(20.0, 0.0, 5), 2, &[Failed]);
    assert!(verdicts(&events).is_empty(), "{events:?}");
    let (_, events) = given_outcomes(verdict_strategy(20.0, 0.0, 5), 2, &[Failed, Succeeded]);
    assert_eq!(verdict_kinds(&events), vec![Verdict::Abort]);
}

#[test]
fn no_verdict_while_outcomes_are_missing_and_under_every_threshold() {
    let (r, events) = given_outcomes(verdict_strategy(50.0, 90.0, 1), 4, &[Succeeded; 3]);
    assert!(verdicts(&events).is_empty(), "{events:?}");
    assert_eq!(r.state, Some(RolloutState::Running));
}

/// Given a running wave of two devices with no retries, when d001 reports `outcome` and d000
/// times out, then every event decided on the way.
fn given_a_timeout_and(s: Strategy, outcome: InstallOutcome) -> (Rollout, Vec<Payload>) {
    let mut s = s;
    s.max_retries = 0;
    let (r, mut events) = given_outcomes(s, 2, &[]);
    let (r, e) = when(&r, result(&r, "d001", outcome, S));
    events.extend(e);
    let (r, e) = when(&r, Input::Tick { now: 600 * S });
    events.extend(e);
    assert_eq!(r.devices["d000"].state, DeviceRolloutState::TimedOut);
    (r, events)
}

#[test]
fn given_a_timeout_at_the_failure_threshold_then_the_wave_aborts() {
    let (r, events) = given_a_timeout_and(verdict_strategy(50.0, 0.0, 1), Succeeded);
    assert_eq!(verdict_kinds(&events), vec![Verdict::Abort]);
    assert_eq!(r.counts(0).timed_out, 1);
}

#[test]
fn given_a_wave_finished_by_a_timeout_under_the_failure_threshold_then_it_is_judged() {
    let (r, events) = given_a_timeout_and(verdict_strategy(60.0, 50.0, 1), Succeeded);
    assert_eq!(verdict_kinds(&events), vec![Verdict::Complete]);
    assert_eq!(r.state, Some(RolloutState::Completed));
}

#[test]
fn given_a_wave_finished_by_a_rejection_under_the_failure_threshold_then_it_is_judged() {
    let (r, events) = given_outcomes(verdict_strategy(60.0, 50.0, 1), 2, &[Rejected, Succeeded]);
    assert_eq!(verdict_kinds(&events), vec![Verdict::Complete]);
    assert_eq!(r.counts(0).rejected, 1);
    assert_eq!(r.counts(0).succeeded, 1);
}

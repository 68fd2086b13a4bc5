//! The fold: events that reach a rollout's stream from elsewhere (routed device reports, a
//! request appended twice) change the rollout exactly as the ledger says.

use super::*;
use crate::events::{InstallPhase, ReportKind, ThresholdEvaluated};

fn routed(
    device: &str,
    report: ReportKind,
    phase: Option<InstallPhase>,
    command_id: Option<Uuid>,
) -> DeviceReportRouted {
    DeviceReportRouted {
        rollout_id: "r1".into(),
        device_id: device.into(),
        command_id,
        report,
        phase,
        outcome: None,
        firmware_version: None,
        error_code: None,
        message: None,
        source_event_id: Uuid::nil(),
        source_partition: 0,
        source_offset: 0,
    }
}

fn progress(device: &str, phase: InstallPhase, command_id: Option<Uuid>) -> Payload {
    Payload::DeviceReportRouted(routed(
        device,
        ReportKind::Progress,
        Some(phase),
        command_id,
    ))
}

fn state(r: &Rollout, device: &str) -> DeviceRolloutState {
    r.devices[device].state
}

#[test]
fn routed_reports_stand_for_results_and_heartbeats_but_progress_for_no_input() {
    let cid = Some(Uuid::from_u128(5));
    let mut report = routed("d1", ReportKind::Result, None, cid);
    report.outcome = Some(InstallOutcome::Failed);
    assert_eq!(
        Input::from_report(7, &report),
        Some(Input::Result {
            detail: None,
            now: 7,
            device_id: "d1".into(),
            command_id: cid,
            outcome: InstallOutcome::Failed,
        })
    );
    report.outcome = None;
    assert_eq!(
        Input::from_report(7, &report),
        None,
        "a result without outcome"
    );
    let mut beat = routed("d1", ReportKind::Heartbeat, None, None);
    beat.firmware_version = Some("2.0.0".into());
    assert_eq!(
        Input::from_report(8, &beat),
        Some(Input::Health {
            now: 8,
            device_id: "d1".into(),
            firmware_version: "2.0.0".into(),
        })
    );
    beat.firmware_version = None;
    assert_eq!(Input::from_report(8, &beat), None);
    let p = routed(
        "d1",
        ReportKind::Progress,
        Some(InstallPhase::Installing),
        cid,
    );
    assert_eq!(Input::from_report(9, &p), None);
}

#[test]
fn given_a_commanded_device_when_it_reports_progress_then_it_moves_through_its_phases() {
    let r = running(2, 10, 0);
    let cid = r.devices["d000"].command_id;
    let r = r.apply(&progress("d000", InstallPhase::Downloading, cid));
    assert_eq!(state(&r, "d000"), DeviceRolloutState::Downloading);
    // A report without a command id counts as the current command's.
    let r = r.apply(&progress("d000", InstallPhase::Rebooting, None));
    assert_eq!(state(&r, "d000"), DeviceRolloutState::Installing);
    let r = r.apply(&progress("d000", InstallPhase::Verifying, None));
    assert_eq!(state(&r, "d000"), DeviceRolloutState::Installing);
    assert_eq!(r.counts(0).in_flight, 2, "still in flight");
    // The command's deadline stands.
    let (_, events) = when(&r, Input::Tick { now: 600 * S });
    assert!(events
        .iter()
        .any(|e| matches!(e, Payload::DeviceTimedOut(t) if t.device_id == "d000")));
}

#[test]
fn progress_for_another_command_or_a_device_not_installing_changes_nothing() {
    // d000 and d001 commanded, d002 still targeted (a window of two).
    let r = running(3, 2, 60);
    let stale = Some(Uuid::from_u128(1));
    assert_eq!(
        r.clone()
            .apply(&progress("d000", InstallPhase::Downloading, stale)),
        r,
        "another command's progress"
    );
    assert_eq!(
        r.clone()
            .apply(&progress("d002", InstallPhase::Downloading, None)),
        r,
        "a device not commanded yet"
    );
    assert_eq!(
        r.clone()
            .apply(&progress("nobody", InstallPhase::Downloading, None)),
        r,
        "a device not in the rollout"
    );
    // d000 verifying (the health gate), d001 failed.
    let (r, _) = when(&r, result(&r, "d000", InstallOutcome::Succeeded, S));
    let (r, _) = when(&r, result(&r, "d001", InstallOutcome::Failed, S));
    assert_eq!(state(&r, "d000"), DeviceRolloutState::Verifying);
    for device in ["d000", "d001"] {
        assert_eq!(
            r.clone()
                .apply(&progress(device, InstallPhase::Downloading, None)),
            r,
            "{device}"
        );
    }
}

#[test]
fn routed_results_and_heartbeats_change_the_fold_only_through_decisions() {
    let r = running(1, 1, 0);
    for kind in [ReportKind::Result, ReportKind::Heartbeat] {
        let report = Payload::DeviceReportRouted(routed("d000", kind, None, None));
        assert_eq!(r.clone().apply(&report), r, "{kind:?}");
    }
}

#[test]
fn a_request_appended_twice_is_folded_once() {
    let r = running(2, 10, 0);
    let mut other = request(strategy());
    other.requested_by = "mallory".into();
    let again = r.clone().apply(&Payload::UpdateRequested(other));
    assert_eq!(again, r);
    assert_eq!(again.state, Some(RolloutState::Running));
}

#[test]
fn only_a_next_wave_verdict_awaits_a_wave() {
    let r = running(2, 10, 0);
    let verdict = |verdict| {
        Payload::ThresholdEvaluated(ThresholdEvaluated {
            rollout_id: "r1".into(),
            wave: 0,
            counts: StateCounts::default(),
            success_threshold_pct: 0.0,
            failure_threshold_pct: 0.0,
            min_devices_for_verdict: 1,
            rule: String::new(),
            verdict,
        })
    };
    for v in [
        Verdict::Continue,
        Verdict::Pause,
        Verdict::Abort,
        Verdict::Complete,
    ] {
        assert_eq!(r.clone().apply(&verdict(v)).awaiting_wave, None, "{v:?}");
    }
    assert_eq!(r.apply(&verdict(Verdict::NextWave)).awaiting_wave, Some(1));
}

#[test]
fn a_refusal_says_why_in_the_devices_words() {
    let cid = Some(Uuid::from_u128(5));
    let mut report = routed("d1", ReportKind::Result, None, cid);
    report.outcome = Some(InstallOutcome::Rejected);
    report.error_code = Some("E_VERIFY".into());
    report.message = Some("director: a replay".into());
    let Some(Input::Result { detail, .. }) = Input::from_report(7, &report) else {
        panic!("a result");
    };
    assert_eq!(detail.as_deref(), Some("E_VERIFY: director: a replay"));
    report.error_code = None;
    let Some(Input::Result { detail, .. }) = Input::from_report(7, &report) else {
        panic!("a result");
    };
    assert_eq!(detail.as_deref(), Some("director: a replay"));
    // The decision carries it.
    let r = running(2, 10, 0);
    let report = Input::Result {
        detail: Some("E_VERIFY: director: a replay".into()),
        now: 5 * S,
        device_id: "d000".into(),
        command_id: r.devices["d000"].command_id,
        outcome: InstallOutcome::Rejected,
    };
    let (_, events) = when(&r, report);
    assert!(
        events.iter().any(|e| matches!(e, Payload::DeviceOutcome(o)
            if o.reason == "device reported Rejected: E_VERIFY: director: a replay")),
        "{events:?}"
    );
}

//! Aborts: who is told to cancel, who to roll back, under each rollback policy, and what the
//! answers to those commands do.

use super::*;

/// A running single wave of three devices under `policy`: d000 installed (succeeded), d001
/// and d002 still installing.
fn one_installed(policy: RollbackPolicy) -> Rollout {
    let mut s = single_wave(0);
    s.rollback_policy = policy;
    s.failure_threshold_pct = 50.0;
    let r = started(s, 3);
    let (r, _) = when(&r, result(&r, "d000", InstallOutcome::Succeeded, S));
    r
}

fn operator_abort(r: &Rollout) -> (Rollout, Vec<Payload>) {
    when(
        r,
        Input::Abort {
            now: 2 * S,
            reason: "stop".into(),
        },
    )
}

fn devices(events: &[Payload], kind: CommandKind) -> Vec<&str> {
    commanded(events, kind)
        .iter()
        .map(|c| c.device_id.as_str())
        .collect()
}

/// Without a rollback policy, and with rollback on failure (an operator's abort is no failure),
/// an abort only cancels what is installing.
#[test]
fn an_operator_abort_rolls_nothing_back_unless_the_policy_says_always() {
    for policy in [RollbackPolicy::None, RollbackPolicy::OnFailure] {
        let (r, events) = operator_abort(&one_installed(policy));
        assert_eq!(
            devices(&events, CommandKind::Rollback),
            Vec::<&str>::new(),
            "{policy:?}"
        );
        assert_eq!(
            devices(&events, CommandKind::Cancel),
            vec!["d001", "d002"],
            "{policy:?}"
        );
        assert_eq!(r.state, Some(RolloutState::Aborted), "{policy:?}");
    }
}

#[test]
fn with_rollback_on_failure_a_threshold_abort_rolls_back() {
    let r = one_installed(RollbackPolicy::OnFailure);
    // Two of three failed: 66.7%, over the 50% threshold.
    let (r, _) = when(&r, result(&r, "d001", InstallOutcome::Failed, 2 * S));
    let (r, events) = when(&r, result(&r, "d002", InstallOutcome::Failed, 2 * S));
    assert_eq!(verdicts(&events)[0].0, Verdict::Abort);
    assert_eq!(devices(&events, CommandKind::Rollback), vec!["d000"]);
    assert_eq!(devices(&events, CommandKind::Cancel), Vec::<&str>::new());
    assert_eq!(r.state, Some(RolloutState::RolledBack));
}

#[test]
fn a_cancelled_install_is_recorded_against_the_cancel_command() {
    let (r, _) = operator_abort(&one_installed(RollbackPolicy::OnAbort));
    let cancel = r.devices["d001"].follow_up.expect("a cancel went out");
    assert_eq!(cancel.0, CommandKind::Cancel);
    let answer = |outcome| Input::Result {
        detail: None,
        now: 3 * S,
        device_id: "d001".into(),
        command_id: Some(cancel.1),
        outcome,
    };
    assert_eq!(
        handle(&r, answer(InstallOutcome::Failed)),
        Ok(vec![]),
        "a cancel answered with anything but Cancelled"
    );
    let (r, events) = when(&r, answer(InstallOutcome::Cancelled));
    assert!(
        matches!(&events[..], [Payload::DeviceOutcome(o)] if o.state == DeviceRolloutState::Cancelled),
        "{events:?}"
    );
    assert_eq!(r.devices["d001"].state, DeviceRolloutState::Cancelled);
    assert_eq!(r.counts(0).failed, 1, "a cancelled device counts as failed");
    assert_eq!(
        handle(&r, answer(InstallOutcome::Cancelled)),
        Ok(vec![]),
        "the same answer again"
    );
}

#[test]
fn an_install_that_finishes_after_the_abort_is_rolled_back_too() {
    let (r, _) = operator_abort(&one_installed(RollbackPolicy::OnAbort));
    // d001 finished before the cancel reached it.
    let (r, events) = when(&r, result(&r, "d001", InstallOutcome::Succeeded, 3 * S));
    assert!(matches!(&events[0], Payload::DeviceOutcome(o)
        if o.state == DeviceRolloutState::Succeeded));
    assert_eq!(devices(&events, CommandKind::Rollback), vec!["d001"]);
    // d002 failed: nothing to roll back.
    let (_, events) = when(&r, result(&r, "d002", InstallOutcome::Failed, 3 * S));
    assert_eq!(devices(&events, CommandKind::Rollback), Vec::<&str>::new());
    // Without a rollback policy, a late success stays.
    let (r, _) = operator_abort(&one_installed(RollbackPolicy::None));
    let (_, events) = when(&r, result(&r, "d001", InstallOutcome::Succeeded, 3 * S));
    assert_eq!(devices(&events, CommandKind::Rollback), Vec::<&str>::new());
}

#[test]
fn a_device_told_to_roll_back_is_not_told_twice() {
    // d000 verifying when the rollout aborts: it is told to roll back; its install result
    // arriving again afterwards sends no second rollback.
    let r = running(2, 10, 60);
    let update = r.devices["d000"].command_id;
    let (r, _) = when(&r, result(&r, "d000", InstallOutcome::Succeeded, S));
    let (r, events) = operator_abort(&r);
    assert_eq!(devices(&events, CommandKind::Rollback), vec!["d000"]);
    let again = Input::Result {
        detail: None,
        now: 3 * S,
        device_id: "d000".into(),
        command_id: update,
        outcome: InstallOutcome::Succeeded,
    };
    assert_eq!(handle(&r, again), Ok(vec![]));
}

#[test]
fn a_verifying_device_reporting_its_result_again_changes_nothing() {
    let r = running(2, 10, 60);
    let (r, _) = when(&r, result(&r, "d000", InstallOutcome::Succeeded, S));
    assert_eq!(r.devices["d000"].state, DeviceRolloutState::Verifying);
    for outcome in [InstallOutcome::Succeeded, InstallOutcome::Failed] {
        assert_eq!(handle(&r, result(&r, "d000", outcome, 2 * S)), Ok(vec![]));
    }
}

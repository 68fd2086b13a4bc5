//! Pace and timing: the in-flight window with retries, the maintenance window's edges, the
//! scheduled start, and how waves share out the fleet.

use super::*;
use crate::events::MaintenanceWindow;

const MINUTE: Micros = 60 * S;

#[test]
fn retries_due_together_wait_for_room_in_the_window() {
    // A window of two: d000 and d001 time out together, d002 takes one freed slot.
    let r = running(3, 2, 0);
    let (r, events) = when(&r, Input::Tick { now: 600 * S });
    assert_eq!(
        commanded(&events, CommandKind::Update)
            .iter()
            .map(|c| c.device_id.as_str())
            .collect::<Vec<_>>(),
        vec!["d002"]
    );
    // Both retries are due at 630 s, with room for one.
    let (r, events) = when(&r, Input::Tick { now: 630 * S });
    let retries = commanded(&events, CommandKind::Update);
    assert_eq!(retries.len(), 1, "{events:?}");
    assert_eq!(
        (retries[0].device_id.as_str(), retries[0].attempt),
        ("d000", 2)
    );
    assert_eq!(r.counts(0).in_flight, 2);
    // d002 answers: the other retry goes out.
    let (_, events) = when(&r, result(&r, "d002", InstallOutcome::Succeeded, 631 * S));
    let retries = commanded(&events, CommandKind::Update);
    assert_eq!(retries.len(), 1);
    assert_eq!(
        (retries[0].device_id.as_str(), retries[0].attempt),
        ("d001", 2)
    );
}

fn window(start_minute: i32, duration_minutes: i32) -> Strategy {
    let mut s = strategy();
    s.maintenance_window = Some(MaintenanceWindow {
        start_minute,
        duration_minutes,
    });
    s
}

#[test]
fn a_maintenance_window_opens_at_its_start_and_closes_at_its_end() {
    let s = window(60, 120);
    assert!(!may_command(&s, 59 * MINUTE));
    assert!(may_command(&s, 60 * MINUTE), "opens on its first minute");
    assert!(
        may_command(&s, 179 * MINUTE + 59 * S),
        "open in its last minute"
    );
    assert!(
        !may_command(&s, 180 * MINUTE),
        "closed once its duration has passed"
    );
    assert!(!may_command(&s, 30 * MINUTE));
}

#[test]
fn a_maintenance_window_across_midnight_wraps() {
    let s = window(23 * 60, 120);
    assert!(may_command(&s, 23 * 60 * MINUTE));
    assert!(may_command(&s, (24 * 60 + 59) * MINUTE));
    assert!(!may_command(&s, (24 * 60 + 60) * MINUTE));
    assert!(!may_command(&s, 22 * 60 * MINUTE));
}

#[test]
fn a_window_of_a_whole_day_is_always_open_and_one_minute_less_is_not() {
    let day = window(600, 24 * 60);
    let almost = window(600, 24 * 60 - 1);
    for minute in [0, 599, 600, 1439] {
        assert!(may_command(&day, minute * MINUTE), "{minute}");
    }
    assert!(may_command(&almost, 600 * MINUTE));
    assert!(
        !may_command(&almost, 599 * MINUTE),
        "the minute before it opens"
    );
}

#[test]
fn a_scheduled_start_opens_on_the_microsecond() {
    let mut s = strategy();
    s.scheduled_start = Some(100 * S);
    assert!(!may_command(&s, 100 * S - 1));
    assert!(may_command(&s, 100 * S));
}

#[test]
fn a_waiting_rollout_says_what_it_waits_for() {
    let scheduled_state = |s: Strategy, now: Micros| {
        let r = given(vec![Input::Request(Box::new(request(s)))]);
        let (_, events) = when(&r, Input::Tick { now });
        match &events[..] {
            [Payload::RolloutStateChanged(c)] if c.to == RolloutState::Scheduled => {
                c.reason.clone()
            }
            other => panic!("{other:?}"),
        }
    };
    // A start at 01:40 and a window from 10:00 for an hour.
    let mut s = window(600, 60);
    s.scheduled_start = Some(100 * MINUTE);
    assert_eq!(
        scheduled_state(s.clone(), 99 * MINUTE),
        format!("waiting for the scheduled start at {} µs", 100 * MINUTE)
    );
    // At the start time itself, and after it, outside the window.
    for now in [100 * MINUTE, 101 * MINUTE] {
        assert_eq!(
            scheduled_state(s.clone(), now),
            "waiting for the maintenance window"
        );
    }
    // After the start, inside the window: nothing to wait for.
    let r = given(vec![Input::Request(Box::new(request(s)))]);
    let (_, events) = when(&r, Input::Tick { now: 610 * MINUTE });
    assert!(events.is_empty(), "{events:?}");
}

#[test]
fn the_last_wave_takes_every_device_left_whatever_its_share() {
    assert_eq!(wave_sizes(10, &[50.0]), vec![10]);
    assert_eq!(wave_sizes(10, &[10.0, 50.0]), vec![1, 9]);
    assert_eq!(wave_sizes(0, &[10.0, 100.0]), vec![0, 0]);
}

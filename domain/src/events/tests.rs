//! The catalogue, the state names, the constructors and the serde forms of events.

use super::*;

#[test]
fn names_round_trip_and_streams_are_assigned() {
    for t in EventType::ALL {
        assert_eq!(EventType::from_name(t.name()), Some(*t));
    }
    assert_eq!(EventType::ALL.len(), 26);
    assert_eq!(EventType::ReleaseRegistered.stream(), Stream::ReleaseEvents);
    assert_eq!(
        EventType::ReleaseStateChanged.stream(),
        Stream::ReleaseEvents
    );
    assert_eq!(EventType::Heartbeat.stream(), Stream::DeviceEvents);
    assert_eq!(
        EventType::ThresholdEvaluated.stream(),
        Stream::RolloutEvents
    );
    assert_eq!(EventType::CancelCommand.stream(), Stream::DeviceCommands);
    assert_eq!(EventType::TokenRevoked.stream(), Stream::AccessEvents);
    assert_eq!(EventType::DeviceAttached.stream(), Stream::AccessEvents);
    assert_eq!(EventType::AdmissionDecided.stream(), Stream::AccessEvents);
    assert_eq!(EventType::from_name("Nope"), None);
}

/// A unit variant's serde name.
fn serde_name<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(name)) => name,
        other => panic!("not a unit variant: {other:?}"),
    }
}

#[test]
fn state_names_are_the_serde_names_and_round_trip() {
    use serde::de::value::{Error, StrDeserializer};
    use serde::de::IntoDeserializer;
    // Both state enums, checked by one body.
    macro_rules! round_trips {
        ($state:ty, $count:literal) => {
            assert_eq!(<$state>::ALL.len(), $count);
            assert_eq!(<$state>::NAMES.len(), $count);
            for (i, s) in <$state>::ALL.into_iter().enumerate() {
                assert_eq!(<$state>::NAMES[i], s.as_str());
                assert_eq!(serde_name(&s), s.as_str());
                assert_eq!(s.to_string(), s.as_str());
                assert_eq!(s.as_str().parse(), Ok(s));
                let de: StrDeserializer<'_, Error> = s.as_str().into_deserializer();
                assert_eq!(<$state>::deserialize(de), Ok(s));
            }
        };
    }
    round_trips!(RolloutState, 7);
    round_trips!(DeviceRolloutState, 11);
    assert_eq!(RolloutState::RolledBack.as_str(), "ROLLED_BACK");
    assert_eq!(DeviceRolloutState::TimedOut.as_str(), "TIMED_OUT");
    assert_eq!(
        RolloutState::NAMES.join(", "),
        "REQUESTED, SCHEDULED, RUNNING, PAUSED, COMPLETED, ABORTED, ROLLED_BACK"
    );
}

#[test]
fn unknown_state_names_are_refused_with_the_list() {
    let e = "running".parse::<RolloutState>().unwrap_err();
    assert_eq!(
        e.to_string(),
        "RolloutState must be one of REQUESTED, SCHEDULED, RUNNING, PAUSED, COMPLETED, ABORTED, ROLLED_BACK, not \"running\""
    );
    assert!("".parse::<DeviceRolloutState>().is_err());
    assert!("TIMED_OUT ".parse::<DeviceRolloutState>().is_err());
}

#[test]
fn an_event_is_keyed_and_named_by_its_payload() {
    let e = Event::new(
        Uuid::nil(),
        Payload::PauseRequested(OperatorRequest {
            rollout_id: "r-9".into(),
            requested_by: "ops".into(),
            reason: String::new(),
        }),
        0,
        0,
        "",
    );
    assert_eq!(e.key(), "r-9");
    assert_eq!(e.event_type(), EventType::PauseRequested);
    assert_eq!(e.event_type().to_string(), "PauseRequested");
    assert_eq!(EventType::Heartbeat.to_string(), "Heartbeat");
}

#[test]
fn uuids_travel_as_hyphenated_strings() {
    let outcome = DeviceOutcome {
        rollout_id: "r".into(),
        device_id: "d".into(),
        command_id: Some(Uuid::from_u128(0xab)),
        state: DeviceRolloutState::Failed,
        reason: String::new(),
        verify_until: None,
    };
    let json = serde_json::to_value(&outcome).unwrap();
    assert_eq!(json["command_id"], "00000000-0000-0000-0000-0000000000ab");
    assert_eq!(
        serde_json::from_value::<DeviceOutcome>(json).unwrap(),
        outcome
    );
    let none = DeviceOutcome {
        command_id: None,
        ..outcome
    };
    let json = serde_json::to_value(&none).unwrap();
    assert_eq!(json["command_id"], serde_json::Value::Null);
    assert_eq!(serde_json::from_value::<DeviceOutcome>(json).unwrap(), none);
    let meta = EventMeta {
        event_id: Uuid::from_u128(0xcd),
        occurred_at: 1,
        recorded_at: 2,
        trace_id: "t".into(),
    };
    let json = serde_json::to_value(&meta).unwrap();
    assert_eq!(json["event_id"], "00000000-0000-0000-0000-0000000000cd");
    assert_eq!(serde_json::from_value::<EventMeta>(json).unwrap(), meta);
    let bad = serde_json::json!({"event_id": "nope", "occurred_at": 1, "recorded_at": 2, "trace_id": "t"});
    assert!(serde_json::from_value::<EventMeta>(bad).is_err());
}

#[test]
fn events_are_built_by_one_constructor() {
    let payload = Payload::AbortRequested(OperatorRequest {
        rollout_id: "r".into(),
        requested_by: "ops".into(),
        reason: "why".into(),
    });
    let e = Event::new(Uuid::from_u128(7), payload.clone(), 1, 2, "t");
    assert_eq!(
        e,
        Event {
            meta: EventMeta {
                event_id: Uuid::from_u128(7),
                occurred_at: 1,
                recorded_at: 2,
                trace_id: "t".into(),
            },
            payload: payload.clone(),
        }
    );
    let a = Event::at(payload.clone(), 3, 4, String::from("u"));
    let b = Event::at(payload.clone(), 3, 4, "u");
    assert_ne!(a.meta.event_id, b.meta.event_id, "fresh ids");
    assert_eq!(a.meta.event_id.get_version_num(), 4);
    assert_eq!((a.meta.occurred_at, a.meta.recorded_at), (3, 4));
    assert_eq!(a.meta.trace_id, "u");
    assert_eq!(a.payload, payload);
    let before = crate::time::now_micros();
    let n = Event::now(payload.clone(), "v");
    let after = crate::time::now_micros();
    assert_eq!(n.meta.occurred_at, n.meta.recorded_at);
    assert!(before <= n.meta.occurred_at && n.meta.occurred_at <= after);
    assert!(
        before > 1_700_000_000_000_000,
        "microseconds since the epoch"
    );
    assert_eq!(n.meta.trace_id, "v");
    assert_eq!(n.meta.event_id.get_version_num(), 4);
    assert_eq!(n.payload, payload);
}

#[test]
fn the_default_strategy_is_the_documented_one() {
    let s = Strategy::default();
    assert_eq!(s.waves_pct, vec![1.0, 10.0, 50.0, 100.0]);
    assert_eq!(
        (s.success_threshold_pct, s.failure_threshold_pct),
        (95.0, 5.0)
    );
    assert_eq!(s.min_devices_for_verdict, 5);
    assert_eq!(
        (s.device_timeout_s, s.max_retries, s.retry_backoff_s),
        (1800, 2, 60)
    );
    assert_eq!((s.max_in_flight, s.health_gate_window_s), (500, 300));
    assert_eq!((s.scheduled_start, s.maintenance_window), (None, None));
    assert_eq!(s.rollback_policy, RollbackPolicy::OnAbort);
}

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
use otaledger_domain::events::*;
use otaledger_domain::{Event, EventMeta, EventType, Payload};
use otaledger_schemas::{decode, encode, encode_with, fingerprint_of, Error, Schemas};
use uuid::Uuid;

fn meta(n: u128) -> EventMeta {
    EventMeta {
        event_id: Uuid::from_u128(n),
        occurred_at: 1_764_000_000_000_000 + n as i64,
        recorded_at: 1_764_000_000_000_500 + n as i64,
        trace_id: format!("{n:032x}"),
    }
}

fn release() -> Release {
    Release {
        version: "2.1.0".into(),
        artifact_uri: "https://artifacts.example/fw/2.1.0.bin".into(),
        sha256: "ab".repeat(32),
        size_bytes: 12_345_678,
        signature: "sig".into(),
    }
}

fn health(signal: Option<i32>) -> Health {
    Health {
        uptime_s: 3600,
        cpu_pct: 12.5,
        mem_pct: 40.25,
        temperature_c: 41.0,
        error_count: 2,
        signal_dbm: signal,
    }
}

/// One event of every type, with optional fields both set and unset somewhere.
fn samples() -> Vec<Event> {
    let cmd = Uuid::from_u128(77);
    let req = |who: &str| OperatorRequest {
        rollout_id: "r1".into(),
        requested_by: who.into(),
        reason: "why".into(),
    };
    let payloads = vec![
        Payload::DeviceRegistered(DeviceRegistered {
            device_id: "d1".into(),
            model: "elevator-x".into(),
            site: "berlin".into(),
            tags: vec!["eu".into(), "prod".into()],
            firmware_version: "2.0.0".into(),
            gateway_id: Some("gw-1".into()),
            hardware_rev: None,
        }),
        Payload::Heartbeat(Heartbeat {
            device_id: "d1".into(),
            firmware_version: "2.0.0".into(),
            gateway_id: None,
            health: health(Some(-67)),
        }),
        Payload::InstallProgress(InstallProgress {
            device_id: "d1".into(),
            rollout_id: Some("r1".into()),
            command_id: Some(cmd),
            phase: InstallPhase::Installing,
            percent: 55,
        }),
        Payload::InstallResult(InstallResult {
            device_id: "d1".into(),
            rollout_id: None,
            command_id: Some(cmd),
            outcome: InstallOutcome::RolledBack,
            firmware_version: "2.0.0".into(),
            error_code: Some("E42".into()),
            message: None,
        }),
        Payload::UpdateRequested(UpdateRequested {
            catalogue: Some(Box::new(CatalogueRelease {
                release_id: "fw-2.0.0".into(),
                hardware_revs: vec!["rev-2".into()],
                allow_downgrade: true,
            })),
            rollout_id: "r1".into(),
            requested_by: "ops".into(),
            release: release(),
            selector: TargetSelector {
                models: vec!["elevator-x".into()],
                sites: vec![],
                tags: vec!["eu".into()],
                current_versions: vec!["2.0.0".into()],
                device_ids: vec![],
            },
            strategy: Strategy {
                waves_pct: vec![1.0, 10.0, 50.0, 100.0],
                success_threshold_pct: 95.0,
                failure_threshold_pct: 5.0,
                min_devices_for_verdict: 5,
                device_timeout_s: 600,
                max_retries: 2,
                retry_backoff_s: 30,
                max_in_flight: 500,
                health_gate_window_s: 120,
                scheduled_start: Some(1_764_000_100_000_000),
                maintenance_window: Some(MaintenanceWindow {
                    start_minute: 120,
                    duration_minutes: 180,
                }),
                rollback_policy: RollbackPolicy::OnAbort,
            },
        }),
        Payload::PauseRequested(req("alice")),
        Payload::ResumeRequested(req("bob")),
        Payload::AbortRequested(req("carol")),
        Payload::WaveStarted(WaveStarted {
            rollout_id: "r1".into(),
            wave: 0,
            chunk: 0,
            chunks: 1,
            device_ids: vec!["d1".into(), "d2".into()],
            from_versions: vec!["1.0.0".into(), "1.0.1".into()],
        }),
        Payload::DeviceCommanded(DeviceCommanded {
            rollout_id: "r1".into(),
            device_id: "d1".into(),
            command_id: cmd,
            kind: CommandKind::Update,
            attempt: 1,
            deadline: 1_764_000_600_000_000,
        }),
        Payload::DeviceOutcome(DeviceOutcome {
            rollout_id: "r1".into(),
            device_id: "d1".into(),
            command_id: None,
            state: DeviceRolloutState::TimedOut,
            reason: "no result in 600 s".into(),
            verify_until: None,
        }),
        Payload::DeviceOutcome(DeviceOutcome {
            rollout_id: "r1".into(),
            device_id: "d2".into(),
            command_id: Some(cmd),
            state: DeviceRolloutState::Verifying,
            reason: "installed; waiting for a heartbeat".into(),
            verify_until: Some(1_764_000_900_000_000),
        }),
        Payload::DeviceReportRouted(DeviceReportRouted {
            rollout_id: "r1".into(),
            device_id: "d1".into(),
            command_id: Some(cmd),
            report: ReportKind::Result,
            phase: None,
            outcome: Some(InstallOutcome::Succeeded),
            firmware_version: Some("2.0.0".into()),
            error_code: None,
            message: None,
            source_event_id: Uuid::from_u128(99),
            source_partition: 3,
            source_offset: 1_234,
        }),
        Payload::DeviceReportRouted(DeviceReportRouted {
            rollout_id: "r1".into(),
            device_id: "d1".into(),
            command_id: None,
            report: ReportKind::Progress,
            phase: Some(InstallPhase::Downloading),
            outcome: None,
            firmware_version: None,
            error_code: Some("E_VERIFY".into()),
            message: Some("the SHA-256 differs".into()),
            source_event_id: Uuid::from_u128(98),
            source_partition: 0,
            source_offset: 0,
        }),
        Payload::DevicesJoined(DevicesJoined {
            rollout_id: "r1".into(),
            wave: 2,
            device_ids: vec!["d9".into()],
            from_versions: vec!["1.0.0".into()],
        }),
        Payload::DeviceTimedOut(DeviceTimedOut {
            rollout_id: "r1".into(),
            device_id: "d1".into(),
            command_id: cmd,
            attempt: 2,
            retry_at: Some(1_764_000_630_000_000),
        }),
        Payload::ThresholdEvaluated(ThresholdEvaluated {
            rollout_id: "r1".into(),
            wave: 0,
            counts: StateCounts {
                targeted: 10,
                in_flight: 0,
                succeeded: 4,
                failed: 6,
                timed_out: 0,
                rejected: 0,
            },
            success_threshold_pct: 95.0,
            failure_threshold_pct: 5.0,
            min_devices_for_verdict: 5,
            rule: "failed 60% >= 5%".into(),
            verdict: Verdict::Abort,
        }),
        Payload::RolloutStateChanged(RolloutStateChanged {
            rollout_id: "r1".into(),
            from: RolloutState::Running,
            to: RolloutState::Aborted,
            reason: "threshold".into(),
        }),
        Payload::UpdateCommand(UpdateCommand {
            director: Some("{\"signed\":{}}".into()),
            command_id: cmd,
            device_id: "d1".into(),
            rollout_id: "r1".into(),
            gateway_id: Some("gw-1".into()),
            release: release(),
            deadline: 1_764_000_700_000_000,
        }),
        Payload::RollbackCommand(RollbackCommand {
            command_id: cmd,
            device_id: "d1".into(),
            rollout_id: "r1".into(),
            gateway_id: None,
            target_version: "2.0.0".into(),
        }),
        Payload::CancelCommand(CancelCommand {
            command_id: cmd,
            device_id: "d1".into(),
            rollout_id: "r1".into(),
            gateway_id: None,
            reason: "aborted".into(),
        }),
        Payload::CommandDeliveryFailed(CommandDeliveryFailed {
            command_id: cmd,
            device_id: "d1".into(),
            rollout_id: "r1".into(),
            channel: "amqp".into(),
            gateway_id: Some("gw-9".into()),
            attempt: 3,
            error: "NO_ROUTE".into(),
            gave_up: true,
        }),
        Payload::TokenIssued(TokenIssued {
            token_id: "0123456789abcdef".into(),
            name: "alice".into(),
            role: "operator".into(),
            expires_at: Some(1_800_000_000_000_000),
            issued_by: "admin".into(),
            scope: Some(r#"{"models":[],"sites":["berlin"],"tags":[],"current_versions":[],"device_ids":[]}"#.into()),
        }),
        Payload::TokenIssued(TokenIssued {
            token_id: "fedcba9876543210".into(),
            name: "dev-1".into(),
            role: "device".into(),
            expires_at: None,
            issued_by: "admin".into(),
            scope: None,
        }),
        Payload::TokenRevoked(TokenRevoked {
            token_id: "0123456789abcdef".into(),
            name: "alice".into(),
            revoked_by: "admin".into(),
        }),
        Payload::DeviceAttached(DeviceAttached {
            device_id: "dev-1".into(),
            gateway_id: Some("gw-1".into()),
            attached_by: "admin".into(),
        }),
        Payload::DeviceAttached(DeviceAttached {
            device_id: "dev-1".into(),
            gateway_id: None,
            attached_by: "oidc:alice".into(),
        }),
        Payload::AdmissionDecided(AdmissionDecided {
            device_id: "dev-2".into(),
            fingerprint: "ab".repeat(32),
            accepted: true,
            decided_by: "admin".into(),
        }),
        Payload::ReleaseRegistered(ReleaseRegistered {
            release_id: "fw-2.0.0".into(),
            version: "2.0.0".into(),
            models: vec!["lift-x".into()],
            hardware_revs: vec![],
            sha256: "cd".repeat(32),
            length: 1024,
            notes: "notes".into(),
            registered_by: "alice".into(),
        }),
        Payload::ReleaseStateChanged(ReleaseStateChanged {
            release_id: "fw-2.0.0".into(),
            from: "draft".into(),
            to: "published".into(),
            by: "bob".into(),
            targets_version: Some(3),
            reason: None,
        }),
    ];
    payloads
        .into_iter()
        .enumerate()
        .map(|(i, payload)| Event {
            meta: meta(i as u128 + 1),
            payload,
        })
        .collect()
}

#[test]
fn every_event_type_round_trips() {
    let events = samples();
    let mut seen: Vec<EventType> = events.iter().map(Event::event_type).collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), EventType::ALL.len(), "a sample per event type");
    for event in events {
        let bytes = encode(&event).unwrap();
        assert_eq!(&bytes[..2], &[0xC3, 0x01]);
        let current = Schemas::get().current(event.event_type());
        assert_eq!(fingerprint_of(&bytes).unwrap(), current.fingerprint);
        let decoded = decode(&bytes).unwrap();
        assert_eq!(decoded.event, event, "{}", event.event_type());
        assert_eq!(decoded.writer_version, current.version);
    }
}

#[test]
fn a_v2_reader_reads_heartbeats_written_with_v1() {
    let schemas = Schemas::get();
    let v1 = schemas
        .all()
        .iter()
        .find(|s| s.event_type == EventType::Heartbeat && s.version == 1)
        .unwrap();
    assert_eq!(schemas.current(EventType::Heartbeat).version, 2);
    let event = samples()
        .into_iter()
        .find(|e| e.event_type() == EventType::Heartbeat)
        .unwrap();
    let old_bytes = encode_with(&event, v1).unwrap();
    assert_ne!(old_bytes, encode(&event).unwrap());
    let decoded = decode(&old_bytes).unwrap();
    assert_eq!(decoded.writer_version, 1);
    let Payload::Heartbeat(hb) = decoded.event.payload else {
        panic!("not a heartbeat")
    };
    assert_eq!(
        hb.health.signal_dbm, None,
        "v1 has no signal; the v2 default applies"
    );
    assert_eq!(hb.health.temperature_c, 41.0);
    assert_eq!(decoded.event.meta, event.meta);
}

/// Version 1 of a type, its sample written with it, and that sample read back.
fn written_with_v1(t: EventType) -> (Event, Event) {
    let schemas = Schemas::get();
    let v1 = schemas
        .all()
        .iter()
        .find(|s| s.event_type == t && s.version == 1)
        .unwrap();
    assert_eq!(schemas.current(t).version, 2);
    let event = samples().into_iter().find(|e| e.event_type() == t).unwrap();
    let decoded = decode(&encode_with(&event, v1).unwrap()).unwrap();
    assert_eq!(decoded.writer_version, 1);
    (event, decoded.event)
}

#[test]
fn requests_and_commands_written_before_the_catalogue_read_without_it() {
    let (_, back) = written_with_v1(EventType::UpdateRequested);
    let Payload::UpdateRequested(r) = back.payload else {
        panic!("not a request")
    };
    assert_eq!(r.catalogue, None);
    assert_eq!(r.release.version, "2.1.0");
    let (_, back) = written_with_v1(EventType::UpdateCommand);
    let Payload::UpdateCommand(c) = back.payload else {
        panic!("not a command")
    };
    assert_eq!(c.director, None);
    let (_, back) = written_with_v1(EventType::DeviceReportRouted);
    let Payload::DeviceReportRouted(r) = back.payload else {
        panic!("not a routed report")
    };
    assert_eq!((r.error_code, r.message), (None, None));
}

#[test]
fn truncated_and_foreign_payloads_give_typed_errors() {
    for event in samples() {
        let bytes = encode(&event).unwrap();
        for cut in [0, 1, 5, 9] {
            assert!(matches!(decode(&bytes[..cut]), Err(Error::Truncated(n)) if n == cut));
        }
        for cut in 10..bytes.len() {
            let err = decode(&bytes[..cut]).unwrap_err();
            assert!(
                matches!(err, Error::Datum { .. }),
                "{} cut {cut}: {err}",
                event.event_type()
            );
        }
    }
    let bytes = encode(&samples()[1]).unwrap();
    let mut unknown = bytes.clone();
    unknown[2..10].copy_from_slice(&0xdead_beef_u64.to_le_bytes());
    assert!(matches!(
        decode(&unknown),
        Err(Error::UnknownFingerprint(0xdead_beef))
    ));
    let mut marker = bytes.clone();
    marker[0] = b'{';
    assert!(matches!(decode(&marker), Err(Error::BadMarker)));
    let mut trailing = bytes;
    trailing.push(0);
    assert!(matches!(decode(&trailing), Err(Error::TrailingBytes(1))));
}

#[test]
fn garbage_never_panics() {
    let header = encode(&samples()[4]).unwrap()[..10].to_vec();
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for len in 0..400 {
        let mut bytes = header.clone();
        for _ in 0..len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            bytes.push(seed as u8);
        }
        let _ = decode(&bytes);
    }
}

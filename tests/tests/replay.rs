#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! `otaledger replay` over real topics: every schema version decodes, filters by device,
//! rollout, type and occurred-at time select exactly the right events, garbage is reported and
//! skipped.

use std::time::Duration;

use otaledger_cli::replay::{audit, replay, AuditTarget, Filter, Format};
use otaledger_domain::events::*;
use otaledger_domain::{Event, EventType, Payload};
use otaledger_ledger::kafka::{ensure_topics, EventProducer};
use otaledger_schemas::{encode_with, Schemas};
use otaledger_tests::{config, unique, Services};
use rdkafka::message::OwnedHeaders;
use serde_json::Value;
use uuid::Uuid;

const T0: i64 = 1_764_000_000_000_000;

fn event(n: u128, at: i64, payload: Payload) -> Event {
    Event::new(Uuid::from_u128(n), payload, at, at + 5, "t")
}

fn heartbeat(device: &str, signal: Option<i32>) -> Payload {
    Payload::Heartbeat(Heartbeat {
        device_id: device.into(),
        firmware_version: "1.0.0".into(),
        gateway_id: None,
        health: Health {
            uptime_s: 1,
            cpu_pct: 1.0,
            mem_pct: 1.0,
            temperature_c: 20.0,
            error_count: 0,
            signal_dbm: signal,
        },
    })
}

async fn run(
    kafka: &otaledger_ledger::config::KafkaConfig,
    filter: &Filter,
    format: Format,
) -> (Vec<String>, otaledger_cli::replay::Stats) {
    let mut out = Vec::new();
    let stats = replay(kafka, filter, format, &mut out).await.unwrap();
    (
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect(),
        stats,
    )
}

fn json(lines: &[String]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_decodes_every_version_and_filters_exactly() {
    let services = Services::get().await;
    let cfg = config(&services, &unique("replay"));
    ensure_topics(&cfg.kafka).await.unwrap();
    let producer = EventProducer::new(&cfg.kafka).unwrap();
    let topics = cfg.kafka.topics();
    let cmd = Uuid::from_u128(99);
    producer
        .append_all(&[
            event(1, T0, heartbeat("d1", Some(-60))),
            event(2, T0 + 10_000_000, heartbeat("d2", None)),
            event(
                3,
                T0 + 20_000_000,
                Payload::DeviceCommanded(DeviceCommanded {
                    rollout_id: "r1".into(),
                    device_id: "d1".into(),
                    command_id: cmd,
                    kind: CommandKind::Update,
                    attempt: 1,
                    deadline: T0 + 99,
                }),
            ),
            event(
                4,
                T0 + 30_000_000,
                Payload::PauseRequested(OperatorRequest {
                    rollout_id: "r1".into(),
                    requested_by: "ops".into(),
                    reason: "why".into(),
                }),
            ),
            event(
                5,
                T0 + 40_000_000,
                Payload::PauseRequested(OperatorRequest {
                    rollout_id: "r2".into(),
                    requested_by: "ops".into(),
                    reason: "other".into(),
                }),
            ),
        ])
        .await
        .unwrap();
    // A heartbeat written with schema v1, and a record that is not an event at all.
    let v1 = Schemas::get()
        .all()
        .iter()
        .find(|s| s.event_type == EventType::Heartbeat && s.version == 1)
        .unwrap();
    let old = encode_with(&event(6, T0 + 50_000_000, heartbeat("d1", Some(-70))), v1).unwrap();
    producer
        .send_raw(&topics.device_events, b"d1", &old, OwnedHeaders::new())
        .await
        .unwrap()
        .acked()
        .await
        .unwrap();
    producer
        .send_raw(
            &topics.device_events,
            b"d9",
            b"not avro",
            OwnedHeaders::new(),
        )
        .await
        .unwrap()
        .acked()
        .await
        .unwrap();

    let kafka = cfg.kafka.clone();
    let base = Filter {
        topics: vec![
            topics.device_events.clone(),
            topics.rollout_events.clone(),
            topics.device_commands.clone(),
        ],
        idle: Duration::from_millis(500),
        ..Filter::default()
    };
    let (all, stats) = run(&kafka, &base, Format::Json).await;
    let by = |device: Option<&str>, rollout: Option<&str>| Filter {
        device: device.map(Into::into),
        rollout: rollout.map(Into::into),
        ..base.clone()
    };
    let (by_device, _) = run(&kafka, &by(Some("d1"), None), Format::Json).await;
    let (by_rollout, _) = run(&kafka, &by(None, Some("r1")), Format::Json).await;
    let window = Filter {
        types: vec![EventType::Heartbeat],
        since: Some(T0 + 1),
        until: Some(T0 + 50_000_000),
        ..base.clone()
    };
    let (window, _) = run(&kafka, &window, Format::Json).await;
    let (table, _) = run(&kafka, &base, Format::Table).await;

    assert_eq!(stats.read, 7);
    assert_eq!(stats.undecodable, 1, "garbage is reported and skipped");
    assert_eq!(stats.printed, 6);
    let all = json(&all);
    let old = all
        .iter()
        .find(|e| e["event_id"] == Uuid::from_u128(6).to_string())
        .unwrap();
    assert_eq!(old["schema_version"], 1);
    assert_eq!(
        old["payload"]["health"]["signal_dbm"],
        Value::Null,
        "v1 data read with the v2 schema"
    );
    let ids = |v: &[Value]| {
        let mut ids: Vec<String> = v
            .iter()
            .map(|e| e["event_id"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    };
    let uuid = |n: u128| Uuid::from_u128(n).to_string();
    assert_eq!(
        ids(&json(&by_device)),
        vec![uuid(1), uuid(3), uuid(6)],
        "d1's heartbeats and its command"
    );
    assert_eq!(ids(&json(&by_rollout)), vec![uuid(3), uuid(4)]);
    assert_eq!(
        ids(&json(&window)),
        vec![uuid(2)],
        "heartbeats that occurred in the window"
    );
    assert!(table[0].starts_with("occurred_at"));
    assert_eq!(table.len(), 7);
    assert!(table
        .iter()
        .any(|l| l.contains("PauseRequested") && l.contains("why")));

    let kafka = cfg.kafka.clone();
    let idle = Duration::from_millis(500);
    let device = audit(
        &kafka,
        &AuditTarget::Device {
            id: "d1".into(),
            gap_s: 300,
        },
        idle,
    )
    .await
    .unwrap();
    let rollout = audit(&kafka, &AuditTarget::Rollout { id: "r1".into() }, idle)
        .await
        .unwrap();
    let device: Vec<String> = device.into_iter().map(|l| l.text).collect();
    assert_eq!(device.len(), 2, "{device:?}");
    assert_eq!(device[0], "2 heartbeat(s) on 1.0.0 over 50s", "{device:?}");
    assert!(
        device[1].starts_with("update commanded (attempt 1"),
        "{device:?}"
    );
    let rollout: Vec<String> = rollout.into_iter().map(|l| l.text).collect();
    assert_eq!(
        rollout,
        vec![
            "pause requested by ops: why",
            "1 device command(s) issued in all"
        ]
    );
    otaledger_tests::drop_schema(&services, &cfg.database.schema).await;
}

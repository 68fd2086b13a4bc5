#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! Housekeeping (issue 17, item 8): what the pipeline keeps for later is dropped once it can no
//! longer matter. The router stops awaiting a device's first heartbeat after its success once
//! the longest health-gate window (and an hour) has passed by the ledger's recorded times, so a
//! device that never reports again does not stay in `router_awaiting_heartbeat` for ever.

use std::time::Duration;

use otaledger_cli::components::{prepare, Component};
use otaledger_domain::events::{InstallOutcome, InstallResult, ReportKind};
use otaledger_domain::time::now_micros;
use otaledger_domain::{Event, Payload};
use otaledger_ledger::kafka::EventProducer;
use otaledger_tests::{
    config, decode_all, eventually, migrated_test_pool, records_when, spawn_components, unique,
    Services,
};

const HOUR_US: i64 = 3_600_000_000;

fn succeeded(device: &str, recorded_at: i64) -> Event {
    Event::at(
        Payload::InstallResult(InstallResult {
            device_id: device.to_owned(),
            rollout_id: Some("hk-rollout".into()),
            command_id: None,
            outcome: InstallOutcome::Succeeded,
            firmware_version: "2.0.0".into(),
            error_code: None,
            message: None,
        }),
        recorded_at,
        recorded_at,
        "housekeeping",
    )
}

fn heartbeat(device: &str) -> Event {
    Event::now(
        otaledger_tests::heartbeat_payload(device, "2.0.0"),
        "housekeeping",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_silent_past_the_longest_health_gate_is_no_longer_awaited() {
    let name = unique("housekeeping_router");
    let mut cfg = config(&Services::get().await, &name);
    // One partition: the order of appends is the order of reading.
    cfg.kafka.partitions = 1;
    prepare(&cfg).await.unwrap();
    let pool = migrated_test_pool(&cfg, 2).await;
    let producer = EventProducer::new(&cfg.kafka).unwrap();
    let now = now_micros();
    // Recorded 30 hours ago (29 before the other: past 24 h + 1 h), and an hour ago.
    producer
        .append(&succeeded("hk-silent", now - 30 * HOUR_US))
        .await
        .unwrap();
    producer
        .append(&succeeded("hk-fresh", now - HOUR_US))
        .await
        .unwrap();
    let (stop, _) = spawn_components(&cfg, &[Component::Router]);
    let awaited = eventually(Duration::from_secs(30), "the router's table", || {
        let pool = pool.clone();
        async move {
            let rows: Vec<String> = sqlx::query_scalar(
                "SELECT device_id FROM router_awaiting_heartbeat ORDER BY device_id",
            )
            .fetch_all(&pool)
            .await
            .ok()?;
            (!rows.is_empty()).then_some(rows)
        }
    })
    .await;
    assert_eq!(awaited, ["hk-fresh"]);

    // Both report again: only the awaited device's heartbeat reaches its rollout (the silent
    // one's, read first, would have been routed before the fresh one's).
    producer.append(&heartbeat("hk-silent")).await.unwrap();
    producer.append(&heartbeat("hk-fresh")).await.unwrap();
    let topic = cfg.kafka.topics().rollout_events;
    let routed = records_when(&cfg.kafka, &topic, "the fresh device's heartbeat", |r| {
        decode_all(r).iter().any(|(_, e)| {
            matches!(&e.payload, Payload::DeviceReportRouted(d)
                if d.report == ReportKind::Heartbeat && d.device_id == "hk-fresh")
        })
    })
    .await;
    let heartbeats: Vec<String> = decode_all(&routed)
        .into_iter()
        .filter_map(|(_, e)| match e.payload {
            Payload::DeviceReportRouted(d) if d.report == ReportKind::Heartbeat => {
                Some(d.device_id)
            }
            _ => None,
        })
        .collect();
    assert_eq!(heartbeats, ["hk-fresh"]);
    let metrics = otaledger_ledger::metrics::REGISTRY.render();
    assert!(
        metrics.contains("otaledger_router_awaiting_pruned_total"),
        "{metrics}"
    );
    stop.trigger();
}

/// `otaledger dead-letters list|replay`, as an operator runs them: every dead letter listed with
/// who refused it and why; a device report refused under an older rule is re-driven into the
/// ledger with an id derived from where it sits (twice: the same id); a refusal of authority,
/// a message kept in part and a consumer's refusal are never re-driven, and a report still
/// invalid stays where it is. The dead-letter topic has its retention, the ledger's none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_and_re_driven_only_when_they_can_be_checked_again() {
    use otaledger_domain::rejection::Rejection;
    use otaledger_ledger::dead_letters::{dead_letter, dead_letter_for, Origin};
    use otaledger_tests::otaledger_command;

    let name = unique("housekeeping_dlq");
    let mut cfg = config(&Services::get().await, &name);
    cfg.kafka.partitions = 1;
    cfg.kafka.dead_letter_retention_days = 7;
    prepare(&cfg).await.unwrap();
    let producer = EventProducer::new(&cfg.kafka).unwrap();
    let root = cfg.mqtt.topic_root.clone();
    let good =
        br#"{"firmware_version":"1.0.0","uptime_s":1,"cpu_pct":1,"mem_pct":1,"temperature_c":20}"#;
    let mqtt = |device: &str| format!("{root}/{device}/heartbeat");
    let refused = |reason: &'static str| Rejection::new(reason, "refused in the test");
    let letters: [(String, &str, &[u8], &'static str); 4] = [
        (mqtt("hk-fixed"), "hk-fixed", good, "invalid_field"),
        (mqtt("hk-thief"), "hk-thief", good, "unauthorized"),
        (mqtt("hk-bad"), "hk-bad", b"{not json", "invalid_json"),
        (
            "/v1/devices/hk-http/heartbeats".into(),
            "hk-http",
            good,
            "invalid_field",
        ),
    ];
    for (i, (channel, key, payload, reason)) in letters.iter().enumerate() {
        let origin = Origin {
            source: if i == 3 { "http" } else { "mqtt" },
            channel,
            partition: None,
            offset: None,
        };
        dead_letter(
            &producer,
            &origin,
            key.as_bytes(),
            payload,
            &refused(reason),
        )
        .await
        .unwrap()
        .acked()
        .await
        .unwrap();
    }
    let origin = Origin {
        source: "kafka",
        channel: "ota.device-events",
        partition: Some(0),
        offset: Some(3),
    };
    dead_letter_for(
        &producer,
        "projector",
        &origin,
        b"hk-db",
        good,
        &refused("unappliable"),
    )
    .await
    .unwrap()
    .acked()
    .await
    .unwrap();

    let run = |args: &[&str]| {
        let out = otaledger_command(&cfg, args, "housekeeping")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (listed, _) = run(&["dead-letters", "list"]);
    assert_eq!(listed.lines().count(), 5, "{listed}");
    assert!(
        listed.contains("\tprojector\tunappliable\thk-db\t"),
        "{listed}"
    );
    assert!(
        listed.contains("\tmqtt\tunauthorized\thk-thief\t"),
        "{listed}"
    );
    let (only_mqtt, _) = run(&[
        "dead-letters",
        "list",
        "--by",
        "mqtt",
        "--reason",
        "invalid_field",
    ]);
    assert_eq!(only_mqtt.lines().count(), 1, "{only_mqtt}");

    let (dry, _) = run(&["dead-letters", "replay", "--dry-run"]);
    assert_eq!(dry.lines().count(), 2, "{dry}");
    assert!(dry.lines().all(|l| l.contains("would append")), "{dry}");
    let (first, summary) = run(&["dead-letters", "replay"]);
    assert!(summary.contains("2 re-driven"), "{summary}");
    assert!(
        summary.contains("1 not re-driven: refused for want of authority"),
        "{summary}"
    );
    assert!(
        summary.contains("1 not re-driven: still refused"),
        "{summary}"
    );
    assert!(
        summary.contains("1 not re-driven: a record of the ledger projector could not apply"),
        "{summary}"
    );
    let (second, _) = run(&["dead-letters", "replay"]);
    let ids = |out: &str| -> Vec<String> {
        out.lines()
            .map(|l| l.rsplit('\t').next().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        ids(&first),
        ids(&second),
        "replaying again appends the same events"
    );

    let topic = cfg.kafka.topics().device_events;
    let events = records_when(&cfg.kafka, &topic, "the re-driven reports", |r| {
        r.len() >= 4
    })
    .await;
    let mut devices: Vec<(String, String)> = decode_all(&events)
        .into_iter()
        .map(|(_, e)| match e.payload {
            Payload::Heartbeat(h) => (h.device_id, e.meta.event_id.to_string()),
            other => panic!("{other:?}"),
        })
        .collect();
    devices.sort();
    devices.dedup();
    let names: Vec<&str> = devices.iter().map(|(d, _)| d.as_str()).collect();
    assert_eq!(names, ["hk-fixed", "hk-http"], "each once, by id");

    // The dead letters keep 7 days (this test's setting); the ledger keeps everything.
    let retention = |topic: String| {
        let kafka = cfg.kafka.clone();
        async move {
            use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
            use rdkafka::client::DefaultClientContext;
            let admin: AdminClient<DefaultClientContext> =
                otaledger_ledger::kafka::client_config(&kafka)
                    .create()
                    .unwrap();
            let described = admin
                .describe_configs(&[ResourceSpecifier::Topic(&topic)], &AdminOptions::new())
                .await
                .unwrap();
            let resource = described.into_iter().next().unwrap().unwrap();
            resource
                .get("retention.ms")
                .and_then(|e| e.value.clone())
                .unwrap_or_default()
        }
    };
    assert_eq!(
        retention(cfg.kafka.topics().dead_letters).await,
        (7 * 86_400_000_i64).to_string()
    );
    assert_eq!(retention(cfg.kafka.topics().device_events).await, "-1");
}

/// A lock connection asks PostgreSQL to probe it (ADR 0001's ownership): a member whose host
/// dies loses its partitions within about the rebalance interval, not after the kernel's two
/// hours. The settings are the server's own, as it reports them for the session (a host cut
/// off for real, with its packets dropped, is not tried here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_connections_ask_postgresql_to_probe_them() {
    let services = Services::get().await;
    let mut conn = otaledger_ledger::db::lock_connection(
        &services.database_url,
        "public",
        Duration::from_secs(8),
    )
    .await
    .unwrap();
    let mut shown = Vec::new();
    for setting in [
        "tcp_keepalives_idle",
        "tcp_keepalives_interval",
        "tcp_keepalives_count",
        "idle_session_timeout",
    ] {
        let v: String = sqlx::query_scalar(&format!("SHOW {setting}"))
            .fetch_one(&mut conn)
            .await
            .unwrap();
        shown.push(v);
    }
    assert_eq!(shown, ["4", "2", "2", "8s"]);
}

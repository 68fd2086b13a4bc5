#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! `otaledger export parquet` read back with DuckDB (the PyPI package, which scripts/test.sh
//! installs): the same counts per event type and per rollout outcome as a replay of the topics,
//! nested and optional fields preserved, and no event twice after the export was killed and
//! re-run.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use otaledger_domain::events::{
    DeviceRegistered, Health, Heartbeat, InstallOutcome, InstallResult, OperatorRequest, Payload,
};
use otaledger_domain::ids::new_event_id;
use otaledger_domain::{Event, EventType};
use otaledger_ledger::kafka::{ensure_topics, EventProducer};
use otaledger_schemas::{encode_with, Schemas};
use otaledger_tests::{
    config, event_at as event, otaledger_command, read_topic, unique, Process, Services,
};
use rdkafka::message::OwnedHeaders;
use serde_json::Value;

const S: i64 = 1_000_000;
const DAY: i64 = 86_400 * S;
const T0: i64 = 1_790_000_000 * S;

fn heartbeat(i: usize, signal: Option<i32>) -> Payload {
    Payload::Heartbeat(Heartbeat {
        device_id: format!("ex-{:04}", i % 500),
        firmware_version: format!("1.{}.0", i % 3),
        gateway_id: None,
        health: Health {
            uptime_s: i as i64,
            cpu_pct: 12.5,
            mem_pct: 40.0,
            temperature_c: 31.0,
            error_count: 0,
            signal_dbm: signal,
        },
    })
}

fn events(n: usize) -> Vec<Event> {
    let mut out = Vec::with_capacity(n + 600);
    for i in 0..500 {
        out.push(event(
            T0 + i as i64,
            Payload::DeviceRegistered(DeviceRegistered {
                device_id: format!("ex-{i:04}"),
                model: "m".into(),
                site: "s".into(),
                tags: vec!["a".into(), "b".into()],
                firmware_version: "1.0.0".into(),
                gateway_id: (i % 4 == 0).then(|| "gw-1".into()),
                hardware_rev: None,
            }),
        ));
    }
    for i in 0..n {
        // Two days, so files split by day too.
        let at = T0 + (i as i64 % 2) * DAY + i as i64;
        out.push(event(at, heartbeat(i, (i % 5 != 0).then_some(-60))));
    }
    for i in 0..90 {
        let outcome = [
            InstallOutcome::Succeeded,
            InstallOutcome::Failed,
            InstallOutcome::Rejected,
        ][i % 3];
        out.push(event(
            T0 + 1000 * S + i as i64,
            Payload::InstallResult(InstallResult {
                device_id: format!("ex-{i:04}"),
                rollout_id: Some(format!("r-{}", i % 2)),
                command_id: Some(new_event_id()),
                outcome,
                firmware_version: "2.0.0".into(),
                error_code: (outcome != InstallOutcome::Succeeded).then(|| "E1".into()),
                message: None,
            }),
        ));
    }
    out.push(event(
        T0 + 2000 * S,
        Payload::PauseRequested(OperatorRequest {
            rollout_id: "r-0".into(),
            requested_by: "ops".into(),
            reason: "check".into(),
        }),
    ));
    out
}

fn export(cfg: &otaledger_ledger::config::Config, out: &std::path::Path) -> Command {
    otaledger_command(
        cfg,
        &[
            "export",
            "parquet",
            "--out",
            out.to_str().unwrap(),
            "--segment-events",
            "4000",
        ],
        "export",
    )
}

fn duckdb(sql: &str) -> Vec<Value> {
    let script = format!(
        "import duckdb, json\nrows = duckdb.sql({sql:?}).fetchall()\nprint(json.dumps([list(r) for r in rows], default=str))"
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "duckdb failed (scripts/test.sh installs the PyPI package duckdb): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_parquet_export_matches_a_replay_and_survives_a_kill() {
    let services = Services::get().await;
    let name = unique("export");
    let cfg = config(&services, &name);
    ensure_topics(&cfg.kafka).await.unwrap();
    let producer = EventProducer::new(&cfg.kafka).unwrap();
    producer.append_all(&events(60_000)).await.unwrap();
    // A heartbeat written with schema v1 (no signal field) and a record that is no event.
    let v1 = Schemas::get()
        .all()
        .iter()
        .find(|s| s.event_type == EventType::Heartbeat && s.version == 1)
        .unwrap();
    let old = encode_with(&event(T0 + 5 * S, heartbeat(7, Some(-70))), v1).unwrap();
    let topics = cfg.kafka.topics();
    for (key, bytes) in [(b"ex-0007".as_slice(), old.as_slice()), (b"x", b"not avro")] {
        producer
            .send_raw(&topics.device_events, key, bytes, OwnedHeaders::new())
            .await
            .unwrap()
            .acked()
            .await
            .unwrap();
    }

    // Killed once it wrote a few segments, then run again to the end.
    let dir = std::env::temp_dir().join(&name);
    // Killed on drop too, so a failing test leaves no exporter running.
    let mut first = Process(
        export(&cfg, &dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let segment = std::fs::read(dir.join("_checkpoint.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v["segment"].as_u64())
            .unwrap_or(0);
        if segment >= 3 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the export made no progress"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill();
    let out = export(&cfg, &dir).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("1 undecodable records skipped"), "{text}");

    // What a replay of the topics says.
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    let mut outcomes: BTreeMap<(String, String), i64> = BTreeMap::new();
    for t in [
        &topics.device_events,
        &topics.rollout_events,
        &topics.device_commands,
    ] {
        let records = read_topic(&cfg.kafka, t).await;
        for e in records
            .iter()
            .filter_map(|r| otaledger_schemas::decode(&r.payload).ok().map(|d| d.event))
        {
            *expected
                .entry(e.event_type().name().to_owned())
                .or_default() += 1;
            if let Payload::InstallResult(r) = &e.payload {
                *outcomes
                    .entry((
                        r.rollout_id.clone().unwrap(),
                        format!("{:?}", r.outcome).to_uppercase(),
                    ))
                    .or_default() += 1;
            }
        }
    }
    let glob = format!("{}/**/*.parquet", dir.display());
    let per_type = duckdb(&format!(
        "SELECT type, count(*), count(DISTINCT event_id) FROM read_parquet('{glob}', hive_partitioning=true, union_by_name=true) GROUP BY type ORDER BY type"
    ));
    let got: BTreeMap<String, i64> = per_type
        .iter()
        .map(|r| (r[0].as_str().unwrap().to_owned(), r[1].as_i64().unwrap()))
        .collect();
    assert_eq!(got, expected);
    for r in &per_type {
        assert_eq!(r[1], r[2], "an event id was exported twice: {r:?}");
    }
    let per_outcome = duckdb(&format!(
        "SELECT rollout_id, outcome, count(*) FROM read_parquet('{}/type=InstallResult/**/*.parquet') GROUP BY ALL ORDER BY ALL",
        dir.display()
    ));
    let got: BTreeMap<(String, String), i64> = per_outcome
        .iter()
        .map(|r| {
            (
                (
                    r[0].as_str().unwrap().to_owned(),
                    r[1].as_str().unwrap().to_owned(),
                ),
                r[2].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, outcomes);
    // Nested records, optional fields, lists and timestamps keep their types.
    let nested = duckdb(&format!(
        "SELECT count(*) FILTER (WHERE health.signal_dbm IS NULL), max(health.cpu_pct), typeof(any_value(occurred_at)), count(DISTINCT day)
         FROM read_parquet('{}/type=Heartbeat/**/*.parquet', hive_partitioning=true)",
        dir.display()
    ));
    assert_eq!(
        nested[0][0], 12_001,
        "1 in 5 of 60,000 without signal, and the v1 heartbeat"
    );
    assert_eq!(nested[0][1].as_f64(), Some(12.5));
    assert_eq!(nested[0][2], "TIMESTAMP WITH TIME ZONE");
    assert_eq!(nested[0][3], 2);
    let tags = duckdb(&format!(
        "SELECT len(tags), count(*) FILTER (WHERE gateway_id IS NULL) FROM read_parquet('{}/type=DeviceRegistered/**/*.parquet') GROUP BY 1",
        dir.display()
    ));
    assert_eq!(tags, vec![serde_json::json!([2, 375])]);

    // A re-run with nothing new adds nothing.
    let out = export(&cfg, &dir).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("exported 0 events"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_follow_keeps_exporting_as_events_arrive_and_stops_on_sigterm() {
    let services = Services::get().await;
    let name = unique("export_follow");
    let cfg = config(&services, &name);
    ensure_topics(&cfg.kafka).await.unwrap();
    let producer = EventProducer::new(&cfg.kafka).unwrap();
    let dir = std::env::temp_dir().join(&name);
    let mut follow = Process(
        otaledger_command(
            &cfg,
            &[
                "export",
                "parquet",
                "--out",
                dir.to_str().unwrap(),
                "--follow",
                "--flush-seconds",
                "1",
            ],
            "export",
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap(),
    );
    let count = |dir: std::path::PathBuf| async move {
        if !dir.join("_checkpoint.json").exists() {
            return 0;
        }
        let rows = duckdb(&format!(
            "SELECT count(*) FROM read_parquet('{}/**/*.parquet', union_by_name=true)",
            dir.display()
        ));
        rows[0][0].as_i64().unwrap()
    };
    for (round, total) in [(0, 1_000), (1, 1_500)] {
        let batch: Vec<Event> = (0..if round == 0 { 1_000 } else { 500 })
            .map(|i| event(T0 + round * DAY + i as i64, heartbeat(i, Some(-50))))
            .collect();
        producer.append_all(&batch).await.unwrap();
        otaledger_tests::eventually(
            Duration::from_secs(60),
            "the follower to export them",
            || {
                let dir = dir.clone();
                async move { (count(dir).await == total).then_some(()) }
            },
        )
        .await;
    }
    let pid = follow.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = follow.0.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let mut text = String::new();
    std::io::Read::read_to_string(&mut follow.0.stdout.take().unwrap(), &mut text).unwrap();
    assert!(text.contains("exported 1500 events"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

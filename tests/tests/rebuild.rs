#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! `otaledger verify`, `otaledger rebuild` (swap and `--until` snapshots) and the summary's
//! `as_of`, against real services, after a projector was killed and restarted mid-stream.

use std::time::Duration;

use axum::http::StatusCode;
use otaledger_domain::events::{
    DeviceRegistered, Health, Heartbeat, Payload, Release, RollbackPolicy, RolloutState,
    RolloutStateChanged, Strategy, TargetSelector, UpdateRequested,
};
use otaledger_domain::Event;
use otaledger_ledger::kafka::{ensure_topics, EventProducer};
use otaledger_tests::rollouts::get;
use otaledger_tests::{
    config, event_at as event, eventually, otaledger_command, spawn_process, test_pool, unique,
    Services,
};

const S: i64 = 1_000_000;
const BASE: i64 = 1_790_000_000 * S;

fn registered(i: usize, at: i64) -> Event {
    event(
        at,
        Payload::DeviceRegistered(DeviceRegistered {
            device_id: format!("rb-{i:04}"),
            model: ["m1", "m2", "m3"][i % 3].into(),
            site: ["s1", "s2"][i % 2].into(),
            tags: vec!["prod".into()],
            firmware_version: "1.0.0".into(),
            gateway_id: None,
            hardware_rev: None,
        }),
    )
}

fn heartbeat(i: usize, version: &str, at: i64) -> Event {
    event(
        at,
        Payload::Heartbeat(Heartbeat {
            device_id: format!("rb-{i:04}"),
            firmware_version: version.into(),
            gateway_id: None,
            health: Health {
                uptime_s: 10,
                cpu_pct: 1.0,
                mem_pct: 2.0,
                temperature_c: 30.0,
                error_count: 0,
                signal_dbm: None,
            },
        }),
    )
}

fn rollout(at: i64) -> Vec<Event> {
    vec![
        event(
            at,
            Payload::UpdateRequested(UpdateRequested {
                catalogue: None,
                rollout_id: "r-rebuild".into(),
                requested_by: "ops".into(),
                release: Release {
                    version: "2.0.0".into(),
                    artifact_uri: "https://a/fw.bin".into(),
                    sha256: "ab".repeat(32),
                    size_bytes: 1,
                    signature: "s".into(),
                },
                selector: TargetSelector::default(),
                strategy: Strategy {
                    waves_pct: vec![100.0],
                    success_threshold_pct: 90.0,
                    failure_threshold_pct: 10.0,
                    min_devices_for_verdict: 1,
                    device_timeout_s: 60,
                    max_retries: 0,
                    retry_backoff_s: 0,
                    max_in_flight: 10,
                    health_gate_window_s: 0,
                    scheduled_start: None,
                    maintenance_window: None,
                    rollback_policy: RollbackPolicy::None,
                },
            }),
        ),
        event(
            at + S,
            Payload::RolloutStateChanged(RolloutStateChanged {
                rollout_id: "r-rebuild".into(),
                from: RolloutState::Requested,
                to: RolloutState::Running,
                reason: "start".into(),
            }),
        ),
    ]
}

fn run(cfg: &otaledger_ledger::config::Config, args: &[&str]) -> (bool, String) {
    let out = otaledger_command(cfg, args, "cli").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let errors = String::from_utf8_lossy(&out.stderr);
    let tail: String = errors.lines().rev().take(5).collect::<Vec<_>>().join("\n");
    (
        out.status.success(),
        format!("{text}\n[stderr tail]\n{tail}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_rebuild_and_snapshots_answer_from_the_ledger() {
    let services = Services::get().await;
    let name = unique("rebuild");
    let cfg = config(&services, &name);
    ensure_topics(&cfg.kafka).await.unwrap();
    let app = otaledger_tests::api_app(&cfg).await;
    let producer = EventProducer::new(&cfg.kafka).unwrap();
    let logs = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&logs).unwrap();

    // First hour: 120 devices register and heartbeat on 1.0.0; a rollout starts.
    let mut first: Vec<Event> = (0..120).map(|i| registered(i, BASE + i as i64)).collect();
    first.extend((0..120).map(|i| heartbeat(i, "1.0.0", BASE + 60 * S + i as i64)));
    first.extend(rollout(BASE + 90 * S));
    producer.append_all(&first).await.unwrap();
    let mut projector = spawn_process(&cfg, "projector", "p1", &logs.join("p1.log"));
    let rollouts = spawn_process(&cfg, "rollout-projector", "r1", &logs.join("r1.log"));
    let mut history = spawn_process(&cfg, "history", "h1", &logs.join("h1.log"));
    // Killed while the second hour streams in, then restarted.
    let second: Vec<Event> = (120..180)
        .map(|i| registered(i, BASE + 3600 * S + i as i64))
        .chain((0..60).map(|i| heartbeat(i, "2.0.0", BASE + 3700 * S + i as i64)))
        .collect();
    let (a, b) = second.split_at(second.len() / 2);
    producer.append_all(a).await.unwrap();
    projector.kill();
    producer.append_all(b).await.unwrap();
    let projector = spawn_process(&cfg, "projector", "p2", &logs.join("p2.log"));
    eventually(
        Duration::from_secs(60),
        "the live projection to hold 180 devices on their versions",
        || async {
            let (_, v) = get(&app, "/v1/fleet/summary").await;
            (v["total"] == 180 && v["by_firmware"]["2.0.0"] == 60).then_some(())
        },
    )
    .await;
    eventually(Duration::from_secs(30), "the rollout view", || async {
        let (s, v) = get(&app, "/v1/rollouts/r-rebuild").await;
        (s == StatusCode::OK && v["state"] == "RUNNING").then_some(())
    })
    .await;

    // The device's history: registration, then heartbeat runs per version, paginated.
    let page = eventually(Duration::from_secs(30), "the device history", || async {
        let (_, v) = get(&app, "/v1/devices/rb-0003/history").await;
        (v["items"].as_array().map_or(0, Vec::len) == 3).then_some(v)
    })
    .await;
    let kinds: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["DeviceRegistered", "Heartbeat", "Heartbeat"],
        "{page}"
    );
    assert_eq!(page["items"][1]["version"], "1.0.0");
    assert_eq!(page["items"][2]["version"], "2.0.0");
    let (_, first) = get(&app, "/v1/devices/rb-0003/history?limit=2").await;
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let (_, rest) = get(
        &app,
        &format!("/v1/devices/rb-0003/history?limit=2&cursor={cursor}"),
    )
    .await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 1);
    assert_eq!(rest["items"][0]["version"], "2.0.0");
    let (status, _) = get(&app, "/v1/devices/nobody/history").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = get(&app, "/v1/devices/rb-0003/history?cursor=x").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Verify: no difference.
    let (ok, out) = run(&cfg, &["verify"]);
    assert!(ok, "{out}");
    assert!(out.contains("equal a rebuild"), "{out}");

    // Verify while heartbeats stream in, the history consumer restarted in the middle (its
    // memory of open runs is gone): rows of devices that moved on during verify are left out,
    // and nothing else differs.
    let streaming = {
        let producer = producer.clone();
        tokio::spawn(async move {
            for round in 0..100_i64 {
                let batch: Vec<Event> = (0..40)
                    .map(|i| heartbeat(i, "2.0.0", BASE + 3800 * S + round * S + i as i64))
                    .collect();
                producer.append_all(&batch).await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    history.kill();
    let history = spawn_process(&cfg, "history", "h2", &logs.join("h2.log"));
    let verify_cfg = cfg.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || run(&verify_cfg, &["verify"]))
        .await
        .unwrap();
    assert!(ok, "verify under live traffic: {out}");
    assert!(out.contains("left out: "), "{out}");
    streaming.await.unwrap();
    // The restarted history joined its first heartbeats to the stored run: still one run on
    // 2.0.0, now of 101 heartbeats.
    eventually(
        Duration::from_secs(60),
        "the history to take every streamed heartbeat",
        || async {
            let (_, v) = get(&app, "/v1/devices/rb-0003/history").await;
            let items = v["items"].as_array()?;
            (items.len() == 3 && items[2]["count"] == 101).then_some(())
        },
    )
    .await;
    eventually(
        Duration::from_secs(60),
        "the fleet view to take every streamed heartbeat",
        || async {
            let (_, v) = get(&app, "/v1/devices/rb-0039").await;
            (v["events"] == 103).then_some(())
        },
    )
    .await;
    let (ok, out) = run(&cfg, &["verify"]);
    assert!(ok, "{out}");
    assert!(!out.contains("left out"), "{out}");

    // A deliberate change to one live row is reported, and only that row.
    let pool = test_pool(&cfg, 1).await;
    sqlx::query("UPDATE devices SET site = 'tampered' WHERE device_id = 'rb-0007'")
        .execute(&pool)
        .await
        .unwrap();
    let (ok, out) = run(&cfg, &["verify"]);
    assert!(!ok, "verify must fail: {out}");
    assert!(out.contains("devices rb-0007:"), "{out}");
    assert!(out.contains("tampered"), "{out}");
    assert_eq!(
        out.matches("\n  live:").count(),
        1,
        "exactly one row differs: {out}"
    );

    // Rebuild swaps a correct copy in while the API keeps answering.
    let (ok, out) = run(&cfg, &["rebuild"]);
    assert!(ok, "{out}");
    let (status, v) = get(&app, "/v1/devices/rb-0007").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["site"], "s2", "{v}");
    // The running projector was fenced onto the rebuilt position and goes on projecting.
    producer
        .append(&registered(500, BASE + 7200 * S))
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "the projector to continue after the swap",
        || async {
            let (_, v) = get(&app, "/v1/fleet/summary").await;
            (v["total"] == 181).then_some(())
        },
    )
    .await;
    let (ok, out) = run(&cfg, &["verify"]);
    assert!(ok, "{out}");

    // The fleet as of the first half hour: 120 devices, all on 1.0.0.
    let until = chrono::DateTime::from_timestamp_micros(BASE + 1800 * S)
        .unwrap()
        .to_rfc3339();
    let (ok, out) = run(&cfg, &["rebuild", "--until", &until]);
    assert!(ok, "{out}");
    let later = chrono::DateTime::from_timestamp_micros(BASE + 2000 * S)
        .unwrap()
        .to_rfc3339();
    let (status, v) = get(
        &app,
        &format!("/v1/fleet/summary?as_of={}", later.replace('+', "%2B")),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["total"], 120, "{v}");
    assert_eq!(v["by_firmware"]["1.0.0"], 120, "{v}");
    assert!(v["by_firmware"].get("2.0.0").is_none(), "{v}");
    let before = chrono::DateTime::from_timestamp_micros(BASE)
        .unwrap()
        .to_rfc3339();
    let (status, _) = get(
        &app,
        &format!("/v1/fleet/summary?as_of={}", before.replace('+', "%2B")),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = get(&app, "/v1/fleet/summary?as_of=yesterday").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    drop((projector, rollouts, history));
}

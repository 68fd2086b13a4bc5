#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! Rollouts end to end on real services: the simulator's devices (over Mosquitto, and behind
//! gateways over RabbitMQ) report to the bridges, the projector builds the fleet view, the
//! saga resolves waves from it and commands devices through the dispatcher, the router brings
//! results and health heartbeats back, the rollout projector answers the API.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use otaledger_cli::components::Component;
use otaledger_domain::events::{CommandKind, Payload, Verdict};
use otaledger_domain::Event;
use otaledger_ledger::config::Config;
use otaledger_ledger::kafka::ensure_topics;
use otaledger_ledger::shutdown::Shutdown;
use otaledger_simulator::{self as simulator, Behaviour, OutcomeRule, SimConfig, SimStats};
use otaledger_tests::{
    config, decode_all, eventually, read_topic, spawn_components, spawn_process, unique, Services,
};
use serde_json::{json, Value};
use tower::ServiceExt;

async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .header("x-otaledger-operator", "test-operator")
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn sim_config(cfg: &Config, devices: usize, prefix: &str, behaviour: Behaviour) -> SimConfig {
    SimConfig {
        devices,
        rate: 400.0,
        gateway_share: 0.2,
        gateways: 3,
        id_prefix: prefix.into(),
        seed: 3,
        rounds: None,
        mqtt_connections: 3,
        mqtt: cfg.mqtt.clone(),
        amqp: cfg.amqp.clone(),
        behaviour,
    }
}

fn rule(s: &str) -> OutcomeRule {
    s.parse().unwrap()
}

/// Starts a simulator task; its statistics come back when the returned shutdown fires.
fn start_sim(sim: SimConfig) -> (Shutdown, tokio::task::JoinHandle<SimStats>) {
    let stop = Shutdown::new();
    let signal = stop.signal();
    let handle = tokio::spawn(async move { simulator::run(sim, signal).await.unwrap() });
    (stop, handle)
}

async fn fleet_size(app: &axum::Router) -> i64 {
    let (_, v) = call(app, "GET", "/v1/fleet/summary", None).await;
    v["total"].as_i64().unwrap_or(0)
}

async fn wait_fleet(app: &axum::Router, n: i64) {
    eventually(
        Duration::from_secs(60),
        "the fleet view to hold every device",
        || async { (fleet_size(app).await >= n).then_some(()) },
    )
    .await;
}

async fn request_rollout(app: &axum::Router, body: &Value) -> String {
    let (status, v) = call(app, "POST", "/v1/rollouts", Some(body)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    v["rollout_id"].as_str().unwrap().to_owned()
}

async fn wait_state(app: &axum::Router, id: &str, states: &[&str], timeout: Duration) -> Value {
    eventually(
        timeout,
        &format!("rollout {id} to reach {states:?}"),
        || async {
            let (status, v) = call(app, "GET", &format!("/v1/rollouts/{id}"), None).await;
            (status == StatusCode::OK && states.contains(&v["state"].as_str().unwrap_or_default()))
                .then_some(v)
        },
    )
    .await
}

async fn rollout_events(cfg: &Config) -> Vec<Event> {
    let records = read_topic(&cfg.kafka, &cfg.kafka.topics().rollout_events).await;
    decode_all(&records).into_iter().map(|(_, e)| e).collect()
}

async fn command_events(cfg: &Config) -> Vec<Event> {
    let records = read_topic(&cfg.kafka, &cfg.kafka.topics().device_commands).await;
    decode_all(&records).into_iter().map(|(_, e)| e).collect()
}

/// Update commands by device, from the saga's decisions: at most one command id per attempt.
fn updates_by_device(events: &[Event]) -> BTreeMap<String, Vec<(i32, uuid::Uuid)>> {
    let mut out: BTreeMap<String, Vec<(i32, uuid::Uuid)>> = BTreeMap::new();
    for e in events {
        if let Payload::DeviceCommanded(c) = &e.payload {
            if c.kind == CommandKind::Update {
                out.entry(c.device_id.clone())
                    .or_default()
                    .push((c.attempt, c.command_id));
            }
        }
    }
    out
}

fn verdicts(events: &[Event]) -> Vec<(i32, Verdict, String)> {
    events
        .iter()
        .filter_map(|e| match &e.payload {
            Payload::ThresholdEvaluated(t) => Some((t.wave, t.verdict, t.rule.clone())),
            _ => None,
        })
        .collect()
}

async fn firmware_counts(cfg: &Config, prefix: &str) -> HashMap<String, i64> {
    let pool = otaledger_ledger::db::pool(&cfg.database.url, &cfg.database.schema, 1)
        .await
        .unwrap();
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT coalesce(firmware_version, ''), count(*) FROM devices WHERE device_id LIKE $1 || '%' GROUP BY 1",
    )
    .bind(prefix)
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    rows.into_iter().collect()
}

const PIPELINE: &[Component] = &[
    Component::Projector,
    Component::MqttBridge,
    Component::AmqpBridge,
    Component::Router,
    Component::RolloutProjector,
];

/// The test's own topics, schema, queues and MQTT root, the API over them, and the pipeline
/// running in this process (with the saga and dispatcher unless the test runs them itself).
async fn start_stack(test: &str, saga_in_process: bool) -> (Config, axum::Router, Shutdown) {
    let services = Services::get().await;
    let cfg = config(&services, &unique(test));
    ensure_topics(&cfg.kafka).await.unwrap();
    let app = otaledger_tests::api_app(&cfg).await;
    let mut all = PIPELINE.to_vec();
    if saga_in_process {
        all.extend([Component::Saga, Component::Dispatcher]);
    }
    let (stack, _handles) = spawn_components(&cfg, &all);
    otaledger_tests::mqtt_bridge_subscribed(&cfg).await;
    (cfg, app, stack)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollout_moves_wave_by_wave_until_every_device_runs_the_release() {
    let (cfg, app, stack) = start_stack("rollout_waves", true).await;
    let behaviour = Behaviour {
        install_ms: 50,
        progress: true,
        ..Behaviour::default()
    };
    let (sim_stop, sim) = start_sim(sim_config(&cfg, 1000, "w-", behaviour));
    wait_fleet(&app, 1000).await;

    let started = std::time::Instant::now();
    let id = request_rollout(
        &app,
        &json!({
            "release": {"version": "9.0.0", "artifact_uri": "https://artifacts.example/fw/9.0.0.bin",
                        "sha256": "ab".repeat(32), "size_bytes": 1_000_000, "signature": "sig"},
            "selector": {"models": ["elevator-gen2", "elevator-gen3", "escalator-e1", "press-p500", "conveyor-c7"]},
            "strategy": {"waves_pct": [1, 10, 50, 100], "max_in_flight": 200,
                         "success_threshold_pct": 95, "failure_threshold_pct": 5,
                         "min_devices_for_verdict": 1, "device_timeout_s": 600,
                         "health_gate_window_s": 30, "rollback_policy": "on_abort"}
        }),
    )
    .await;
    let done = wait_state(
        &app,
        &id,
        &["COMPLETED", "ABORTED", "PAUSED", "ROLLED_BACK"],
        Duration::from_secs(180),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(done["state"], "COMPLETED", "{done}");
    println!("1,000-device rollout: request to completion in {took:?}");
    assert_eq!(done["targeted"], 1000);
    assert_eq!(done["states"]["SUCCEEDED"], 1000, "{done}");
    let waves: Vec<i64> = done["waves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["devices"].as_i64().unwrap())
        .collect();
    assert_eq!(waves, vec![10, 90, 400, 500], "{done}");

    // Every targeted device reports the release (health gate: a heartbeat on it).
    eventually(
        Duration::from_secs(30),
        "every device on 9.0.0 in the fleet view",
        || async {
            let counts = firmware_counts(&cfg, "w-").await;
            (counts.get("9.0.0") == Some(&1000)).then_some(())
        },
    )
    .await;

    // The decisions explain the course: three waves advanced, then complete.
    let (_, timeline) = call(
        &app,
        "GET",
        &format!("/v1/rollouts/{id}/decisions?limit=1000"),
        None,
    )
    .await;
    let summaries: Vec<&str> = timeline["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["summary"].as_str().unwrap())
        .collect();
    assert!(
        summaries
            .iter()
            .filter(|s| s.starts_with("NextWave"))
            .count()
            == 3,
        "{summaries:#?}"
    );
    assert!(
        summaries.iter().any(|s| s.starts_with("Complete")),
        "{summaries:#?}"
    );
    let events = rollout_events(&cfg).await;
    let v = verdicts(&events);
    assert_eq!(
        v.iter().map(|(w, v, _)| (*w, *v)).collect::<Vec<_>>(),
        vec![
            (0, Verdict::NextWave),
            (1, Verdict::NextWave),
            (2, Verdict::NextWave),
            (3, Verdict::Complete)
        ]
    );

    // One update per device, each command id once, a share of them through the gateways.
    let updates = updates_by_device(&events);
    assert_eq!(updates.len(), 1000);
    assert!(
        updates.values().all(|u| u.len() == 1),
        "a device was commanded twice"
    );
    let commands = command_events(&cfg).await;
    let mut ids = HashSet::new();
    let mut via_gateway = 0;
    for e in &commands {
        if let Payload::UpdateCommand(c) = &e.payload {
            assert!(
                ids.insert(c.command_id),
                "command id {} appended twice",
                c.command_id
            );
            via_gateway += usize::from(c.gateway_id.is_some());
        }
    }
    assert_eq!(ids.len(), 1000);
    assert!(
        (100..350).contains(&via_gateway),
        "{via_gateway} commands through gateways"
    );
    let (_, page) = call(
        &app,
        "GET",
        &format!("/v1/rollouts/{id}/devices?state=succeeded&limit=5"),
        None,
    )
    .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 5);
    assert_eq!(page["items"][0]["state"], "SUCCEEDED");
    let (status, _) = call(
        &app,
        "GET",
        &format!("/v1/rollouts/{id}/devices?state=bogus"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = call(&app, "GET", "/v1/rollouts/nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = call(&app, "GET", "/v1/rollouts?state=COMPLETED", None).await;
    assert_eq!(list["items"][0]["rollout_id"], id.as_str());

    sim_stop.trigger();
    let stats = sim.await.unwrap();
    assert!(stats.commands >= 1000, "{stats:?}");
    stack.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_release_aborts_at_the_canary_and_rolls_back_the_devices_that_updated() {
    let (cfg, app, stack) = start_stack("rollout_bad", true).await;
    let behaviour = Behaviour {
        install_ms: 20,
        failures: vec![rule("6.6.6=0.5")],
        ..Behaviour::default()
    };
    let (sim_stop, sim) = start_sim(sim_config(&cfg, 200, "b-", behaviour));
    wait_fleet(&app, 200).await;
    let before = firmware_counts(&cfg, "b-").await;

    let id = request_rollout(
        &app,
        &json!({
            "release": {"version": "6.6.6", "artifact_uri": "https://artifacts.example/fw/6.6.6.bin",
                        "sha256": "cd".repeat(32), "size_bytes": 1_000, "signature": "sig"},
            "selector": {"models": ["elevator-gen2", "elevator-gen3", "escalator-e1", "press-p500", "conveyor-c7"]},
            "strategy": {"waves_pct": [10, 50, 100], "max_in_flight": 50,
                         "success_threshold_pct": 90, "failure_threshold_pct": 20,
                         "min_devices_for_verdict": 20, "device_timeout_s": 600,
                         "health_gate_window_s": 0, "rollback_policy": "on_abort"}
        }),
    )
    .await;
    let done = wait_state(
        &app,
        &id,
        &["ROLLED_BACK", "ABORTED"],
        Duration::from_secs(120),
    )
    .await;
    // The saga appends "aborted" and "rolled back" in one decision; the rollout view may commit
    // between the two (a projection shows a prefix of the ledger), so ABORTED can be seen first.
    let done = if done["state"] == "ABORTED" {
        wait_state(&app, &id, &["ROLLED_BACK"], Duration::from_secs(10)).await
    } else {
        done
    };
    assert_eq!(done["state"], "ROLLED_BACK", "{done}");
    assert_eq!(done["targeted"], 20, "only the canary was targeted: {done}");

    let events = rollout_events(&cfg).await;
    let v = verdicts(&events);
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0].1, Verdict::Abort);
    assert!(
        v[0].2.contains("at or over the failure threshold 20%"),
        "{}",
        v[0].2
    );
    let rollbacks: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.payload {
            Payload::DeviceCommanded(c) if c.kind == CommandKind::Rollback => {
                Some(c.device_id.clone())
            }
            _ => None,
        })
        .collect();
    assert!(!rollbacks.is_empty());
    // Rollbacks reach the devices that updated: each reports it and runs its old version again.
    eventually(
        Duration::from_secs(60),
        "every rollback to be reported",
        || async {
            let (_, page) = call(
                &app,
                "GET",
                &format!("/v1/rollouts/{id}/devices?state=ROLLED_BACK&limit=1000"),
                None,
            )
            .await;
            (page["items"].as_array().map_or(0, Vec::len) == rollbacks.len()).then_some(())
        },
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "no device left on 6.6.6",
        || async {
            let now = firmware_counts(&cfg, "b-").await;
            (!now.contains_key("6.6.6") && now == before).then_some(())
        },
    )
    .await;
    // The timeline says why.
    let (_, timeline) = call(&app, "GET", &format!("/v1/rollouts/{id}/decisions"), None).await;
    let text = timeline.to_string();
    assert!(text.contains("Abort: wave 0"), "{text}");
    assert!(text.contains("rollback sent to"), "{text}");
    sim_stop.trigger();
    sim.await.unwrap();
    stack.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn timeouts_retries_the_health_gate_pause_resume_and_joining_devices() {
    let (cfg, app, stack) = start_stack("rollout_edges", true).await;
    let behaviour = Behaviour {
        install_ms: 300,
        silent: vec![rule("5.0.0=0.15")],
        unhealthy: vec![rule("5.0.0=0.1")],
        ..Behaviour::default()
    };
    let (sim_stop, sim) = start_sim(sim_config(&cfg, 100, "e-", behaviour.clone()));
    wait_fleet(&app, 100).await;

    let id = request_rollout(
        &app,
        &json!({
            "release": {"version": "5.0.0", "artifact_uri": "https://artifacts.example/fw/5.0.0.bin",
                        "sha256": "ef".repeat(32), "size_bytes": 1_000, "signature": "sig"},
            "selector": {"models": ["elevator-gen2", "elevator-gen3"]},
            "strategy": {"waves_pct": [100], "max_in_flight": 10,
                         "success_threshold_pct": 0, "failure_threshold_pct": 100,
                         "min_devices_for_verdict": 1, "device_timeout_s": 10, "max_retries": 1,
                         "retry_backoff_s": 1, "health_gate_window_s": 3, "rollback_policy": "none"}
        }),
    )
    .await;
    wait_state(&app, &id, &["RUNNING"], Duration::from_secs(30)).await;

    // Pause: nothing new is commanded until resumed.
    let (status, _) = call(
        &app,
        "POST",
        &format!("/v1/rollouts/{id}/pause"),
        Some(&json!({"reason": "lunch"})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    wait_state(&app, &id, &["PAUSED"], Duration::from_secs(30)).await;
    let paused_at = updates_by_device(&rollout_events(&cfg).await)
        .values()
        .map(Vec::len)
        .sum::<usize>();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let still = updates_by_device(&rollout_events(&cfg).await)
        .values()
        .map(Vec::len)
        .sum::<usize>();
    assert_eq!(paused_at, still, "commands went out while paused");

    // Devices joining while it runs are picked up (same models, new ids).
    let (join_stop, joiners) = start_sim(SimConfig {
        seed: 4,
        ..sim_config(&cfg, 10, "j-", behaviour)
    });
    wait_fleet(&app, 110).await;
    let (status, _) = call(
        &app,
        "POST",
        &format!("/v1/rollouts/{id}/resume"),
        Some(&json!({"reason": "back"})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let done = wait_state(&app, &id, &["COMPLETED"], Duration::from_secs(180)).await;

    let events = rollout_events(&cfg).await;
    let joined: usize = events
        .iter()
        .filter_map(|e| match &e.payload {
            Payload::DevicesJoined(j) => {
                Some(j.device_ids.iter().filter(|d| d.starts_with("j-")).count())
            }
            _ => None,
        })
        .sum();
    let joiners_matching = simulator::fleet(&SimConfig {
        seed: 4,
        ..sim_config(&cfg, 10, "j-", Behaviour::default())
    })
    .iter()
    .filter(|d| d.model.starts_with("elevator"))
    .count();
    assert_eq!(joined, joiners_matching, "every matching joiner was added");
    // Silent devices time out after a retry; unhealthy ones fail the health gate.
    let timed_out: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.payload {
            Payload::DeviceTimedOut(t) => {
                Some((t.device_id.clone(), t.attempt, t.retry_at.is_some()))
            }
            _ => None,
        })
        .collect();
    assert!(
        timed_out.iter().any(|t| t.1 == 1 && t.2),
        "a retry was scheduled: {timed_out:?}"
    );
    assert!(
        timed_out.iter().any(|t| t.1 == 2 && !t.2),
        "retries ran out: {timed_out:?}"
    );
    let updates = updates_by_device(&events);
    assert!(updates
        .values()
        .any(|u| u.iter().map(|(a, _)| *a).collect::<Vec<_>>() == [1, 2]));
    let states = &done["states"];
    assert!(states["TIMED_OUT"].as_i64().unwrap_or(0) > 0, "{done}");
    assert!(states["FAILED"].as_i64().unwrap_or(0) > 0, "{done}");
    let (_, failed) = call(
        &app,
        "GET",
        &format!("/v1/rollouts/{id}/devices?state=FAILED"),
        None,
    )
    .await;
    assert!(
        failed.to_string().contains("health gate failed"),
        "{failed}"
    );
    let state_changes: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.payload {
            Payload::RolloutStateChanged(c) => Some(format!("{:?}", c.to)),
            _ => None,
        })
        .collect();
    assert_eq!(state_changes, ["Running", "Paused", "Running", "Completed"]);
    join_stop.trigger();
    joiners.await.unwrap();
    sim_stop.trigger();
    sim.await.unwrap();
    stack.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_saga_and_the_dispatcher_killed_mid_rollout_lose_nothing_and_repeat_nothing() {
    let (cfg, app, stack) = start_stack("rollout_kill", false).await;
    let logs = std::env::temp_dir().join(&cfg.database.schema);
    std::fs::create_dir_all(&logs).unwrap();
    let mut saga = spawn_process(&cfg, "saga", "saga-1", &logs.join("saga-1.log"));
    let mut dispatcher = spawn_process(
        &cfg,
        "dispatcher",
        "dispatcher-1",
        &logs.join("dispatcher-1.log"),
    );
    let behaviour = Behaviour {
        install_ms: 100,
        ..Behaviour::default()
    };
    let (sim_stop, sim) = start_sim(sim_config(&cfg, 400, "k-", behaviour));
    wait_fleet(&app, 400).await;
    let id = request_rollout(
        &app,
        &json!({
            "release": {"version": "7.7.7", "artifact_uri": "https://artifacts.example/fw/7.7.7.bin",
                        "sha256": "12".repeat(32), "size_bytes": 1_000, "signature": "sig"},
            "selector": {"models": ["elevator-gen2", "elevator-gen3", "escalator-e1", "press-p500", "conveyor-c7"]},
            "strategy": {"waves_pct": [5, 50, 100], "max_in_flight": 40,
                         "success_threshold_pct": 95, "failure_threshold_pct": 5,
                         "min_devices_for_verdict": 1, "device_timeout_s": 600,
                         "health_gate_window_s": 30, "rollback_policy": "on_abort"}
        }),
    )
    .await;
    let commanded = |n: usize| {
        let cfg = cfg.clone();
        async move {
            let c = updates_by_device(&rollout_events(&cfg).await).len();
            (c >= n).then_some(c)
        }
    };
    eventually(
        Duration::from_secs(180),
        "the second wave to be under way",
        || commanded(60),
    )
    .await;
    saga.kill();
    let mut saga = spawn_process(&cfg, "saga", "saga-2", &logs.join("saga-2.log"));
    eventually(
        Duration::from_secs(180),
        "the third wave to be under way",
        || commanded(250),
    )
    .await;
    dispatcher.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let dispatcher = spawn_process(
        &cfg,
        "dispatcher",
        "dispatcher-2",
        &logs.join("dispatcher-2.log"),
    );
    saga.kill();
    let saga = spawn_process(&cfg, "saga", "saga-3", &logs.join("saga-3.log"));

    let done = wait_state(
        &app,
        &id,
        &["COMPLETED", "ABORTED", "PAUSED", "ROLLED_BACK"],
        Duration::from_secs(180),
    )
    .await;
    assert_eq!(done["state"], "COMPLETED", "{done}");
    assert_eq!(done["states"]["SUCCEEDED"], 400, "{done}");
    let events = rollout_events(&cfg).await;
    let updates = updates_by_device(&events);
    assert_eq!(updates.len(), 400);
    let twice: Vec<_> = updates.iter().filter(|(_, u)| u.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "devices commanded more than once: {twice:?}"
    );
    let v: Vec<(i32, Verdict)> = verdicts(&events)
        .into_iter()
        .map(|(w, v, _)| (w, v))
        .collect();
    assert_eq!(
        v,
        vec![
            (0, Verdict::NextWave),
            (1, Verdict::NextWave),
            (2, Verdict::Complete)
        ]
    );
    eventually(Duration::from_secs(90), "every device on 7.7.7", || async {
        (firmware_counts(&cfg, "k-").await.get("7.7.7") == Some(&400)).then_some(())
    })
    .await;
    sim_stop.trigger();
    let stats = sim.await.unwrap();
    // Devices de-duplicate what a restarted dispatcher sends again.
    println!("simulator: {stats:?}");
    assert_eq!(stats.commands - stats.duplicate_commands, 400);
    drop((saga, dispatcher));
    stack.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_gateway_command_is_retried_reported_and_dead_lettered() {
    let services = Services::get().await;
    let name = unique("rollout_unroutable");
    let mut cfg = config(&services, &name);
    cfg.dispatcher.attempts = 3;
    cfg.dispatcher.backoff_ms = 50;
    ensure_topics(&cfg.kafka).await.unwrap();
    let (stack, _handles) = spawn_components(&cfg, &[Component::Dispatcher]);
    let producer = otaledger_ledger::kafka::EventProducer::new(&cfg.kafka).unwrap();
    let command_id = uuid::Uuid::from_u128(0xfeed);
    let cmd = Event {
        meta: otaledger_domain::EventMeta {
            event_id: command_id,
            occurred_at: 1,
            recorded_at: 1,
            trace_id: "t".into(),
        },
        payload: Payload::CancelCommand(otaledger_domain::events::CancelCommand {
            command_id,
            device_id: "d-behind-nowhere".into(),
            rollout_id: "r-1".into(),
            gateway_id: Some("gw-that-does-not-exist".into()),
            reason: "test".into(),
        }),
    };
    producer.append(&cmd).await.unwrap();
    let failures = eventually(
        Duration::from_secs(60),
        "three recorded delivery failures",
        || async {
            let f: Vec<_> = command_events(&cfg)
                .await
                .into_iter()
                .filter_map(|e| match e.payload {
                    Payload::CommandDeliveryFailed(f) => Some(f),
                    _ => None,
                })
                .collect();
            (f.len() >= 3).then_some(f)
        },
    )
    .await;
    assert_eq!(
        failures.iter().map(|f| f.attempt).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(
        failures.iter().map(|f| f.gave_up).collect::<Vec<_>>(),
        [false, false, true]
    );
    assert!(
        failures[0].error.contains("NO_ROUTE") || failures[0].error.contains("312"),
        "{}",
        failures[0].error
    );
    assert_eq!(failures[0].channel, "amqp");
    let dead = read_topic(&cfg.kafka, &cfg.kafka.topics().dead_letters).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].headers.get("dlq-reason").map(String::as_str),
        Some("undeliverable")
    );
    assert_eq!(
        otaledger_schemas::decode(&dead[0].payload).unwrap().event,
        cmd
    );
    stack.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_abort_cancels_devices_in_flight_and_rolls_back_the_updated_ones() {
    let (cfg, app, stack) = start_stack("rollout_abort", true).await;
    let behaviour = Behaviour {
        install_ms: 1500,
        ..Behaviour::default()
    };
    let (sim_stop, sim) = start_sim(sim_config(&cfg, 60, "a-", behaviour));
    wait_fleet(&app, 60).await;
    let id = request_rollout(
        &app,
        &json!({
            "release": {"version": "3.3.3", "artifact_uri": "https://artifacts.example/fw/3.3.3.bin",
                        "sha256": "34".repeat(32), "size_bytes": 1_000, "signature": "sig"},
            "selector": {"models": ["elevator-gen2", "elevator-gen3", "escalator-e1", "press-p500", "conveyor-c7"]},
            "strategy": {"waves_pct": [100], "max_in_flight": 10,
                         "success_threshold_pct": 0, "failure_threshold_pct": 100,
                         "min_devices_for_verdict": 1, "device_timeout_s": 600,
                         "health_gate_window_s": 0, "rollback_policy": "on_abort"}
        }),
    )
    .await;
    // Once the first devices updated (and others are installing), the operator aborts.
    eventually(
        Duration::from_secs(60),
        "a first device to update",
        || async {
            let (_, v) = call(&app, "GET", &format!("/v1/rollouts/{id}"), None).await;
            (v["states"]["SUCCEEDED"].as_i64().unwrap_or(0) >= 10).then_some(())
        },
    )
    .await;
    let (status, _) = call(
        &app,
        "POST",
        &format!("/v1/rollouts/{id}/abort"),
        Some(&json!({"reason": "field reports"})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let done = wait_state(&app, &id, &["ROLLED_BACK"], Duration::from_secs(60)).await;
    assert!(
        done["state_reason"]
            .as_str()
            .unwrap()
            .contains("field reports"),
        "{done}"
    );
    let events = rollout_events(&cfg).await;
    let kinds = |k: CommandKind| {
        events
            .iter()
            .filter(|e| matches!(&e.payload, Payload::DeviceCommanded(c) if c.kind == k))
            .count()
    };
    let (rollbacks, cancels) = (kinds(CommandKind::Rollback), kinds(CommandKind::Cancel));
    assert!(rollbacks >= 10, "{rollbacks} rollbacks");
    assert!(cancels >= 1, "devices in flight were cancelled");
    // Nothing new is commanded after the abort, and every device ends rolled back, cancelled
    // or never commanded.
    eventually(
        Duration::from_secs(60),
        "every rollback and cancel to be reported",
        || async {
            let (_, v) = call(&app, "GET", &format!("/v1/rollouts/{id}"), None).await;
            let s = &v["states"];
            let n = |k: &str| s[k].as_i64().unwrap_or(0);
            (n("ROLLED_BACK") == i64::try_from(rollbacks).unwrap()
                && n("CANCELLED") + n("ROLLED_BACK") + n("TARGETED")
                    == v["targeted"].as_i64().unwrap())
            .then_some(())
        },
    )
    .await;
    let (_, timeline) = call(&app, "GET", &format!("/v1/rollouts/{id}/decisions"), None).await;
    assert!(
        timeline
            .to_string()
            .contains("test-operator asked to abort: field reports"),
        "{timeline}"
    );
    sim_stop.trigger();
    sim.await.unwrap();
    stack.trigger();
}

#![allow(clippy::unwrap_used)] // test harness: a panic is the failure report
//! What the rollout tests share: a stack of components in the test's own namespace, a
//! simulated fleet, and the API and ledger read back.

use std::collections::{BTreeMap, HashMap};
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
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::{config, decode_all, eventually, read_topic, spawn_components, unique, Services};

/// An operator's `pause`, `resume` or `abort` of rollout `id`, which the API must accept.
pub async fn operator_request(app: &axum::Router, id: &str, action: &str, reason: &str) {
    let uri = format!("/v1/rollouts/{id}/{action}");
    let (status, answer) = call(app, "POST", &uri, Some(&json!({ "reason": reason }))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{uri}: {answer}");
}

/// Provisions `device` through `POST /v1/devices` (its MQTT login too, when the API has the
/// broker's admin login); its credential.
pub async fn provision(app: &axum::Router, device: &str) -> String {
    let (status, body) = call(
        app,
        "POST",
        "/v1/devices",
        Some(&json!({"device_id": device})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["token"].as_str().unwrap().to_owned()
}

/// `GET uri` against the API: the status and the JSON answer.
pub async fn get(app: &axum::Router, uri: &str) -> (StatusCode, Value) {
    call(app, "GET", uri, None).await
}

/// `method uri` with a JSON body against the API, with the client's credentials (the harness's
/// admin token, `test-admin`).
pub async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    send(app, None, method, uri, body).await
}

/// `method uri` with a JSON body against the API, with bearer `token`; the status and the JSON
/// answer.
pub async fn call_as(
    app: &axum::Router,
    token: &str,
    method: &str,
    uri: &str,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    send(app, Some(token), method, uri, body).await
}

/// As [`call_as`], in the argument order of an HTTP request line, with `Value::Null` for no
/// body.
pub async fn send_json(
    app: &axum::Router,
    method: &str,
    uri: &str,
    token: &str,
    body: &Value,
) -> (StatusCode, Value) {
    send(
        app,
        Some(token),
        method,
        uri,
        (!body.is_null()).then_some(body),
    )
    .await
}

async fn send(
    app: &axum::Router,
    token: Option<&str>,
    method: &str,
    uri: &str,
    body: Option<&Value>,
) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json");
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let req = req
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

pub fn sim_config(cfg: &Config, devices: usize, prefix: &str, behaviour: Behaviour) -> SimConfig {
    SimConfig {
        devices,
        // Two heartbeats a second per device, 400 across the fleet at most: within the
        // bridges' per-device rate (ADR 0040), which a small fleet at 400/s would exceed.
        #[allow(clippy::cast_precision_loss)]
        rate: (devices as f64 * 2.0).clamp(1.0, 400.0),
        gateway_share: 0.2,
        gateways: 3,
        id_prefix: prefix.into(),
        seed: 3,
        rounds: None,
        mqtt_connections: 3,
        credentials: None,
        gateway_credentials: None,
        mqtt: cfg.mqtt.clone(),
        amqp: cfg.amqp.clone(),
        behaviour,
        downloads: None,
    }
}

pub fn rule(s: &str) -> OutcomeRule {
    s.parse().unwrap()
}

/// Starts a simulator task; its statistics come back when the returned shutdown fires.
pub fn start_sim(sim: SimConfig) -> (Shutdown, tokio::task::JoinHandle<SimStats>) {
    let stop = Shutdown::new();
    let signal = stop.signal();
    let handle = tokio::spawn(async move { simulator::run(sim, signal).await.unwrap() });
    (stop, handle)
}

pub async fn fleet_size(app: &axum::Router) -> i64 {
    let (_, v) = call(app, "GET", "/v1/fleet/summary", None).await;
    v["total"].as_i64().unwrap_or(0)
}

pub async fn wait_fleet(app: &axum::Router, n: i64) {
    eventually(
        Duration::from_secs(60),
        "the fleet view to hold every device",
        || async { (fleet_size(app).await >= n).then_some(()) },
    )
    .await;
}

pub async fn request_rollout(app: &axum::Router, body: &Value) -> String {
    let (status, v) = call(app, "POST", "/v1/rollouts", Some(body)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    v["rollout_id"].as_str().unwrap().to_owned()
}

pub async fn wait_state(app: &axum::Router, id: &str, states: &[&str], timeout: Duration) -> Value {
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

/// Waits until rollout `id` has stopped: completed, aborted, paused or rolled back.
pub async fn wait_over(app: &axum::Router, id: &str, timeout: Duration) -> Value {
    wait_state(
        app,
        id,
        &["COMPLETED", "ABORTED", "PAUSED", "ROLLED_BACK"],
        timeout,
    )
    .await
}

pub async fn rollout_events(cfg: &Config) -> Vec<Event> {
    let records = read_topic(&cfg.kafka, &cfg.kafka.topics().rollout_events).await;
    decode_all(&records).into_iter().map(|(_, e)| e).collect()
}

pub async fn command_events(cfg: &Config) -> Vec<Event> {
    let records = read_topic(&cfg.kafka, &cfg.kafka.topics().device_commands).await;
    decode_all(&records).into_iter().map(|(_, e)| e).collect()
}

/// Update commands by device, from the saga's decisions: at most one command id per attempt.
pub fn updates_by_device(events: &[Event]) -> BTreeMap<String, Vec<(i32, uuid::Uuid)>> {
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

pub fn verdicts(events: &[Event]) -> Vec<(i32, Verdict, String)> {
    events
        .iter()
        .filter_map(|e| match &e.payload {
            Payload::ThresholdEvaluated(t) => Some((t.wave, t.verdict, t.rule.clone())),
            _ => None,
        })
        .collect()
}

pub async fn firmware_counts(cfg: &Config, prefix: &str) -> HashMap<String, i64> {
    let pool = crate::test_pool(cfg, 1).await;
    let rows = otaledger_projections::fleet::firmware_counts(&pool, prefix)
        .await
        .unwrap();
    pool.close().await;
    rows.into_iter().collect()
}

pub const PIPELINE: &[Component] = &[
    Component::Projector,
    Component::MqttBridge,
    Component::AmqpBridge,
    Component::Router,
    Component::RolloutProjector,
];

/// The test's own topics, schema, queues and MQTT root, the API over them, and the pipeline
/// running in this process (with the saga and dispatcher unless the test runs them itself).
pub async fn start_stack(test: &str, saga_in_process: bool) -> (Config, axum::Router, Shutdown) {
    let services = Services::get().await;
    let cfg = config(&services, &unique(test));
    ensure_topics(&cfg.kafka).await.unwrap();
    let app = crate::api_app(&cfg).await;
    let mut all = PIPELINE.to_vec();
    if saga_in_process {
        all.extend([Component::Saga, Component::Dispatcher]);
    }
    let (stack, _handles) = spawn_components(&cfg, &all);
    crate::mqtt_bridge_subscribed(&cfg).await;
    (cfg, app, stack)
}

/// Every model of the simulated fleet, as a rollout selector.
pub fn all_models() -> Value {
    json!({"models": simulator::model_names()})
}

/// A rollout request body for release `version` (a made-up artifact) to `selector`, with the
/// tests' usual strategy (thresholds 95/5 % from the first outcome, 600 s per device, a 30 s
/// health gate, rollback on abort) changed by `strategy`'s fields.
pub fn rollout_body(version: &str, selector: Value, strategy: Value) -> Value {
    let mut body = json!({
        "release": {"version": version, "artifact_uri": format!("https://artifacts.example/fw/{version}.bin"),
                    "sha256": "cd".repeat(32), "size_bytes": 1_000, "signature": "sig"},
    });
    body["selector"] = selector;
    body["strategy"] = json!({
        "success_threshold_pct": 95, "failure_threshold_pct": 5, "min_devices_for_verdict": 1,
        "device_timeout_s": 600, "health_gate_window_s": 30, "rollback_policy": "on_abort",
    });
    if let Value::Object(changes) = strategy {
        for (k, v) in changes {
            body["strategy"][k] = v;
        }
    }
    body
}

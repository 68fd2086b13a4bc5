#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! Rollout requests through the API into `ota.rollout-events`: every field validated, a bad
//! request answered 400 naming the field and appending nothing.

use axum::http::StatusCode;
use otaledger_domain::events::RollbackPolicy;
use otaledger_domain::{EventType, Payload};
use otaledger_ledger::kafka::ensure_topics;
use otaledger_tests::rollouts::call_as;
use otaledger_tests::{config, decode_all, read_topic, test_pool, unique, Services};
use serde_json::{json, Value};

async fn post(app: &axum::Router, alice: &str, uri: &str, body: &Value) -> (StatusCode, Value) {
    call_as(app, alice, "POST", uri, Some(body)).await
}

/// A change that makes the good request bad.
type Mutation = Box<dyn Fn(&mut Value)>;

fn good() -> Value {
    json!({
        "release": {"version": "4.3.0", "artifact_uri": "https://artifacts.example/fw/4.3.0.bin",
                    "sha256": "AB".repeat(32), "size_bytes": 1234567, "signature": "MEUCIQ..."},
        "selector": {"models": ["elevator-gen2"], "current_versions": ["4.2.4"]},
        "strategy": {"waves_pct": [1, 10, 50, 100], "max_in_flight": 200, "rollback_policy": "on_abort",
                     "maintenance_window": {"start_minute": 60, "duration_minutes": 240}}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_requests_are_validated_and_appended() {
    let services = Services::get().await;
    let cfg = config(&services, &unique("rollout_api"));
    ensure_topics(&cfg.kafka).await.unwrap();
    let app = otaledger_tests::api_app(&cfg).await;
    // The actor of every request is who the token names.
    let pool = test_pool(&cfg, 1).await;
    let producer = otaledger_ledger::kafka::EventProducer::new(&cfg.kafka).unwrap();
    let alice = otaledger_tests::issue_token(
        &pool,
        &producer,
        "alice",
        otaledger_domain::access::Role::Operator,
    )
    .await;

    let bad_cases: Vec<(&str, Mutation)> = vec![
        (
            "release.version",
            Box::new(|v| v["release"]["version"] = json!("4.3")),
        ),
        (
            "release.artifact_uri",
            Box::new(|v| v["release"]["artifact_uri"] = json!("ftp://x/y")),
        ),
        (
            "release.sha256",
            Box::new(|v| v["release"]["sha256"] = json!("abc")),
        ),
        (
            "release.size_bytes",
            Box::new(|v| v["release"]["size_bytes"] = json!(0)),
        ),
        (
            "release.signature",
            Box::new(|v| v["release"]["signature"] = json!("")),
        ),
        ("selector", Box::new(|v| v["selector"] = json!({}))),
        (
            "selector.device_ids",
            Box::new(|v| v["selector"]["device_ids"] = json!(["a/b"])),
        ),
        (
            "strategy.waves_pct",
            Box::new(|v| v["strategy"]["waves_pct"] = json!([10, 10, 100])),
        ),
        (
            "strategy.waves_pct",
            Box::new(|v| v["strategy"]["waves_pct"] = json!([0, 50])),
        ),
        (
            "strategy.failure_threshold_pct",
            Box::new(|v| v["strategy"]["failure_threshold_pct"] = json!(140)),
        ),
        (
            "strategy.device_timeout_s",
            Box::new(|v| v["strategy"]["device_timeout_s"] = json!(1)),
        ),
        (
            "strategy.max_in_flight",
            Box::new(|v| v["strategy"]["max_in_flight"] = json!(0)),
        ),
        (
            "strategy.maintenance_window.start_minute",
            Box::new(|v| v["strategy"]["maintenance_window"]["start_minute"] = json!(1440)),
        ),
        (
            "strategy.rollback_policy",
            Box::new(|v| v["strategy"]["rollback_policy"] = json!("sometimes")),
        ),
        (
            "max_retries",
            Box::new(|v| v["strategy"]["max_retries"] = json!("two")),
        ),
        (
            "unknown field `colour`",
            Box::new(|v| v["colour"] = json!("red")),
        ),
        // PostgreSQL cannot store a NUL character: refused here, not in the projector.
        (
            "$.release.signature contains a NUL",
            Box::new(|v| v["release"]["signature"] = json!("MEUC\u{0}IQ")),
        ),
        (
            "$.selector.models[0] contains a NUL",
            Box::new(|v| v["selector"]["models"] = json!(["elevator\u{0}"])),
        ),
    ];
    for (field, mutate) in &bad_cases {
        let mut body = good();
        mutate(&mut body);
        let (status, answer) = post(&app, &alice, "/v1/rollouts", &body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}: {answer}");
        assert!(
            answer["reason"].as_str().unwrap().contains(field),
            "{field}: {answer}"
        );
    }

    let (status, answer) = post(&app, &alice, "/v1/rollouts", &good()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let rollout_id = answer["rollout_id"].as_str().unwrap().to_owned();
    for (action, body) in [
        ("pause", json!({"reason": "night shift"})),
        ("resume", json!({})),
        ("abort", json!({"reason": "bad batch"})),
    ] {
        let (status, _) = post(
            &app,
            &alice,
            &format!("/v1/rollouts/{rollout_id}/{action}"),
            &body,
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{action}");
    }
    let (status, _) = post(&app, &alice, "/v1/rollouts/bad%2Fid/pause", &json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let nul = json!({"reason": "night\u{0}shift"});
    let (status, answer) = post(
        &app,
        &alice,
        &format!("/v1/rollouts/{rollout_id}/abort"),
        &nul,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["error"], "invalid_text");

    let records = read_topic(&cfg.kafka, &cfg.kafka.topics().rollout_events).await;
    let events = decode_all(&records);
    let types: Vec<EventType> = events.iter().map(|(_, e)| e.event_type()).collect();
    assert_eq!(
        types,
        [
            EventType::UpdateRequested,
            EventType::PauseRequested,
            EventType::ResumeRequested,
            EventType::AbortRequested
        ],
        "bad requests append nothing"
    );
    assert!(records.iter().all(|r| r.key == rollout_id.as_bytes()));
    let Payload::UpdateRequested(req) = &events[0].1.payload else {
        panic!()
    };
    assert_eq!(req.requested_by, "alice");
    assert_eq!(req.release.sha256, "ab".repeat(32));
    assert_eq!(req.strategy.max_in_flight, 200);
    assert_eq!(
        req.strategy.success_threshold_pct, 95.0,
        "defaults fill what the request leaves out"
    );
    assert_eq!(req.strategy.rollback_policy, RollbackPolicy::OnAbort);
    assert_eq!(
        req.strategy
            .maintenance_window
            .as_ref()
            .unwrap()
            .duration_minutes,
        240
    );
    let Payload::PauseRequested(p) = &events[1].1.payload else {
        panic!()
    };
    assert_eq!(p.reason, "night shift");
    otaledger_tests::drop_schema(&services, &cfg.database.schema).await;
}

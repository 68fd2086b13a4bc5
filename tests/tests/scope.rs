#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! Scoped tokens (ADR 0031), tried as an operator scoped to one site would try to reach past
//! it: other sites' devices are not found, its rollouts reach only its site, a rollout of the
//! whole fleet cannot be aborted or seen with it, and every route that answers for the whole
//! fleet refuses it, whichever route a later change adds.

use std::time::Duration;

use axum::http::StatusCode;
use otaledger_cli::components::Component;
use otaledger_domain::events::DeviceRegistered;
use otaledger_domain::{Event, Payload};
use otaledger_ledger::kafka::{ensure_topics, EventProducer};
use otaledger_tests::rollouts::send_json as send;
use otaledger_tests::rollouts::{all_models, rollout_body, rollout_events};
use otaledger_tests::{
    config, eventually, issue_token, migrated_test_pool, spawn_components, unique, Services,
};
use serde_json::{json, Value};

fn device(id: &str, site: &str) -> Event {
    Event::now(
        Payload::DeviceRegistered(DeviceRegistered {
            device_id: id.into(),
            model: "elevator-gen2".into(),
            site: site.into(),
            tags: vec!["prod".into()],
            firmware_version: "1.0.0".into(),
            gateway_id: None,
            hardware_rev: None,
        }),
        "t",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scoped_token_reaches_only_its_devices_and_rollouts() {
    let services = Services::get().await;
    let cfg = config(&services, &unique("scope"));
    ensure_topics(&cfg.kafka).await.unwrap();
    let pool = migrated_test_pool(&cfg, 4).await;
    let producer = EventProducer::new(&cfg.kafka).unwrap();
    let app = otaledger_api::app(otaledger_tests::app_state(&cfg, &pool, &producer));
    let (stop, _) = spawn_components(&cfg, &[Component::Projector, Component::RolloutProjector]);
    for (id, site) in [
        ("d-berlin-1", "berlin"),
        ("d-berlin-2", "berlin"),
        ("d-oslo-1", "oslo"),
    ] {
        producer.append(&device(id, site)).await.unwrap();
    }
    let admin = issue_token(
        &pool,
        &producer,
        "root",
        otaledger_domain::access::Role::Admin,
    )
    .await;
    eventually(Duration::from_secs(30), "three devices", || async {
        let (_, v) = send(&app, "GET", "/v1/fleet/summary", &admin, &Value::Null).await;
        (v["total"] == 3).then_some(())
    })
    .await;

    // Issuing: a scope for an operator; none for an admin.
    let (status, body) = send(
        &app,
        "POST",
        "/v1/tokens",
        &admin,
        &json!({"name": "berlin-ops", "role": "operator", "scope": {"sites": ["berlin"]}}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["scope"]["sites"], json!(["berlin"]));
    let berlin = body["token"].as_str().unwrap().to_owned();
    let (status, _) = send(
        &app,
        "POST",
        "/v1/tokens",
        &admin,
        &json!({"name": "x", "role": "admin", "scope": {"sites": ["berlin"]}}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Devices: its own only.
    let (status, page) = send(&app, "GET", "/v1/devices", &berlin, &Value::Null).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let ids: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["d-berlin-1", "d-berlin-2"]);
    for (path, want) in [
        ("/v1/devices/d-berlin-1", StatusCode::OK),
        ("/v1/devices/d-oslo-1", StatusCode::NOT_FOUND),
        ("/v1/devices/d-oslo-1/history", StatusCode::NOT_FOUND),
        ("/v1/devices/d-berlin-1/history", StatusCode::OK),
    ] {
        let (status, body) = send(&app, "GET", path, &berlin, &Value::Null).await;
        assert_eq!(status, want, "{path}: {body}");
    }

    // Rollouts: narrowed to its site; one wholly outside it refused.
    let (status, body) = send(
        &app,
        "POST",
        "/v1/rollouts",
        &berlin,
        &rollout_body("9.0.0", json!({"sites": ["oslo"]}), json!({})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"], "outside_scope");
    let (status, body) = send(
        &app,
        "POST",
        "/v1/rollouts",
        &berlin,
        &rollout_body("9.0.0", all_models(), json!({"waves_pct": [100]})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let own = body["rollout_id"].as_str().unwrap().to_owned();
    let (status, body) = send(
        &app,
        "POST",
        "/v1/rollouts",
        &admin,
        &rollout_body("9.0.0", all_models(), json!({"waves_pct": [100]})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let fleet_wide = body["rollout_id"].as_str().unwrap().to_owned();
    let requested = rollout_events(&cfg).await;
    let selector = requested
        .iter()
        .find_map(|e| match &e.payload {
            Payload::UpdateRequested(r) if r.rollout_id == own => Some(r.selector.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        selector.sites,
        ["berlin"],
        "the rollout reaches its site only"
    );
    assert_eq!(
        selector.models.len(),
        all_models()["models"].as_array().unwrap().len()
    );

    eventually(
        Duration::from_secs(30),
        "both rollouts projected",
        || async {
            let a = send(
                &app,
                "GET",
                &format!("/v1/rollouts/{own}"),
                &admin,
                &Value::Null,
            )
            .await;
            let b = send(
                &app,
                "GET",
                &format!("/v1/rollouts/{fleet_wide}"),
                &admin,
                &Value::Null,
            )
            .await;
            (a.0 == StatusCode::OK && b.0 == StatusCode::OK).then_some(())
        },
    )
    .await;
    for (path, want) in [
        (format!("/v1/rollouts/{own}"), StatusCode::OK),
        (format!("/v1/rollouts/{own}/devices"), StatusCode::OK),
        (format!("/v1/rollouts/{fleet_wide}"), StatusCode::NOT_FOUND),
        (
            format!("/v1/rollouts/{fleet_wide}/decisions"),
            StatusCode::NOT_FOUND,
        ),
    ] {
        let (status, body) = send(&app, "GET", &path, &berlin, &Value::Null).await;
        assert_eq!(status, want, "{path}: {body}");
    }
    let (status, body) = send(
        &app,
        "POST",
        &format!("/v1/rollouts/{fleet_wide}/abort"),
        &berlin,
        &json!({"reason": "not mine"}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = send(
        &app,
        "POST",
        &format!("/v1/rollouts/{own}/pause"),
        &berlin,
        &Value::Null,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");

    // Every other secured route an operator may use answers for the whole fleet: refused,
    // read from the document so a new route is covered.
    let doc = serde_json::to_value(otaledger_api::openapi()).unwrap();
    let mut refused = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let role = op["security"][0]["token"][0].as_str();
            let method = method.to_ascii_uppercase();
            let parsed: axum::http::Method = method.parse().unwrap();
            if !matches!(role, Some("viewer" | "operator"))
                || otaledger_api::scope::scope_aware(&parsed, path)
            {
                continue;
            }
            let uri = path.replace("{id}", "d-berlin-1").replace("{name}", "x");
            let (status, body) = send(&app, &method, &uri, &berlin, &Value::Null).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {body}");
            assert_eq!(body["error"], "outside_scope", "{method} {path}");
            refused += 1;
        }
    }
    assert!(refused >= 3, "summary, rollout list and metrics at least");
    stop.trigger();
    otaledger_tests::drop_schema(&services, &cfg.database.schema).await;
}

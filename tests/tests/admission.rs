#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! Pending admission (ADR 0032), tried as attacks against the real API, PostgreSQL, Kafka and
//! Mosquitto: a device that was not provisioned cannot log in to the broker; it asks to be
//! admitted with the fingerprint of its own secret; a squatter asking for the same id with
//! another secret, guessing secrets or claiming before the admin decided gets nothing; the
//! admin's accept lets exactly the holder of the accepted secret claim its credential, once,
//! and then the broker admits it; the decisions are in the ledger with the admin's name; the
//! waiting requests are bounded; with admission off the open routes do not exist.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use otaledger_cli::components::prepare;
use otaledger_domain::Payload;
use otaledger_ledger::config::Config;
use otaledger_ledger::kafka::EventProducer;
use otaledger_ledger::mqtt_admin::MqttAdmin;
use otaledger_projections::admission::fingerprint;
use otaledger_tests::rollouts::call;
use otaledger_tests::{
    as_client, config, decode_all, eventually, migrated_test_pool, read_topic, unique, Services,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet};
use serde_json::{json, Value};
use tower::ServiceExt;

struct Fixture {
    /// This test's own name, the prefix of its device ids (Mosquitto's logins are shared).
    name: String,
    cfg: Config,
    /// The API as a device without a credential reaches it.
    device: axum::Router,
    /// The API as an admin (`test-admin`) reaches it.
    admin: axum::Router,
}

async fn fixture(test: &str, max_pending: Option<i64>) -> Fixture {
    let name = unique(test);
    let cfg = config(&Services::get().await, &name);
    prepare(&cfg).await.unwrap();
    let pool = migrated_test_pool(&cfg, 4).await;
    let producer = EventProducer::new(&cfg.kafka).unwrap();
    let mut state = otaledger_tests::app_state(&cfg, &pool, &producer)
        .with_mqtt_admin(MqttAdmin::connect(&cfg.mqtt).unwrap());
    if let Some(max) = max_pending {
        state = state.with_admission(max);
    }
    let device = otaledger_api::app(state.clone());
    let admin = as_client(otaledger_api::app(state), pool, producer).await;
    Fixture {
        name,
        cfg,
        device,
        admin,
    }
}

/// A secret as a device makes one.
fn secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Whether Mosquitto admits `device` with `password`.
async fn broker_admits(cfg: &Config, device: &str, password: &str) -> bool {
    let mut opts = MqttOptions::new(device, &cfg.mqtt.host, cfg.mqtt.port);
    opts.set_credentials(device, password);
    let (_client, mut eventloop) = AsyncClient::new(opts, 10);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => return true,
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return false,
            Err(_) => panic!("no answer to CONNECT from {device}"),
        }
    }
}

async fn ask(f: &Fixture, device: &str, secret: &str) -> (StatusCode, Value) {
    call(
        &f.device,
        "POST",
        "/v1/admission/requests",
        Some(&json!({"device_id": device, "fingerprint": fingerprint(secret), "model": "elevator-x"})),
    )
    .await
}

async fn claim(f: &Fixture, device: &str, secret: &str) -> (StatusCode, Value) {
    call(
        &f.device,
        "POST",
        "/v1/admission/claim",
        Some(&json!({"device_id": device, "secret": secret})),
    )
    .await
}

async fn decide(f: &Fixture, device: &str, secret: &str, verb: &str) -> (StatusCode, Value) {
    call(
        &f.admin,
        "POST",
        &format!("/v1/admission/requests/{device}/{verb}"),
        Some(&json!({"fingerprint": fingerprint(secret)})),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_holder_of_the_secret_an_admin_accepted_is_admitted_and_only_once() {
    let f = fixture("admission", Some(3)).await;
    let device = &format!("{}-dev", f.name);
    let (genuine, squatter) = (secret(), secret());

    // Unprovisioned: the broker refuses it, whatever it presents.
    assert!(!broker_admits(&f.cfg, device, &genuine).await);

    let (status, asked) = ask(&f, device, &genuine).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{asked}");
    assert_eq!(asked["state"], "pending");
    assert_eq!(asked["fingerprint"], fingerprint(&genuine));
    // Asking again answers the same request.
    let (status, again) = ask(&f, device, &genuine).await;
    assert_eq!(
        (status, &again["requested_at"]),
        (StatusCode::ACCEPTED, &asked["requested_at"])
    );
    // A form post reaches nothing, even on an open route.
    let form = f
        .device
        .clone()
        .oneshot(
            Request::post("/v1/admission/requests")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Body::from(format!("device_id={device}&fingerprint=00")))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(form.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // A squatter asks for the same id with its own secret: a second request, beside the first.
    let (status, _) = ask(&f, device, &squatter).await;
    assert_eq!(status, StatusCode::ACCEPTED);

    // Nothing can be claimed before an admin decides.
    for s in [&genuine, &squatter] {
        let (status, body) = claim(&f, device, s).await;
        assert_eq!(
            (status, body["state"].as_str()),
            (StatusCode::ACCEPTED, Some("pending"))
        );
    }
    // Strangers can neither list nor decide.
    for (method, uri, body) in [
        ("GET", "/v1/admission/requests".to_owned(), None),
        (
            "POST",
            format!("/v1/admission/requests/{device}/accept"),
            Some(json!({"fingerprint": fingerprint(&squatter)})),
        ),
    ] {
        let (status, _) = call(&f.device, method, &uri, body.as_ref()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {uri}");
    }
    let (status, listed) = call(&f.admin, "GET", "/v1/admission/requests", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");

    // The admin accepts the fingerprint the device shows and rejects the other.
    let (status, accepted) = decide(&f, device, &genuine, "accept").await;
    assert_eq!(
        (status, accepted["state"].as_str()),
        (StatusCode::OK, Some("accepted"))
    );
    let (status, _) = decide(&f, device, &squatter, "reject").await;
    assert_eq!(status, StatusCode::OK);
    // A decision is taken once.
    let (status, _) = decide(&f, device, &squatter, "accept").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The squatter's secret, a guessed one, and a short one get nothing.
    for s in [squatter.clone(), secret()] {
        let (status, body) = claim(&f, device, &s).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert_eq!(body["error"], "not_admitted");
    }
    let (status, _) = claim(&f, device, "short").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // The genuine device claims its credential, once; the broker admits it with it.
    let (status, issued) = claim(&f, device, &genuine).await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    assert_eq!(
        (issued["name"].as_str(), issued["role"].as_str()),
        (Some(device.as_str()), Some("device"))
    );
    let token = issued["token"].as_str().unwrap().to_owned();
    let (status, body) = claim(&f, device, &genuine).await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::FORBIDDEN, &json!("not_admitted"))
    );
    assert!(broker_admits(&f.cfg, device, &token).await);
    assert!(!broker_admits(&f.cfg, device, &genuine).await);
    // A provisioned device has nothing to ask for.
    let (status, body) = ask(&f, device, &secret()).await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::CONFLICT, &json!("already_provisioned"))
    );

    // At most three requests wait at once (this fixture's bound).
    for i in 0..3 {
        let (status, _) = ask(&f, &format!("{}-w{i}", f.name), &secret()).await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    let (status, body) = ask(&f, &format!("{}-w3", f.name), &secret()).await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::TOO_MANY_REQUESTS, &json!("admission_full"))
    );

    // The ledger holds the decisions and the credential, each with the admin who let it in.
    let kafka = f.cfg.kafka.clone();
    let lines = eventually(Duration::from_secs(20), "the access events", || {
        let kafka = kafka.clone();
        async move {
            let records = read_topic(&kafka, &kafka.topics().access_events).await;
            let mut events = decode_all(&records);
            events.sort_by_key(|(_, e)| e.meta.recorded_at);
            let lines: Vec<String> = events
                .into_iter()
                .filter_map(|(_, e)| match e.payload {
                    Payload::AdmissionDecided(d) => Some(format!(
                        "{} {} {} by {}",
                        d.device_id,
                        &d.fingerprint[..8],
                        if d.accepted { "accepted" } else { "rejected" },
                        d.decided_by
                    )),
                    Payload::TokenIssued(t) if t.role == "device" => {
                        Some(format!("{} credential by {}", t.name, t.issued_by))
                    }
                    _ => None,
                })
                .collect();
            (lines.len() >= 3).then_some(lines)
        }
    })
    .await;
    assert_eq!(
        lines,
        [
            format!(
                "{device} {} accepted by test-admin",
                &fingerprint(&genuine)[..8]
            ),
            format!(
                "{device} {} rejected by test-admin",
                &fingerprint(&squatter)[..8]
            ),
            format!("{device} credential by test-admin"),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_is_closed_unless_configured_and_one_id_cannot_flood_it() {
    let off = fixture("admission_off", None).await;
    let s = secret();
    let (status, body) = ask(&off, "adm-off-1", &s).await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::NOT_FOUND, &json!("admission_off"))
    );
    let (status, body) = claim(&off, "adm-off-1", &s).await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::NOT_FOUND, &json!("admission_off"))
    );

    let on = fixture("admission_flood", Some(1000)).await;
    for i in 0..otaledger_projections::admission::MAX_PER_DEVICE {
        let (status, body) = ask(&on, "adm-flood", &secret()).await;
        assert_eq!(status, StatusCode::ACCEPTED, "request {i}: {body}");
    }
    let (status, body) = ask(&on, "adm-flood", &secret()).await;
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::TOO_MANY_REQUESTS, &json!("admission_full"))
    );
    // Another device is not held back by it.
    let (status, _) = ask(&on, "adm-flood-2", &secret()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // Malformed requests are refused with a reason.
    for body in [
        json!({"device_id": "x", "fingerprint": "abc"}),
        json!({"device_id": "bad id/", "fingerprint": fingerprint("abc")}),
        json!({"device_id": "x", "fingerprint": fingerprint("abc"), "extra": 1}),
    ] {
        let (status, answer) =
            call(&on.device, "POST", "/v1/admission/requests", Some(&body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
    }
}

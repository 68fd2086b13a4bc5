#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! The HTTP API over a real PostgreSQL fleet view and a real Kafka: filters, pagination, errors,
//! ingest and the operations endpoints, driven with `oneshot`.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use otaledger_domain::device_view::{DeviceView, Position};
use otaledger_domain::events::Health;
use otaledger_domain::time::now_micros;
use otaledger_ledger::kafka::{ensure_topics, EventProducer};
use otaledger_tests::{config, migrated_test_pool, read_topic, unique, Services};
use serde_json::Value;
use tower::ServiceExt;

struct Fixture {
    app: axum::Router,
    devices: Vec<DeviceView>,
    cfg: otaledger_ledger::config::Config,
    services: Services,
}

const MODELS: [&str; 3] = ["elevator-gen2", "escalator-e1", "press-p500"];
const SITES: [&str; 4] = ["berlin-01", "lyon-01", "oslo-01", "milan-02"];
const VERSIONS: [&str; 3] = ["1.0.0", "1.1.0", "2.0.0"];

/// 257 devices with known attributes, a quarter of them last seen an hour ago (offline).
fn devices() -> Vec<DeviceView> {
    let now = now_micros();
    (0..257)
        .map(|i| {
            let seen = if i % 4 == 3 { now - 3_600_000_000 } else { now };
            let mut tags = vec![format!("group-{}", i % 5)];
            if i % 3 == 0 {
                tags.push("critical".into());
            }
            DeviceView {
                device_id: format!("dev-{i:04}"),
                model: Some(MODELS[i % 3].into()),
                site: Some(SITES[i % 4].into()),
                tags: Some(tags),
                gateway_id: (i % 7 == 0).then(|| "gw-1".into()),
                hardware_rev: None,
                firmware_version: Some(VERSIONS[(i / 2) % 3].into()),
                first_seen_at: seen - 1000,
                last_seen_at: seen,
                last_heartbeat_at: Some(seen),
                health: Some(Health {
                    uptime_s: i as i64,
                    cpu_pct: 10.0,
                    mem_pct: 20.0,
                    temperature_c: 30.5,
                    error_count: 0,
                    signal_dbm: Some(-60),
                }),
                events: 2,
                last_position: Position {
                    partition: (i % 4) as i32,
                    offset: i as i64,
                },
            }
        })
        .collect()
}

async fn fixture(test: &str) -> Fixture {
    let services = Services::get().await;
    let name = unique(test);
    let cfg = config(&services, &name);
    ensure_topics(&cfg.kafka).await.unwrap();
    let pool = migrated_test_pool(&cfg, 4).await;
    let devices = devices();
    let mut tx = pool.begin().await.unwrap();
    let patches: Vec<(String, DeviceView)> = devices
        .iter()
        .map(|d| (d.device_id.clone(), d.clone()))
        .collect();
    otaledger_projections::projector::merge_patches(
        &mut tx,
        patches,
        &mut otaledger_projections::projector::DimensionCache::default(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let producer = EventProducer::new(&cfg.kafka).unwrap();
    let state = otaledger_tests::app_state(&cfg, &pool, &producer);
    Fixture {
        app: otaledger_tests::as_client(otaledger_api::app(state), pool, producer).await,
        devices,
        cfg,
        services,
    }
}

async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    body: &str,
) -> (StatusCode, Value, String) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    )
}

async fn get(app: &axum::Router, uri: &str) -> (StatusCode, Value) {
    let (s, v, _) = call(app, "GET", uri, "").await;
    (s, v)
}

/// Walks every page with a small limit and returns the ids in order.
async fn walk(app: &axum::Router, query: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut uri = format!("/v1/devices?limit=7{query}");
        if let Some(c) = &cursor {
            uri.push_str(&format!("&cursor={c}"));
        }
        let (status, page) = get(app, &uri).await;
        assert_eq!(status, StatusCode::OK, "{uri}: {page}");
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 7);
        ids.extend(
            items
                .iter()
                .map(|d| d["device_id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    ids
}

fn expected(devices: &[DeviceView], pred: impl Fn(&DeviceView) -> bool) -> Vec<String> {
    let mut ids: Vec<String> = devices
        .iter()
        .filter(|d| pred(d))
        .map(|d| d.device_id.clone())
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_and_keyset_pagination_return_exactly_the_right_devices() {
    let f = fixture("api_filters").await;
    let online_cut = now_micros() - 300_000_000;
    let has_tag =
        |d: &DeviceView, t: &str| d.tags.as_ref().is_some_and(|ts| ts.iter().any(|x| x == t));
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("", expected(&f.devices, |_| true)),
        (
            "&firmware=1.1.0",
            expected(&f.devices, |d| {
                d.firmware_version.as_deref() == Some("1.1.0")
            }),
        ),
        (
            "&model=escalator-e1",
            expected(&f.devices, |d| d.model.as_deref() == Some("escalator-e1")),
        ),
        (
            "&site=oslo-01",
            expected(&f.devices, |d| d.site.as_deref() == Some("oslo-01")),
        ),
        (
            "&tag=critical",
            expected(&f.devices, |d| has_tag(d, "critical")),
        ),
        (
            "&status=offline",
            expected(&f.devices, |d| d.last_seen_at < online_cut),
        ),
        (
            "&status=online&model=press-p500&tag=group-2",
            expected(&f.devices, |d| {
                d.last_seen_at >= online_cut
                    && d.model.as_deref() == Some("press-p500")
                    && has_tag(d, "group-2")
            }),
        ),
        ("&firmware=9.9.9", vec![]),
    ];
    for (query, want) in cases {
        let got = walk(&f.app, query).await;
        assert_eq!(got, want, "query {query:?}");
    }
    let (status, d) = get(&f.app, "/v1/devices/dev-0003").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(d["status"], "offline");
    assert_eq!(d["model"], "elevator-gen2");
    assert_eq!(d["site"], "milan-02");
    assert_eq!(d["health"]["temperature_c"], 30.5);
    let (status, d) = get(&f.app, "/v1/devices/dev-0007").await;
    assert_eq!(
        (status, d["gateway_id"].as_str()),
        (StatusCode::OK, Some("gw-1"))
    );

    let (status, s) = get(&f.app, "/v1/fleet/summary").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(s["total"], 257);
    let offline = f
        .devices
        .iter()
        .filter(|d| d.last_seen_at < online_cut)
        .count();
    assert_eq!(s["by_status"]["offline"], offline);
    assert_eq!(s["by_status"]["online"], 257 - offline);
    let mut by_fw: BTreeMap<String, u64> = BTreeMap::new();
    for d in &f.devices {
        *by_fw
            .entry(d.firmware_version.clone().unwrap())
            .or_default() += 1;
    }
    for (v, n) in by_fw {
        assert_eq!(s["by_firmware"][&v], n, "firmware {v}");
    }
    assert_eq!(
        s["by_model"]["press-p500"],
        f.devices
            .iter()
            .filter(|d| d.model.as_deref() == Some("press-p500"))
            .count()
    );
    otaledger_tests::drop_schema(&f.services, &f.cfg.database.schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_parameters_get_400_with_a_reason() {
    let f = fixture("api_bad").await;
    for (uri, needle) in [
        ("/v1/devices?limit=0", "limit"),
        ("/v1/devices?limit=5000", "limit"),
        ("/v1/devices?limit=ten", "limit"),
        ("/v1/devices?status=sleeping", "status"),
        ("/v1/devices?colour=red", "colour"),
        ("/v1/devices?cursor=", "cursor"),
        ("/v1/devices?model=", "model"),
    ] {
        let (status, body) = get(&f.app, uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {body}");
        assert_eq!(body["error"], "invalid_parameter", "{uri}");
        assert!(
            body["reason"].as_str().unwrap().contains(needle),
            "{uri}: {body}"
        );
    }
    let (status, body) = get(&f.app, "/v1/devices/nope").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "not_found");
    let (status, body) = get(&f.app, "/v2/whatever").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    otaledger_tests::drop_schema(&f.services, &f.cfg.database.schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_ingest_answers_429_to_a_device_over_its_rate_and_not_to_the_others() {
    let services = Services::get().await;
    let mut cfg = config(&services, &unique("api_rate"));
    // A token every 2 s: the burst's three requests have 2 s to pass before one is back.
    cfg.ingest.device_rate_per_s = 0.5;
    cfg.ingest.device_burst = 3;
    ensure_topics(&cfg.kafka).await.unwrap();
    let app = otaledger_tests::api_app(&cfg).await;
    let heartbeat = |uptime: i64| {
        format!(
            r#"{{"firmware_version":"1.0.0","uptime_s":{uptime},"cpu_pct":1,"mem_pct":1,"temperature_c":20}}"#
        )
    };
    let send = |device: &'static str, uptime: i64| {
        let (app, body) = (app.clone(), heartbeat(uptime));
        async move {
            let req = Request::builder()
                .method("POST")
                .uri(format!("/v1/devices/{device}/heartbeats"))
                .header("content-type", "application/json")
                .body(Body::from(body))
                .unwrap();
            let resp = app.oneshot(req).await.unwrap();
            let (status, retry) = (resp.status(), resp.headers().get("retry-after").cloned());
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            (
                status,
                retry,
                serde_json::from_slice::<Value>(&bytes).unwrap(),
            )
        }
    };
    // The burst passes; the fourth at once is over the rate: 429, told when to come back (2 s),
    // and a JSON reason. The next ones too, before a token is back.
    for uptime in 0..3 {
        assert_eq!(send("noisy", uptime).await.0, StatusCode::ACCEPTED);
    }
    let (status, retry, body) = send("noisy", 3).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(retry.unwrap(), "2");
    assert_eq!(body["error"], "rate_limited");
    assert!(body["reason"].as_str().unwrap().contains("noisy"));
    for uptime in 4..10 {
        assert_eq!(send("noisy", uptime).await.0, StatusCode::TOO_MANY_REQUESTS);
    }
    // Another device is not held back by it.
    for uptime in 0..3 {
        assert_eq!(send("calm", uptime).await.0, StatusCode::ACCEPTED);
    }
    // Two seconds later the noisy device has a token again.
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    assert_eq!(send("noisy", 10).await.0, StatusCode::ACCEPTED);

    // Counted, and dead-lettered sparingly: the first refusal only (the rest within a second of
    // it).
    let metrics = otaledger_ledger::metrics::REGISTRY.render();
    let refused: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("otaledger_rate_limited_total{source=\"http\"} "))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(refused, 7.0);
    let dead = read_topic(&cfg.kafka, &cfg.kafka.topics().dead_letters).await;
    let limited: Vec<_> = dead
        .iter()
        .filter(|r| r.headers.get("dlq-reason").map(String::as_str) == Some("rate_limited"))
        .collect();
    assert_eq!(limited.len(), 1);
    assert_eq!(limited[0].key, b"noisy");
    let records = read_topic(&cfg.kafka, &cfg.kafka.topics().device_events).await;
    let noisy = records.iter().filter(|r| r.key == b"noisy").count();
    assert_eq!(
        noisy, 4,
        "the burst and the one after the pause, nothing refused"
    );
    otaledger_tests::drop_schema(&services, &cfg.database.schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_ingest_answers_202_after_kafka_and_dead_letters_bad_bodies() {
    let f = fixture("api_ingest").await;
    let (status, body, _) = call(
        &f.app,
        "POST",
        "/v1/devices/dev-9/heartbeats",
        r#"{"firmware_version":"3.0.0","uptime_s":12,"cpu_pct":5,"mem_pct":6,"temperature_c":40,"signal_dbm":-70}"#,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let event_id = body["event_id"].as_str().unwrap().to_owned();
    // 202 means Kafka has it: read it back right away.
    let topics = f.cfg.kafka.topics();
    let records = read_topic(&f.cfg.kafka, &topics.device_events).await;
    let found = records
        .iter()
        .find(|r| r.headers.get("event-id") == Some(&event_id))
        .expect("event in Kafka");
    assert_eq!(found.key, b"dev-9");
    assert_eq!(found.headers["event-type"], "Heartbeat");
    assert_eq!(found.headers["schema-fingerprint"].len(), 16);
    assert_eq!(found.headers["trace-id"].len(), 32);
    assert_eq!(found.offset, body["offset"].as_i64().unwrap());

    for (uri, body, status, error) in [
        (
            "/v1/devices/dev-9/heartbeats",
            "{oops",
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            "/v1/devices/dev-9/heartbeats",
            r#"{"firmware_version":"1","uptime_s":"x","cpu_pct":1,"mem_pct":1,"temperature_c":1}"#,
            StatusCode::BAD_REQUEST,
            "invalid_field",
        ),
        (
            "/v1/devices/dev-9/heartbeats",
            r#"{"device_id":"dev-8","firmware_version":"1","uptime_s":1,"cpu_pct":1,"mem_pct":1,"temperature_c":1}"#,
            StatusCode::BAD_REQUEST,
            "device_id_mismatch",
        ),
        (
            "/v1/devices/dev-9/registrations",
            r#"{"model":"m"}"#,
            StatusCode::BAD_REQUEST,
            "invalid_field",
        ),
        // One NUL character once stopped the projector for good (PostgreSQL refused the row).
        (
            "/v1/devices/dev-9/heartbeats",
            r#"{"firmware_version":"3.0\u0000","uptime_s":1,"cpu_pct":1,"mem_pct":1,"temperature_c":1}"#,
            StatusCode::BAD_REQUEST,
            "invalid_text",
        ),
    ] {
        let (s, b, text) = call(&f.app, "POST", uri, body).await;
        assert_eq!(s, status, "{body}: {text}");
        assert_eq!(b["error"], error, "{body}");
        assert!(!b["reason"].as_str().unwrap().is_empty());
    }
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(70_000));
    let (s, b, _) = call(&f.app, "POST", "/v1/devices/dev-9/heartbeats", &big).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large"))
    );

    // Far over the limit: refused unread, still with a JSON reason.
    let huge = format!(r#"{{"pad":"{}"}}"#, "x".repeat(300_000));
    let (s, b, _) = call(&f.app, "POST", "/v1/devices/dev-9/heartbeats", &huge).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large"))
    );

    let dead = read_topic(&f.cfg.kafka, &topics.dead_letters).await;
    assert_eq!(dead.len(), 6, "every rejected body is kept");
    assert!(dead
        .iter()
        .all(|r| r.headers["dlq-source"] == "http" && r.key == b"dev-9"));
    assert_eq!(dead[0].payload, b"{oops");
    assert!(dead
        .iter()
        .any(|r| r.headers["dlq-reason"] == "device_id_mismatch"));
    assert!(dead
        .iter()
        .any(|r| r.headers["dlq-reason"] == "invalid_text"));
    otaledger_tests::drop_schema(&f.services, &f.cfg.database.schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_endpoints_answer() {
    let f = fixture("api_ops").await;
    let (status, body) = get(&f.app, "/healthz").await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let (status, body) = get(&f.app, "/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["checks"]["kafka"], "ok");
    let (status, spec) = get(&f.app, "/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(spec["openapi"], "3.1.0");
    for path in [
        "/v1/devices",
        "/v1/devices/{id}",
        "/v1/fleet/summary",
        "/v1/devices/{id}/heartbeats",
        "/readyz",
        "/metrics",
    ] {
        assert!(spec["paths"].get(path).is_some(), "OpenAPI lacks {path}");
    }
    let _ = get(&f.app, "/v1/devices?limit=0").await;
    let (status, _, text) = call(&f.app, "GET", "/metrics", "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        text.contains("# TYPE otaledger_http_requests_total counter"),
        "{text}"
    );
    assert!(
        text.contains(
            r#"otaledger_http_requests_total{route="/v1/devices",method="GET",status="400"}"#
        ),
        "{text}"
    );
    otaledger_tests::drop_schema(&f.services, &f.cfg.database.schema).await;
}

/// A burst of concurrent lookups (the batcher answers them with shared queries): every one gets
/// its own device, duplicates included, and the unknown ids get 404 among them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_lookups_each_get_their_own_device() {
    let f = fixture("concurrent_lookups").await;
    let (lookups, queries) = otaledger_api::device_lookup::counters();
    let before = (lookups.get(), queries.get());
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..1_200usize {
        let app = f.app.clone();
        // 300 unknown ids among 900 known ones, every known device asked for three to four times.
        let id = if n % 4 == 3 {
            format!("nope-{n}")
        } else {
            format!("dev-{:04}", n % 257)
        };
        calls.spawn(async move {
            let (status, body) = get(&app, &format!("/v1/devices/{id}")).await;
            (id, status, body)
        });
    }
    let mut found = 0;
    while let Some(r) = calls.join_next().await {
        let (id, status, body) = r.unwrap();
        if id.starts_with("nope-") {
            assert_eq!(status, StatusCode::NOT_FOUND, "{id}: {body}");
            assert_eq!(body["error"], "not_found");
            continue;
        }
        assert_eq!(status, StatusCode::OK, "{id}: {body}");
        assert_eq!(body["device_id"], id.as_str());
        let want = &f.devices[id[4..].parse::<usize>().unwrap()];
        assert_eq!(body["site"], want.site.as_deref().unwrap());
        assert_eq!(body["position"]["offset"], want.last_position.offset);
        found += 1;
    }
    assert_eq!(found, 900);
    let (asked, queried) = (lookups.get() - before.0, queries.get() - before.1);
    assert!(asked >= 1_200, "{asked} lookups counted");
    assert!(
        queried < asked,
        "{asked} lookups took {queried} queries: none shared"
    );
}

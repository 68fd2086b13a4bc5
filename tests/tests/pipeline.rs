#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! Devices to API through the real pipeline: simulator → MQTT/AMQP → bridges → Kafka →
//! projector → PostgreSQL → API; and bad input to the dead-letter topic while good traffic flows.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::StatusCode;
use otaledger_cli::components::{prepare, Component};
use otaledger_ledger::amqp::{connect, declare_reports_queue, publish_batch};
use otaledger_ledger::shutdown::Shutdown;
use otaledger_simulator::{self as simulator, SimConfig};
use otaledger_tests::rollouts::get;
use otaledger_tests::{
    config, eventually, mqtt_bridge_subscribed, read_topic, records_when, spawn_components, unique,
    Services,
};
use rumqttc::{AsyncClient, QoS};
use serde_json::Value;

/// Every device, through the paginated list.
async fn all_devices(app: &axum::Router) -> Vec<Value> {
    let mut out = Vec::new();
    let mut uri = "/v1/devices?limit=1000".to_owned();
    loop {
        let (status, page) = get(app, &uri).await;
        assert_eq!(status, StatusCode::OK);
        out.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(c) => uri = format!("/v1/devices?limit=1000&cursor={c}"),
            None => return out,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_simulated_device_reaches_the_api_with_the_right_fields() {
    let services = Services::get().await;
    let name = unique("sim_api");
    let cfg = config(&services, &name);
    prepare(&cfg).await.unwrap();
    let (stack, handles) = spawn_components(
        &cfg,
        &[
            Component::MqttBridge,
            Component::AmqpBridge,
            Component::Projector,
        ],
    );
    mqtt_bridge_subscribed(&cfg).await;

    let sim = SimConfig {
        devices: 2500,
        rate: 5000.0,
        gateway_share: 0.3,
        gateways: 4,
        id_prefix: "sim-".into(),
        seed: 11,
        rounds: Some(1),
        mqtt_connections: 3,
        credentials: None,
        gateway_credentials: None,
        mqtt: cfg.mqtt.clone(),
        amqp: cfg.amqp.clone(),
        behaviour: simulator::Behaviour::default(),
        downloads: None,
    };
    let stats = simulator::run(sim.clone(), Shutdown::new().signal())
        .await
        .unwrap();
    assert!(
        stats.mqtt_messages > 0 && stats.gateway_reports > 0,
        "{stats:?}"
    );
    // A registration burst of 2,500 devices: a broker that drops queued QoS 1 messages fails here.
    assert_eq!(stats.mqtt_messages + stats.gateway_reports, 2500 * 2);

    let app = otaledger_tests::api_app(&cfg).await;
    let devices: BTreeMap<String, Value> = eventually(
        Duration::from_secs(90),
        "all 2,500 devices with 2 events each",
        || {
            let app = app.clone();
            async move {
                let items = all_devices(&app).await;
                let done = items.len() == 2500 && items.iter().all(|d| d["events"] == 2);
                done.then(|| {
                    items
                        .into_iter()
                        .map(|d| (d["device_id"].as_str().unwrap_or_default().to_owned(), d))
                        .collect()
                })
            }
        },
    )
    .await;
    for d in simulator::fleet(&sim) {
        let got = &devices[&d.device_id];
        assert_eq!(got["model"], d.model.as_str(), "{}", d.device_id);
        assert_eq!(got["site"], d.site.as_str());
        assert_eq!(got["firmware_version"], d.firmware_version.as_str());
        assert_eq!(got["hardware_rev"].as_str(), d.hardware_rev.as_deref());
        assert_eq!(got["gateway_id"].as_str(), d.gateway_id.as_deref());
        assert_eq!(got["tags"], serde_json::json!(d.tags));
        assert_eq!(got["status"], "online");
        assert!(got["health"]["uptime_s"].as_i64().unwrap() >= 3600);
        // Direct devices report radio signal; gateway-attached ones do not.
        assert_eq!(
            got["health"]["signal_dbm"].is_null(),
            d.gateway_id.is_some()
        );
    }
    let (_, summary) = get(&app, "/v1/fleet/summary").await;
    assert_eq!(summary["total"], 2500);
    assert_eq!(summary["by_status"]["online"], 2500);
    let by_model: u64 = summary["by_model"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(by_model, 2500);
    assert!(
        summary["by_model"].get("unknown").is_none(),
        "every registration arrived"
    );
    let dead = read_topic(&cfg.kafka, &cfg.kafka.topics().dead_letters).await;
    assert!(
        dead.is_empty(),
        "good traffic dead-lettered: {:?}",
        dead.first().map(|r| &r.headers)
    );

    stack.trigger();
    for h in handles {
        tokio::time::timeout(Duration::from_secs(20), h)
            .await
            .expect("graceful stop")
            .unwrap();
    }
    otaledger_tests::drop_schema(&services, &cfg.database.schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_mqtt_and_amqp_input_goes_to_dead_letters_while_good_traffic_flows() {
    let services = Services::get().await;
    let name = unique("dlq");
    let cfg = config(&services, &name);
    prepare(&cfg).await.unwrap();
    let (stack, handles) = spawn_components(&cfg, &[Component::MqttBridge, Component::AmqpBridge]);
    mqtt_bridge_subscribed(&cfg).await;

    let (client, mut eventloop) =
        AsyncClient::new(cfg.mqtt.options(&format!("{name}-device")), 100);
    let poller = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let root = &cfg.mqtt.topic_root;
    let good =
        r#"{"firmware_version":"1.0.0","uptime_s":1,"cpu_pct":1,"mem_pct":1,"temperature_c":20}"#;
    client
        .publish(
            format!("{root}/bad-1/heartbeat"),
            QoS::AtLeastOnce,
            false,
            "{not json",
        )
        .await
        .unwrap();
    client
        .publish(
            format!("{root}/bad-2/heartbeat"),
            QoS::AtLeastOnce,
            false,
            r#"{"firmware_version":7}"#,
        )
        .await
        .unwrap();
    client
        .publish(
            format!("{root}/bad-3/telemetry"),
            QoS::AtLeastOnce,
            false,
            good,
        )
        .await
        .unwrap();
    client
        .publish(
            format!("{root}/good-1/heartbeat"),
            QoS::AtLeastOnce,
            false,
            good,
        )
        .await
        .unwrap();

    // A message as large as the bridge reads (1 MiB): over the device limit, and kept in its
    // dead letter only in part, or the dead letter itself would be over Kafka's record limit
    // and stop the bridge for good.
    let huge = vec![b'x'; 1_000_000];
    client
        .publish(
            format!("{root}/bad-4/heartbeat"),
            QoS::AtLeastOnce,
            false,
            huge,
        )
        .await
        .unwrap();

    let conn = connect(&cfg.amqp).await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    declare_reports_queue(&channel, &cfg.amqp).await.unwrap();
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .unwrap();
    publish_batch(&channel, &cfg.amqp, "guest", b"definitely not json")
        .await
        .unwrap();
    // A 3 MB batch that does not read: under the AMQP limit, over Kafka's record limit.
    let mut garbage = b"[".to_vec();
    garbage.resize(3_000_000, b'7');
    publish_batch(&channel, &cfg.amqp, "guest", &garbage)
        .await
        .unwrap();
    let mixed = serde_json::json!({"gateway_id": "gw-9", "reports": [
        {"device_id": "gwdev-bad", "kind": "heartbeat", "data": {"firmware_version": "1", "uptime_s": 1, "cpu_pct": 500, "mem_pct": 1, "temperature_c": 1}},
        {"device_id": "gwdev-good", "kind": "heartbeat", "data": {"firmware_version": "1", "uptime_s": 1, "cpu_pct": 5, "mem_pct": 1, "temperature_c": 1}},
    ]});
    publish_batch(&channel, &cfg.amqp, "guest", mixed.to_string().as_bytes())
        .await
        .unwrap();

    let topics = cfg.kafka.topics();
    let dead = records_when(&cfg.kafka, &topics.dead_letters, "7 dead letters", |d| {
        d.len() >= 7
    })
    .await;
    assert_eq!(dead.len(), 7);
    let reasons: BTreeMap<String, String> = dead
        .iter()
        .map(|r| {
            (
                format!(
                    "{}:{}",
                    r.headers["dlq-source"],
                    String::from_utf8_lossy(&r.key)
                ),
                r.headers["dlq-reason"].clone(),
            )
        })
        .collect();
    assert_eq!(reasons["mqtt:bad-1"], "invalid_json");
    assert_eq!(reasons["mqtt:bad-2"], "invalid_field");
    assert_eq!(reasons["mqtt:bad-3"], "unknown_topic");
    assert_eq!(reasons["mqtt:bad-4"], "payload_too_large");
    let bad4 = dead.iter().find(|r| r.key == b"bad-4").unwrap();
    assert_eq!(
        bad4.payload.len(),
        otaledger_ledger::dead_letters::MAX_KEPT_BYTES
    );
    assert_eq!(bad4.headers["dlq-truncated-from"], "1000000");
    let amqp_dead: Vec<_> = dead
        .iter()
        .filter(|r| r.headers["dlq-source"] == "amqp" && r.key.is_empty())
        .collect();
    assert_eq!(amqp_dead.len(), 2, "both unreadable batches");
    assert!(amqp_dead
        .iter()
        .all(|r| r.headers["dlq-reason"] == "invalid_json"));
    assert!(amqp_dead
        .iter()
        .any(|r| r.headers.get("dlq-truncated-from").map(String::as_str) == Some("3000000")));
    assert_eq!(reasons["amqp:gwdev-bad"], "invalid_field");
    let bad1 = dead.iter().find(|r| r.key == b"bad-1").unwrap();
    assert_eq!(bad1.payload, b"{not json", "the original bytes are kept");
    assert_eq!(
        bad1.headers["dlq-channel"],
        format!("{root}/bad-1/heartbeat")
    );
    assert!(!bad1.headers["dlq-error"].is_empty());

    let events = records_when(&cfg.kafka, &topics.device_events, "the good events", |e| {
        e.len() >= 2
    })
    .await;
    let mut keys: Vec<String> = events
        .iter()
        .map(|r| String::from_utf8_lossy(&r.key).into_owned())
        .collect();
    keys.sort();
    assert_eq!(keys, ["good-1", "gwdev-good"]);
    let metrics = otaledger_ledger::metrics::REGISTRY.render();
    assert!(
        metrics.contains(r#"otaledger_dead_letters_total{source="mqtt",reason="invalid_json"}"#),
        "{metrics}"
    );

    // The bridges are still running and still take traffic.
    client
        .publish(
            format!("{root}/good-2/heartbeat"),
            QoS::AtLeastOnce,
            false,
            good,
        )
        .await
        .unwrap();
    records_when(
        &cfg.kafka,
        &topics.device_events,
        "a heartbeat after the bad ones",
        |e| e.iter().any(|r| r.key == b"good-2"),
    )
    .await;
    assert!(handles.iter().all(|h| !h.is_finished()));
    stack.trigger();
    for h in handles {
        tokio::time::timeout(Duration::from_secs(20), h)
            .await
            .expect("graceful stop")
            .unwrap();
    }
    poller.abort();
    let _ = conn.close(200, "done".into()).await;
    otaledger_tests::drop_schema(&services, &cfg.database.schema).await;
}

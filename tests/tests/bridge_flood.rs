#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! Bounded memory under floods (issue 17, item 5; ADR 0040), for real: each bridge runs as an
//! `otaledger run` process against a Kafka-API broker of the test's own, which the test freezes
//! (SIGSTOP) so that nothing is acknowledged, and floods. The bridge's peak resident memory
//! must grow by less than a stated bound; once the broker is thawed, every QoS 1 message and
//! every AMQP report is in the ledger. And one device flooding cannot crowd out the others.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use otaledger_bench::process::ComponentProcess;
use otaledger_cli::components::{prepare, Component};
use otaledger_domain::Payload;
use otaledger_ledger::config::Config;
use otaledger_tests::broker::{own_namespace, Broker};
use otaledger_tests::{binary, config, eventually, read_topic, unique, Services};
use rumqttc::{AsyncClient, Event, Outgoing, Packet, QoS};
use serde_json::json;

/// What a bridge's resident memory may grow by under a flood with a budget of [`BUDGET`]
/// bytes: the budget held twice (the messages and their Kafka records) and what the MQTT and
/// AMQP clients and the allocator keep besides. Without a budget the floods below grow it by
/// several times their 80 MiB.
const BOUND_MIB: f64 = 40.0;
const BUDGET: u64 = 4 * 1024 * 1024;

/// A heartbeat of `device` padded to about `pad` bytes (the parser ignores unknown fields).
fn heartbeat(device: &str, uptime: u64, pad: usize) -> serde_json::Value {
    json!({"device_id": device, "firmware_version": "1.0.0", "uptime_s": uptime,
           "cpu_pct": 1, "mem_pct": 1, "temperature_c": 20, "pad": "x".repeat(pad)})
}

/// The (device, uptime) of every heartbeat in the ledger whose device starts with `prefix`.
async fn heartbeats(cfg: &Config, prefix: &str) -> BTreeSet<(String, i64)> {
    read_topic(&cfg.kafka, &cfg.kafka.topics().device_events)
        .await
        .into_iter()
        .filter_map(|r| otaledger_schemas::decode(&r.payload).ok())
        .filter_map(|d| match d.event.payload {
            Payload::Heartbeat(h) if h.device_id.starts_with(prefix) => {
                Some((h.device_id, h.health.uptime_s))
            }
            _ => None,
        })
        .collect()
}

/// A namespace on a broker of the test's own; the bridge's budget is [`BUDGET`].
async fn setup(test: &str) -> (Config, Broker) {
    let (mut cfg, broker) = own_namespace(test).await;
    cfg.kafka.partitions = 2;
    // Nothing may time out while the broker is frozen: a failed record would stop the bridge.
    cfg.kafka.message_timeout_ms = 600_000;
    cfg.ingest.budget_bytes = BUDGET;
    cfg.ingest.budget_messages = 2_000;
    prepare(&cfg).await.unwrap();
    (cfg, broker)
}

async fn wait_metric(bridge: &ComponentProcess, series: &str, at_least: f64, within: Duration) {
    let what = format!("{series} >= {at_least}");
    eventually(within, &what, || async {
        (bridge.metric(series).await >= at_least).then_some(())
    })
    .await;
}

/// `otaledger run mqtt-bridge`, once it holds its subscription.
async fn mqtt_bridge(cfg: &Config) -> ComponentProcess {
    let bridge = ComponentProcess::start(&binary(), cfg, Component::MqttBridge, None).unwrap();
    let subscribed = format!(
        "otaledger_mqtt_bridge_subscribed{{client_id=\"{}\"}}",
        cfg.mqtt.bridge_client_id()
    );
    wait_metric(&bridge, &subscribed, 1.0, Duration::from_secs(30)).await;
    bridge
}

/// A publisher under the service login, counting the broker's PUBACKs.
fn publisher(cfg: &Config, id: &str) -> (AsyncClient, tokio::sync::watch::Receiver<u64>) {
    let mut opts = cfg.mqtt.options(id);
    opts.set_inflight(1000);
    let (client, mut eventloop) = AsyncClient::new(opts, 10_000);
    let (tx, rx) = tokio::sync::watch::channel(0_u64);
    tokio::spawn(async move {
        let mut acked = 0;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    acked += 1;
                    let _ = tx.send(acked);
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    });
    (client, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mqtt_bridge_stays_within_its_budget_while_kafka_is_frozen() {
    let (mut cfg, broker) = setup("flood_mqtt").await;
    cfg.ingest.device_rate_per_s = 0.0; // the budget alone, here
    let bridge = mqtt_bridge(&cfg).await;
    let before = bridge.peak_rss_mib();
    broker.signal("-STOP");

    // 40,000 QoS 0 heartbeats of 2 KiB (80 MiB): over the budget they are dropped.
    let (client, acks) = publisher(&cfg, &format!("{}-flood", cfg.mqtt.topic_root));
    let root = cfg.mqtt.topic_root.clone();
    let qos0 = 40_000_u64;
    for i in 0..qos0 {
        let topic = format!("{root}/fl-{}/heartbeat", i % 2_000);
        let body = heartbeat(&format!("fl-{}", i % 2_000), i, 2_048).to_string();
        client
            .publish(topic, QoS::AtMostOnce, false, body)
            .await
            .unwrap();
    }
    wait_metric(
        &bridge,
        "otaledger_mqtt_messages_total",
        qos0 as f64,
        Duration::from_secs(120),
    )
    .await;
    let dropped = bridge
        .metric("otaledger_bridge_dropped_total{bridge=\"mqtt\"}")
        .await;
    assert!(
        dropped >= (qos0 - 2_000) as f64,
        "only the budget's 2,000 messages are held: {dropped} dropped"
    );

    // 2,000 QoS 1 heartbeats of 2 KiB: the broker acknowledges them, the bridge holds back.
    let qos1 = 2_000_u64;
    for i in 0..qos1 {
        let device = format!("ok-{}", i % 200);
        let body = heartbeat(&device, i, 2_048).to_string();
        client
            .publish(
                format!("{root}/{device}/heartbeat"),
                QoS::AtLeastOnce,
                false,
                body,
            )
            .await
            .unwrap();
    }
    let mut acks2 = acks.clone();
    tokio::time::timeout(Duration::from_secs(60), acks2.wait_for(|n| *n >= qos1))
        .await
        .expect("the broker to acknowledge every QoS 1 message")
        .unwrap();
    wait_metric(
        &bridge,
        "otaledger_bridge_held_back_total{bridge=\"mqtt\"}",
        1.0,
        Duration::from_secs(30),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let held = bridge
        .metric("otaledger_bridge_held_bytes{bridge=\"mqtt\"}")
        .await;
    assert!(held <= BUDGET as f64, "{held} bytes held");
    let grew = bridge.peak_rss_mib() - before;

    // Thawed, the broker takes what the bridge held and the bridge reads on.
    broker.signal("-CONT");
    let want: BTreeSet<(String, i64)> = (0..qos1)
        .map(|i| (format!("ok-{}", i % 200), i as i64))
        .collect();
    let started = Instant::now();
    eventually(
        Duration::from_secs(120),
        "every QoS 1 heartbeat in the ledger",
        || async { (heartbeats(&cfg, "ok-").await == want).then_some(()) },
    )
    .await;
    println!(
        "MQTT flood, Kafka frozen: {qos0} QoS 0 and {qos1} QoS 1 messages of 2 KiB; {dropped} \
         QoS 0 dropped over a budget of {} MiB; peak RSS {before:.1} MiB -> +{grew:.1} MiB \
         (bound {BOUND_MIB} MiB); every QoS 1 message in the ledger {:?} after the thaw",
        BUDGET >> 20,
        started.elapsed()
    );
    assert!(grew < BOUND_MIB, "peak RSS grew by {grew:.1} MiB");
    let _ = client.disconnect().await;
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_amqp_bridge_stays_within_its_budget_while_kafka_is_frozen() {
    let (mut cfg, broker) = setup("flood_amqp").await;
    cfg.ingest.device_rate_per_s = 0.0;
    let bridge = ComponentProcess::start(&binary(), &cfg, Component::AmqpBridge, None).unwrap();
    wait_metric(
        &bridge,
        "otaledger_amqp_prefetch",
        1.0,
        Duration::from_secs(30),
    )
    .await;
    let before = bridge.peak_rss_mib();
    broker.signal("-STOP");

    // 80 batches of 1 MiB (100 heartbeats of 10 KiB), sent as otaledger's own relay login.
    let conn = Connection::connect(&cfg.amqp.url, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let batches = 80_u64;
    let per_batch = 100_u64;
    for b in 0..batches {
        let reports: Vec<_> = (0..per_batch)
            .map(|r| {
                let device = format!("gw-dev-{r}");
                json!({"device_id": device, "kind": "heartbeat",
                       "data": heartbeat(&device, b * per_batch + r, 10_240)})
            })
            .collect();
        let body = json!({"gateway_id": "gw-flood", "reports": reports}).to_string();
        channel
            .basic_publish(
                cfg.amqp.reports_queue.as_str().into(),
                "".into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default().with_user_id(cfg.amqp.login().into()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    // Every batch is with RabbitMQ; the bridge takes what its prefetch lets it, then waits.
    wait_metric(
        &bridge,
        "otaledger_amqp_batches_total",
        1.0,
        Duration::from_secs(60),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let read = bridge.metric("otaledger_amqp_batches_total").await;
    let held = bridge
        .metric("otaledger_bridge_held_bytes{bridge=\"amqp\"}")
        .await;
    let prefetch = bridge.metric("otaledger_amqp_prefetch").await;
    assert!(held <= BUDGET as f64, "{held} bytes held");
    assert!(
        read <= (BUDGET >> 20) as f64 + 1.0,
        "{read} batches of 1 MiB read under a budget of {} MiB",
        BUDGET >> 20
    );
    let grew = bridge.peak_rss_mib() - before;

    broker.signal("-CONT");
    let want: BTreeSet<(String, i64)> = (0..batches * per_batch)
        .map(|i| (format!("gw-dev-{}", i % per_batch), i as i64))
        .collect();
    eventually(
        Duration::from_secs(180),
        "every gateway report in the ledger",
        || async { (heartbeats(&cfg, "gw-dev-").await == want).then_some(()) },
    )
    .await;
    println!(
        "AMQP flood, Kafka frozen: {batches} batches of 1 MiB, {read} read while frozen; \
         prefetch {prefetch} under a budget of {} MiB; peak RSS {before:.1} MiB -> +{grew:.1} MiB (bound {BOUND_MIB} MiB); \
         every report in the ledger after the thaw",
        BUDGET >> 20
    );
    assert!(grew < BOUND_MIB, "peak RSS grew by {grew:.1} MiB");
    let _ = conn.close(200, "done".into()).await;
    bridge.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_device_flooding_does_not_crowd_out_the_others() {
    let name = unique("flood_rate");
    let mut cfg = config(&Services::get().await, &name);
    cfg.kafka.partitions = 2;
    cfg.ingest.device_rate_per_s = 5.0;
    cfg.ingest.device_burst = 10;
    prepare(&cfg).await.unwrap();
    let bridge = mqtt_bridge(&cfg).await;
    let (client, acks) = publisher(&cfg, &format!("{}-rate", cfg.mqtt.topic_root));
    let root = cfg.mqtt.topic_root.clone();

    // For three seconds one device sends 100 heartbeats a second; 50 others, 2 a second.
    let started = Instant::now();
    let mut sent = 0_u64;
    let mut flood = 0_u64;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    for t in 0..300_u64 {
        tick.tick().await;
        client
            .publish(
                format!("{root}/noisy/heartbeat"),
                QoS::AtLeastOnce,
                false,
                heartbeat("noisy", t, 0).to_string(),
            )
            .await
            .unwrap();
        flood += 1;
        if t % 50 == 0 {
            for d in 0..50 {
                let device = format!("calm-{d}");
                client
                    .publish(
                        format!("{root}/{device}/heartbeat"),
                        QoS::AtLeastOnce,
                        false,
                        heartbeat(&device, t, 0).to_string(),
                    )
                    .await
                    .unwrap();
                sent += 1;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut acks2 = acks.clone();
    tokio::time::timeout(
        Duration::from_secs(30),
        acks2.wait_for(|n| *n >= flood + sent),
    )
    .await
    .unwrap()
    .unwrap();

    // Every calm device's heartbeat is in the ledger; the noisy one got its burst and rate.
    eventually(
        Duration::from_secs(60),
        "the calm devices' heartbeats",
        || async { (heartbeats(&cfg, "calm-").await.len() == sent as usize).then_some(()) },
    )
    .await;
    let limited = "otaledger_rate_limited_total{source=\"mqtt\"}";
    wait_metric(
        &bridge,
        "otaledger_mqtt_messages_total",
        (flood + sent) as f64,
        Duration::from_secs(30),
    )
    .await;
    let refused = bridge.metric(limited).await;
    let admitted = heartbeats(&cfg, "noisy").await.len();
    let most = 10.0 + 5.0 * (elapsed + 1.0);
    assert_eq!(admitted as f64 + refused, flood as f64, "each counted once");
    assert!(
        admitted as f64 <= most && admitted >= 10,
        "{admitted} of the noisy device's {flood} admitted in {elapsed:.1} s (at most {most})"
    );
    // Its refusals are dead-lettered once a second, with their count; nobody else's.
    let dead = read_topic(&cfg.kafka, &cfg.kafka.topics().dead_letters).await;
    let limited_letters: Vec<_> = dead
        .iter()
        .filter(|r| r.headers.get("dlq-reason").map(String::as_str) == Some("rate_limited"))
        .collect();
    assert!(
        limited_letters.iter().all(|r| r.key == b"noisy"),
        "only the noisy device is dead-lettered"
    );
    assert!(
        !limited_letters.is_empty() && limited_letters.len() as f64 <= elapsed + 2.0,
        "{} rate_limited dead letters in {elapsed:.1} s",
        limited_letters.len()
    );
    println!(
        "one device at 100 messages/s, 50 at 2/s for {elapsed:.1} s: all {sent} calm messages \
         ingested; the noisy device {admitted} admitted, {refused} refused, {} dead letters",
        limited_letters.len()
    );
    let _ = client.disconnect().await;
    bridge.stop().await;
}

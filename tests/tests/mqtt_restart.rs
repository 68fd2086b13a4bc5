#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! Mosquitto's queues survive its restart (issue 17, item 1), with the settings
//! scripts/services.sh and docker/mosquitto.conf give it (persistence, autosave every 60 s, the
//! queue limits of ADR 0006), on a Mosquitto of the test's own: the MQTT bridge subscribes
//! with its persistent session and stops; devices publish QoS 1 heartbeats, which the broker
//! acknowledges and queues for the bridge; the broker is restarted; the bridge starts again and
//! every acknowledged heartbeat reaches the ledger.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use otaledger_cli::components::{prepare, Component};
use otaledger_domain::Payload;
use otaledger_tests::{
    config, decode_all, mqtt_bridge_subscribed, records_when, spawn_components, unique, Services,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// The settings of scripts/services.sh that keep what Mosquitto queued.
const KEEPING: &str = "persistence true
autosave_interval 60
max_inflight_messages 1000
max_queued_messages 1000000
max_queued_bytes 0
";

struct Broker {
    conf: std::path::PathBuf,
    child: Option<Child>,
}

impl Broker {
    fn start(&mut self) {
        self.child = Some(
            Command::new("mosquitto")
                .arg("-c")
                .arg(&self.conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
    }

    /// A clean stop (SIGTERM), as a service manager's restart does.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_reports_survive_a_restart_of_the_mqtt_broker() {
    let name = unique("mqtt_restart");
    let dir = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    let port = otaledger_tests::free_port();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nuser root\n\
             persistence_location {}/\n{KEEPING}",
            dir.display()
        ),
    )
    .unwrap();
    let mut broker = Broker { conf, child: None };
    broker.start();
    otaledger_tests::listening(port, "mosquitto listening").await;

    let mut cfg = config(&Services::get().await, &name);
    cfg.mqtt.host = "127.0.0.1".into();
    cfg.mqtt.port = port;
    cfg.mqtt.tls_ca = None;
    prepare(&cfg).await.unwrap();
    let (stop, handles) = spawn_components(&cfg, &[Component::MqttBridge]);
    mqtt_bridge_subscribed(&cfg).await;
    stop.trigger();
    for h in handles {
        h.await.unwrap();
    }

    // Devices publish while the bridge is away: the broker acknowledges and queues each.
    let mut opts = MqttOptions::new(format!("{name}-devices"), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    let root = cfg.mqtt.topic_root.clone();
    let good =
        r#"{"firmware_version":"1.0.0","uptime_s":1,"cpu_pct":1,"mem_pct":1,"temperature_c":20}"#;
    for i in 0..50 {
        client
            .publish(
                format!("{root}/mr-{i:02}/heartbeat"),
                QoS::AtLeastOnce,
                false,
                good,
            )
            .await
            .unwrap();
    }
    let mut acked = 0;
    while acked < 50 {
        match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            other => panic!("publishing: {other:?}"),
        }
    }
    drop(client);

    broker.stop();
    broker.start();
    otaledger_tests::listening(port, "mosquitto back").await;

    let (stop, _handles) = spawn_components(&cfg, &[Component::MqttBridge]);
    let topic = cfg.kafka.topics().device_events;
    let records = records_when(&cfg.kafka, &topic, "the 50 queued heartbeats", |r| {
        let mut devices: Vec<String> = decode_all(r)
            .into_iter()
            .filter_map(|(_, e)| match e.payload {
                Payload::Heartbeat(h) => Some(h.device_id),
                _ => None,
            })
            .collect();
        devices.sort();
        devices.dedup();
        devices.len() >= 50
    })
    .await;
    assert!(!records.is_empty());
    stop.trigger();
    let _ = std::fs::remove_dir_all(&dir);
}

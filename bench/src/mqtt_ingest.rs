//! Device reports through Mosquitto and the MQTT bridge into the ledger, in plain text and over
//! TLS on the same broker in the same run: what TLS costs ingest (issue 16).
//!
//! The bridge runs in this process (its counter of appended events is read directly); the
//! devices are the simulator's, multiplexed over eight connections under the service login and
//! sending as fast as the broker acknowledges (QoS 1). A run ends when every report is in the
//! ledger.

use std::time::{Duration, Instant};

use otaledger_cli::components::{run, Component};
use otaledger_ledger::config::Config;
use otaledger_ledger::metrics::{self, REGISTRY};
use otaledger_ledger::shutdown::Shutdown;
use otaledger_simulator::{self as simulator, SimConfig};

use crate::BoxError;

/// Mosquitto's TLS listener and the CA that signed its certificate.
#[derive(Debug, Clone)]
pub struct TlsListener {
    pub port: u16,
    pub ca: String,
}

/// Reports per second into the ledger for one run of `devices` devices, each registering and
/// sending `rounds` heartbeats.
pub async fn reports_per_s(
    cfg: &Config,
    root: &str,
    devices: usize,
    rounds: u64,
    tls: Option<&TlsListener>,
) -> Result<f64, BoxError> {
    let mut cfg = cfg.clone();
    cfg.mqtt.topic_root = format!("{root}/devices");
    cfg.mqtt.client_id = String::new();
    if let Some(t) = tls {
        cfg.mqtt.port = t.port;
        cfg.mqtt.tls_ca = Some(t.ca.clone());
    }
    let stop = Shutdown::new();
    let bridge = tokio::spawn(run(Component::MqttBridge, cfg.clone(), stop.signal()));
    let subscribed = REGISTRY.gauge(
        "otaledger_mqtt_bridge_subscribed",
        "1 while the MQTT bridge holds its subscription",
        &[("client_id", &cfg.mqtt.bridge_client_id())],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while subscribed.get() != 1 {
        if Instant::now() > deadline || bridge.is_finished() {
            return Err("the MQTT bridge did not subscribe within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ingested = metrics::ingested("mqtt");
    let before = ingested.get();
    #[allow(clippy::cast_possible_truncation)]
    let total = devices as u64 * (1 + rounds);
    let sim = SimConfig {
        devices,
        rate: 1e9,
        gateway_share: 0.0,
        id_prefix: format!("{root}-"),
        rounds: Some(rounds),
        mqtt_connections: 8,
        mqtt: cfg.mqtt.clone(),
        amqp: cfg.amqp.clone(),
        ..SimConfig::default()
    };
    let started = Instant::now();
    simulator::run(sim, Shutdown::new().signal()).await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    while ingested.get() - before < total {
        if Instant::now() > deadline {
            return Err(format!(
                "{} of {total} reports reached the ledger within 300 s",
                ingested.get() - before
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();
    stop.trigger();
    let _ = bridge.await;
    Ok(crate::rate(total as usize, elapsed))
}

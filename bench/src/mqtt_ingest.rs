//! Device reports through Mosquitto and the MQTT bridge into the ledger, in plain text and over
//! TLS on the same broker in the same run: what TLS costs ingest (issue 16).
//!
//! The bridge runs as its own process (its `/metrics` tell how many events it appended); the
//! devices are the simulator's, multiplexed over eight connections under the service login and
//! sending as fast as the broker acknowledges (QoS 1). A run ends when every report is in the
//! ledger.

use std::time::{Duration, Instant};

use otaledger_cli::components::Component;
use otaledger_ledger::config::Config;
use otaledger_ledger::shutdown::Shutdown;
use otaledger_simulator::{self as simulator, SimConfig};

use crate::process::ComponentProcess;
use crate::BoxError;

/// Mosquitto's TLS listener and the CA that signed its certificate.
#[derive(Debug, Clone)]
pub struct TlsListener {
    pub port: u16,
    pub ca: String,
}

/// Reports per second into the ledger for one run of `devices` devices, each registering and
/// sending `rounds` heartbeats, with the bridge as an `otaledger run mqtt-bridge` process of
/// `bin` (as in production, and apart from the simulator's runtime).
pub async fn reports_per_s(
    bin: &std::path::Path,
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
    let bridge = ComponentProcess::start(bin, &cfg, Component::MqttBridge, None)?;
    let subscribed = format!(
        "otaledger_mqtt_bridge_subscribed{{client_id=\"{}\"}}",
        cfg.mqtt.bridge_client_id()
    );
    let ingested = "otaledger_events_ingested_total{source=\"mqtt\"}";
    let deadline = Instant::now() + Duration::from_secs(30);
    while bridge.metric(&subscribed).await < 1.0 {
        if Instant::now() > deadline {
            bridge.stop().await;
            return Err("the MQTT bridge did not subscribe within 30 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    loop {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let done = bridge.metric(ingested).await as u64;
        if done >= total {
            break;
        }
        if Instant::now() > deadline {
            bridge.stop().await;
            return Err(
                format!("{done} of {total} reports reached the ledger within 300 s").into(),
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    bridge.stop().await;
    #[allow(clippy::cast_possible_truncation)]
    Ok(crate::rate(total as usize, elapsed))
}

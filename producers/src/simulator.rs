//! The fleet simulator: N devices with realistic models, sites, tags, firmware and health,
//! most talking MQTT directly, a share behind edge gateways that batch their reports over AMQP.
//!
//! Devices are multiplexed over a few MQTT connections (as a gateway or a load generator
//! would) so that a 100,000-device fleet fits in one process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use otaledger_domain::events::DeviceRegistered;
use rand::rngs::SmallRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rumqttc::{AsyncClient, Event as MqttEvent, Packet, QoS};
use serde_json::json;

use crate::amqp_bridge::{connect, declare_reports_queue, publish_batch, AmqpConfig};
use crate::mqtt_bridge::MqttConfig;
use crate::shutdown::ShutdownSignal;
use crate::{AmqpContext, Error, Result};

const MODELS: &[(&str, &[&str])] = &[
    ("elevator-gen2", &["4.1.0", "4.2.3", "4.2.4"]),
    ("elevator-gen3", &["5.0.1", "5.1.0"]),
    ("escalator-e1", &["2.7.9", "2.8.0"]),
    ("press-p500", &["1.14.2", "1.15.0", "1.15.1"]),
    ("conveyor-c7", &["7.0.0", "7.0.3"]),
];
const SITES: &[&str] = &[
    "berlin-01",
    "munich-02",
    "vienna-01",
    "zurich-03",
    "lyon-01",
    "milan-02",
    "oslo-01",
];
const TAGS: &[&str] = &[
    "prod", "eu", "indoor", "outdoor", "critical", "beta", "retrofit",
];

/// One simulated device: what it tells the ledger when it registers.
pub type SimDevice = DeviceRegistered;

/// The simulator's settings.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub devices: usize,
    /// Heartbeats per second across the whole fleet.
    pub rate: f64,
    /// Share of devices behind gateways (0 to 1).
    pub gateway_share: f64,
    pub gateways: usize,
    /// Prepended to device and gateway ids, so fleets never collide.
    pub id_prefix: String,
    pub seed: u64,
    /// Heartbeats each device sends before the simulator stops; `None` runs until shutdown.
    pub rounds: Option<u64>,
    pub mqtt_connections: usize,
    pub mqtt: MqttConfig,
    pub amqp: AmqpConfig,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            devices: 1000,
            rate: 500.0,
            gateway_share: 0.2,
            gateways: 10,
            id_prefix: String::new(),
            seed: 7,
            rounds: None,
            mqtt_connections: 8,
            mqtt: MqttConfig::default(),
            amqp: AmqpConfig::default(),
        }
    }
}

/// What the simulator sent.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SimStats {
    pub mqtt_messages: u64,
    pub gateway_batches: u64,
    pub gateway_reports: u64,
}

/// The deterministic fleet for a configuration.
#[must_use]
pub fn fleet(cfg: &SimConfig) -> Vec<SimDevice> {
    let mut rng = SmallRng::seed_from_u64(cfg.seed);
    let gateways = cfg.gateways.max(1);
    (0..cfg.devices)
        .map(|i| {
            let (model, versions) = MODELS[i % MODELS.len()];
            let site = SITES.choose(&mut rng).copied().unwrap_or("unknown");
            let mut tags: Vec<String> = TAGS
                .iter()
                .filter(|_| rng.random_bool(0.3))
                .map(|t| (*t).to_owned())
                .collect();
            if tags.is_empty() {
                tags.push("prod".into());
            }
            let behind_gateway = rng.random_bool(cfg.gateway_share.clamp(0.0, 1.0));
            SimDevice {
                device_id: format!("{}dev-{i:06}", cfg.id_prefix),
                model: model.to_owned(),
                site: site.to_owned(),
                tags,
                firmware_version: versions
                    .choose(&mut rng)
                    .copied()
                    .unwrap_or("1.0.0")
                    .to_owned(),
                gateway_id: behind_gateway
                    .then(|| format!("{}gw-{:03}", cfg.id_prefix, rng.random_range(0..gateways))),
                hardware_rev: Some(format!("rev-{}", rng.random_range(1..4))),
            }
        })
        .collect()
}

fn heartbeat_json(d: &SimDevice, rng: &mut SmallRng, uptime: u64) -> serde_json::Value {
    let mut v = json!({
        "firmware_version": d.firmware_version,
        "uptime_s": uptime,
        "cpu_pct": (rng.random_range(2.0..60.0_f32) * 10.0).round() / 10.0,
        "mem_pct": (rng.random_range(20.0..80.0_f32) * 10.0).round() / 10.0,
        "temperature_c": (rng.random_range(25.0..70.0_f32) * 10.0).round() / 10.0,
        "error_count": u32::from(rng.random_bool(0.02)),
    });
    if d.gateway_id.is_none() {
        v["signal_dbm"] = json!(rng.random_range(-95..-40));
    }
    v
}

fn register_json(d: &SimDevice) -> serde_json::Value {
    // The registration body is the registration event's payload (device id included).
    serde_json::to_value(d).unwrap_or_default()
}

struct MqttLink {
    client: AsyncClient,
    acked: Arc<AtomicU64>,
    sent: u64,
}

async fn mqtt_links(cfg: &SimConfig) -> Vec<MqttLink> {
    let mut links = Vec::new();
    for i in 0..cfg.mqtt_connections.max(1) {
        let client_id = format!("otaledger-sim-{}-{}-{i}", cfg.id_prefix, std::process::id());
        let mut opts = cfg.mqtt.options(&client_id);
        opts.set_inflight(200);
        let (client, mut eventloop) = AsyncClient::new(opts, 10_000);
        let acked = Arc::new(AtomicU64::new(0));
        let counter = acked.clone();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(MqttEvent::Incoming(Packet::PubAck(_))) => {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(MqttEvent::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "simulator MQTT connection error");
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                }
            }
        });
        links.push(MqttLink {
            client,
            acked,
            sent: 0,
        });
    }
    links
}

/// Runs the simulation until `rounds` heartbeats per device were sent or shutdown.
pub async fn run(cfg: SimConfig, mut shutdown: ShutdownSignal) -> Result<SimStats> {
    let devices = fleet(&cfg);
    let mut links = mqtt_links(&cfg).await;
    let has_gateways = devices.iter().any(|d| d.gateway_id.is_some());
    let amqp = if has_gateways {
        let conn = connect(&cfg.amqp).await?;
        let channel = conn.create_channel().await.amqp("opening channel")?;
        declare_reports_queue(&channel, &cfg.amqp).await?;
        channel
            .confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await
            .amqp("enabling publisher confirms")?;
        Some((conn, channel))
    } else {
        None
    };
    let gateway_channel = amqp.as_ref().map(|(_, c)| c);
    let mut rng = SmallRng::seed_from_u64(cfg.seed ^ 0x5eed);
    let mut stats = SimStats::default();
    let mut batches: HashMap<String, Vec<serde_json::Value>> = HashMap::new();
    let root = cfg.mqtt.topic_root.clone();

    // Registration first, as devices do when they boot.
    for (i, d) in devices.iter().enumerate() {
        let body = register_json(d);
        send(
            &mut links,
            &mut batches,
            &root,
            i,
            d,
            "register",
            body,
            &mut stats,
        )
        .await?;
    }
    flush_batches(gateway_channel, &cfg.amqp, &mut batches, &mut stats).await?;

    let start = tokio::time::Instant::now();
    let tick = Duration::from_millis(20);
    let per_tick = (cfg.rate.max(1.0) * tick.as_secs_f64()).max(1.0);
    let mut budget = 0.0_f64;
    let mut sent_heartbeats: u64 = 0;
    let total = cfg.rounds.map(|r| r * devices.len() as u64);
    let mut interval = tokio::time::interval(tick);
    let mut last_flush = tokio::time::Instant::now();
    'outer: while !devices.is_empty() {
        tokio::select! {
            () = shutdown.wait() => break,
            _ = interval.tick() => {}
        }
        budget += per_tick;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let n = budget.floor() as u64;
        budget -= n as f64;
        for _ in 0..n {
            if total.is_some_and(|t| sent_heartbeats >= t) {
                break 'outer;
            }
            #[allow(clippy::cast_possible_truncation)]
            let i = (sent_heartbeats % devices.len() as u64) as usize;
            let d = &devices[i];
            let uptime = start.elapsed().as_secs() + 3600;
            let body = heartbeat_json(d, &mut rng, uptime);
            send(
                &mut links,
                &mut batches,
                &root,
                i,
                d,
                "heartbeat",
                body,
                &mut stats,
            )
            .await?;
            sent_heartbeats += 1;
        }
        // Gateways batch their devices' reports: up to 500, or whatever 200 ms gathered.
        if batches.values().any(|b| b.len() >= 500)
            || last_flush.elapsed() >= Duration::from_millis(200)
        {
            flush_batches(gateway_channel, &cfg.amqp, &mut batches, &mut stats).await?;
            last_flush = tokio::time::Instant::now();
        }
    }
    flush_batches(gateway_channel, &cfg.amqp, &mut batches, &mut stats).await?;
    // Wait until the broker acknowledged every QoS 1 publish.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for link in &links {
        while link.acked.load(Ordering::Relaxed) < link.sent {
            if tokio::time::Instant::now() > deadline {
                return Err(Error::Other(
                    "MQTT broker did not acknowledge every publish".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = link.client.disconnect().await;
    }
    if let Some((conn, _)) = amqp {
        let _ = conn.close(200, "simulation done".into()).await;
    }
    tracing::info!(?stats, "simulation finished");
    Ok(stats)
}

#[allow(clippy::too_many_arguments)]
async fn send(
    links: &mut [MqttLink],
    batches: &mut HashMap<String, Vec<serde_json::Value>>,
    root: &str,
    index: usize,
    d: &SimDevice,
    kind: &str,
    body: serde_json::Value,
    stats: &mut SimStats,
) -> Result<()> {
    if let Some(gw) = &d.gateway_id {
        batches
            .entry(gw.clone())
            .or_default()
            .push(json!({"device_id": d.device_id, "kind": kind, "data": body}));
        return Ok(());
    }
    let n = links.len();
    let link = &mut links[index % n];
    link.client
        .publish(
            format!("{root}/{}/{kind}", d.device_id),
            QoS::AtLeastOnce,
            false,
            body.to_string(),
        )
        .await
        .map_err(|e| Error::Mqtt {
            context: "publishing".into(),
            reason: e.to_string(),
        })?;
    link.sent += 1;
    stats.mqtt_messages += 1;
    Ok(())
}

async fn flush_batches(
    channel: Option<&lapin::Channel>,
    cfg: &AmqpConfig,
    batches: &mut HashMap<String, Vec<serde_json::Value>>,
    stats: &mut SimStats,
) -> Result<()> {
    let Some(channel) = channel else {
        return Ok(());
    };
    for (gateway_id, reports) in batches.drain() {
        if reports.is_empty() {
            continue;
        }
        stats.gateway_batches += 1;
        stats.gateway_reports += reports.len() as u64;
        let body = json!({"gateway_id": gateway_id, "reports": reports}).to_string();
        publish_batch(channel, cfg, body.as_bytes()).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fleet_is_deterministic_and_mixed() {
        let cfg = SimConfig {
            devices: 500,
            gateway_share: 0.3,
            ..SimConfig::default()
        };
        let a = fleet(&cfg);
        let b = fleet(&cfg);
        assert_eq!(a.len(), 500);
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
        let behind = a.iter().filter(|d| d.gateway_id.is_some()).count();
        assert!((100..200).contains(&behind), "{behind} behind gateways");
        assert!(a
            .iter()
            .all(|d| otaledger_domain::ids::validate_device_id(&d.device_id).is_ok()));
    }
}

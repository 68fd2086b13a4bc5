//! The simulated fleet: models, sites, tags and firmware drawn per device, and the rules that
//! make a share of devices fail, stay silent or turn unhealthy after an install.

use std::collections::HashMap;

use otaledger_domain::events::DeviceRegistered;
use otaledger_ledger::config::{AmqpConfig, MqttConfig};
use rand::rngs::SmallRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

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

/// The models the simulated fleet is made of.
#[must_use]
pub fn model_names() -> Vec<&'static str> {
    MODELS.iter().map(|(m, _)| *m).collect()
}

/// One simulated device: what it tells the ledger when it registers.
pub type SimDevice = DeviceRegistered;

/// Device (or gateway) credentials by id, with the gateway provisioning attached each device
/// to. `Debug` shows how many, never a secret.
#[derive(Clone, Default)]
pub struct DeviceCredentials(HashMap<String, (String, Option<String>)>);

impl std::fmt::Debug for DeviceCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceCredentials({} devices)", self.0.len())
    }
}

impl DeviceCredentials {
    /// Reads `id,token[,gateway_id]` lines, as `otaledger devices provision` and `otaledger
    /// gateways provision` print them (header and blank lines are skipped).
    #[must_use]
    pub fn from_csv(text: &str) -> Self {
        DeviceCredentials(
            text.lines()
                .filter_map(|l| {
                    let mut cols = l.split(',').map(str::trim);
                    let (id, token) = (cols.next()?, cols.next()?);
                    let gateway = cols.next().filter(|g| !g.is_empty());
                    let header = id == "device_id" || id == "gateway_id";
                    (!header && !id.is_empty() && !token.is_empty()).then(|| {
                        (
                            id.to_owned(),
                            (token.to_owned(), gateway.map(str::to_owned)),
                        )
                    })
                })
                .collect(),
        )
    }

    #[must_use]
    pub fn get(&self, id: &str) -> Option<&String> {
        self.0.get(id).map(|(token, _)| token)
    }

    /// The gateway `device` is attached to; `None` for a device that reports directly.
    #[must_use]
    pub fn gateway(&self, device: &str) -> Option<&str> {
        self.0.get(device).and_then(|(_, g)| g.as_deref())
    }

    pub fn insert(&mut self, id: String, token: String, gateway: Option<String>) {
        self.0.insert(id, (token, gateway));
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

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
    /// Device id to credential (as `otaledger devices provision` prints them): each device
    /// reporting over MQTT logs in as itself. `None`: shared connections under `mqtt`'s login.
    pub credentials: Option<DeviceCredentials>,
    /// Gateway id to credential (as `otaledger gateways provision` prints them): each gateway
    /// logs in to RabbitMQ as itself. `None`: one connection under `amqp`'s login relays all.
    pub gateway_credentials: Option<DeviceCredentials>,
    pub mqtt: MqttConfig,
    pub amqp: AmqpConfig,
    pub behaviour: Behaviour,
    /// Devices download and check the artifact of an update before they install it (issue
    /// 18): with their own credential, or through their gateway's cache. `None`: they install
    /// at once, as a load generator does. Needs `credentials` (and `gateway_credentials`).
    pub downloads: Option<std::sync::Arc<crate::download::Downloads>>,
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
            credentials: None,
            gateway_credentials: None,
            mqtt: MqttConfig::default(),
            amqp: AmqpConfig::default(),
            behaviour: Behaviour::default(),
            downloads: None,
        }
    }
}

/// What the simulator sent and received.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SimStats {
    pub mqtt_messages: u64,
    pub gateway_batches: u64,
    pub gateway_reports: u64,
    /// Commands received (over MQTT and through gateways).
    pub commands: u64,
    /// Commands received again with a command id already executed (ignored).
    pub duplicate_commands: u64,
    /// Install results reported.
    pub results: u64,
    /// Heartbeats sent (each with an uptime above its device's last).
    pub heartbeats: u64,
    /// Updates whose artifact downloaded and verified, and those refused (`REJECTED`).
    pub downloads_verified: u64,
    pub downloads_rejected: u64,
    /// Bytes fetched from the artifact server, and what the gateways' caches saved.
    pub origin_bytes: u64,
    pub gateway_cache_hits: u64,
    pub gateway_bytes_saved: u64,
}

/// Which devices an outcome rule hits: `[model:]version=share`, `*` for any.
#[derive(Debug, Clone, PartialEq)]
pub struct OutcomeRule {
    pub model: Option<String>,
    pub version: Option<String>,
    /// Share of the matching devices, 0 to 1 (chosen deterministically per device).
    pub share: f64,
}

impl OutcomeRule {
    pub(crate) fn hits(&self, device: &str, model: &str, version: &str, what: &str) -> bool {
        self.model.as_deref().is_none_or(|m| m == model)
            && self.version.as_deref().is_none_or(|v| v == version)
            && draw(device, version, what) < self.share
    }
}

impl std::str::FromStr for OutcomeRule {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let (what, share) = s
            .rsplit_once('=')
            .ok_or_else(|| format!("{s:?}: expected [model:]version=share"))?;
        let share: f64 = share
            .parse()
            .map_err(|_| format!("{s:?}: share must be a number from 0 to 1"))?;
        if !(0.0..=1.0).contains(&share) {
            return Err(format!("{s:?}: share must be from 0 to 1"));
        }
        let (model, version) = match what.split_once(':') {
            Some((m, v)) => (Some(m), v),
            None => (None, what),
        };
        let any = |x: &str| (x != "*" && !x.is_empty()).then(|| x.to_owned());
        Ok(OutcomeRule {
            model: model.and_then(any),
            version: any(version),
            share,
        })
    }
}

/// How simulated devices execute commands.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// From receiving an update to reporting its result.
    pub install_ms: u64,
    /// Report a download progress before the result.
    pub progress: bool,
    /// Devices whose install fails.
    pub failures: Vec<OutcomeRule>,
    /// Devices that never answer an update (they time out).
    pub silent: Vec<OutcomeRule>,
    /// Devices that install, then never heartbeat again (the health gate fails).
    pub unhealthy: Vec<OutcomeRule>,
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

/// Deterministic share draw for (device, version, what): the same device fails the same
/// release every run, so a killed-and-restarted rollout sees the same outcomes.
fn draw(device: &str, version: &str, what: &str) -> f64 {
    let h = otaledger_domain::stable_hash::fnv1a_64(&[device, version, what]);
    #[allow(clippy::cast_precision_loss)]
    let x = (h >> 11) as f64 / (1u64 << 53) as f64;
    x
}

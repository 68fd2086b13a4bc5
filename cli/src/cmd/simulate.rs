//! `otaledger simulate`: a fleet of devices over MQTT and gateways over AMQP.

use anyhow::Context as _;
use clap::Args;
use otaledger_ledger::config::Config;
use otaledger_ledger::shutdown::Shutdown;
use otaledger_simulator::{
    self as simulator, Behaviour, DeviceCredentials, OutcomeRule, SimConfig,
};

#[derive(Debug, Args)]
pub struct SimArgs {
    /// Number of simulated devices.
    #[arg(long, default_value_t = 1000)]
    devices: usize,
    /// Heartbeats per second across the whole fleet.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Share of devices behind edge gateways (0 to 1).
    #[arg(long, default_value_t = 0.2)]
    gateway_share: f64,
    /// Number of edge gateways.
    #[arg(long, default_value_t = 10)]
    gateways: usize,
    /// Stop after this many heartbeats per device (default: run until stopped).
    #[arg(long)]
    rounds: Option<u64>,
    /// Prefix of device and gateway ids.
    #[arg(long, default_value = "")]
    id_prefix: String,
    /// Seed of the fleet's models, sites, tags and versions.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Device credentials, as `otaledger devices provision` prints them
    /// (`device_id,token,gateway_id`): each device reporting over MQTT logs in as itself on
    /// its own connection, as a real device does, and a device attached to a gateway reports
    /// through that gateway. Without it the devices share `--mqtt-connections` connections
    /// under the configured MQTT login, which only otaledger's service login may do (a load
    /// generator).
    #[arg(long, value_name = "FILE")]
    credentials: Option<std::path::PathBuf>,
    /// Gateway credentials, as `otaledger gateways provision` prints them
    /// (`gateway_id,token`): each gateway logs in to RabbitMQ as itself. Without it one
    /// connection under the configured AMQP login relays every gateway's batches.
    #[arg(long, value_name = "FILE")]
    gateway_credentials: Option<std::path::PathBuf>,
    /// MQTT connections the devices are multiplexed over (without --credentials).
    #[arg(long, default_value_t = 8)]
    mqtt_connections: usize,
    /// Milliseconds from receiving an update command to reporting its result.
    #[arg(long, default_value_t = 500)]
    install_ms: u64,
    /// Report download progress before each result.
    #[arg(long)]
    progress: bool,
    /// Devices whose install fails, as `[model:]version=share` (`*` for any; repeatable),
    /// e.g. `--fail 9.9.9=0.5` fails half the devices given release 9.9.9.
    #[arg(long = "fail", value_name = "RULE")]
    failures: Vec<OutcomeRule>,
    /// Devices that never answer an update (they time out), as `[model:]version=share`.
    #[arg(long = "silent", value_name = "RULE")]
    silent: Vec<OutcomeRule>,
    /// Devices that install, then stop heartbeating (the health gate fails them).
    #[arg(long = "unhealthy", value_name = "RULE")]
    unhealthy: Vec<OutcomeRule>,
    /// Devices download an update's artifact (its `artifact_uri`, e.g. otaledger's own
    /// `/v1/artifacts/<sha256>`) with their credentials, or through their gateway, which
    /// fetches it once and serves its devices from its cache, and check its length and SHA-256
    /// before installing; a failed check is reported REJECTED with the reason. Needs
    /// --credentials (and --gateway-credentials for devices behind gateways).
    #[arg(long)]
    download: bool,
    /// With --download, the otaledger server devices fetch `/v1/artifacts/<sha256>` from.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:8080")]
    artifact_server: String,
    /// With --download, cut every download halfway and resume it with Range.
    #[arg(long, requires = "download")]
    cut_downloads: bool,
    /// With --download, the CA an https:// artifact server's certificate must chain to
    /// (default: the system's roots).
    #[arg(long, value_name = "FILE", requires = "download")]
    download_ca: Option<std::path::PathBuf>,
    /// With --download, the image repository's root the devices are provisioned with (a root
    /// metadata file, such as `1.root.json` from `otaledger keys generate`). With
    /// --director-key, a device installs an update only if the command's director statement and
    /// the repository's signed metadata check out (ADR 0038), and reports REJECTED with the
    /// reason otherwise.
    #[arg(long, value_name = "FILE", requires_all = ["download", "director_key"])]
    tuf_root: Option<std::path::PathBuf>,
    /// With --tuf-root, the director's public key the devices are provisioned with: the
    /// answer of `GET /v1/tuf/keys` (its `director.key` is taken) or the key object alone.
    #[arg(long, value_name = "FILE", requires = "tuf_root")]
    director_key: Option<std::path::PathBuf>,
}

impl SimArgs {
    pub fn to_config(&self, cfg: &Config) -> anyhow::Result<SimConfig> {
        let read = |path: &Option<std::path::PathBuf>, what: &str| -> anyhow::Result<_> {
            let Some(path) = path else { return Ok(None) };
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let credentials = DeviceCredentials::from_csv(&text);
            tracing::info!(count = credentials.len(), file = %path.display(), "{what} credentials");
            Ok(Some(credentials))
        };
        let credentials = read(&self.credentials, "device")?;
        let gateway_credentials = read(&self.gateway_credentials, "gateway")?;
        let downloads = if self.download {
            anyhow::ensure!(
                credentials.is_some(),
                "--download needs --credentials: devices download with their own credentials"
            );
            let ca = match &self.download_ca {
                Some(path) => Some(
                    std::fs::read_to_string(path)
                        .with_context(|| format!("reading {}", path.display()))?,
                ),
                None => None,
            };
            let mut downloads = simulator::download::Downloads::new(
                Some(self.artifact_server.clone()),
                ca,
                self.cut_downloads,
            );
            if let (Some(root), Some(key)) = (&self.tuf_root, &self.director_key) {
                let root =
                    std::fs::read(root).with_context(|| format!("reading {}", root.display()))?;
                let text = std::fs::read_to_string(key)
                    .with_context(|| format!("reading {}", key.display()))?;
                let key: serde_json::Value = serde_json::from_str(&text).with_context(|| {
                    format!(
                        "reading {}",
                        self.director_key
                            .as_ref()
                            .map_or(String::new(), |p| p.display().to_string())
                    )
                })?;
                let key = key.pointer("/director/key").cloned().unwrap_or(key);
                let trust =
                    simulator::trust::Trust::new(&root, &key).map_err(anyhow::Error::msg)?;
                downloads = downloads.with_trust(trust);
            }
            Some(std::sync::Arc::new(downloads))
        } else {
            None
        };
        Ok(SimConfig {
            devices: self.devices,
            rate: self.rate,
            gateway_share: self.gateway_share,
            gateways: self.gateways,
            id_prefix: self.id_prefix.clone(),
            seed: self.seed,
            rounds: self.rounds,
            mqtt_connections: self.mqtt_connections,
            credentials,
            gateway_credentials,
            mqtt: cfg.mqtt.clone(),
            amqp: cfg.amqp.clone(),
            behaviour: Behaviour {
                install_ms: self.install_ms,
                progress: self.progress,
                failures: self.failures.clone(),
                silent: self.silent.clone(),
                unhealthy: self.unhealthy.clone(),
            },
            downloads,
        })
    }
}

pub async fn run(sim: &SimArgs, cfg: &Config, shutdown: &Shutdown) -> anyhow::Result<()> {
    let stats = simulator::run(sim.to_config(cfg)?, shutdown.signal()).await?;
    println!(
        "sent {} MQTT messages and {} gateway batches ({} reports); executed {} commands ({} duplicates ignored), reported {} results",
        stats.mqtt_messages,
        stats.gateway_batches,
        stats.gateway_reports,
        stats.commands,
        stats.duplicate_commands,
        stats.results
    );
    if sim.download {
        println!(
            "downloads: {} verified, {} refused; {} bytes from the artifact server, {} gateway cache hits saving {} bytes",
            stats.downloads_verified,
            stats.downloads_rejected,
            stats.origin_bytes,
            stats.gateway_cache_hits,
            stats.gateway_bytes_saved
        );
    }
    Ok(())
}

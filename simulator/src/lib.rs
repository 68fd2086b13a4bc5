//! The fleet simulator: N devices with realistic models, sites, tags, firmware and health,
//! most talking MQTT directly, a share behind edge gateways that batch their reports over AMQP.
//!
//! Devices are multiplexed over a few MQTT connections (as a gateway or a load generator
//! would) so that a 100,000-device fleet fits in one process.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use otaledger_domain::events::Release;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rumqttc::{AsyncClient, Event as MqttEvent, Packet, QoS};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use uuid::Uuid;

use otaledger_ledger::amqp::{
    connect, declare_commands_exchange, declare_reports_queue, publish_batch, AmqpConfig,
};
use otaledger_ledger::mqtt::COMMANDS_KIND;
use otaledger_ledger::shutdown::ShutdownSignal;
use otaledger_ledger::{AmqpContext, MqttContext};

pub mod download;
mod fleet;
pub mod trust;
pub use fleet::*;

/// What stops a simulated fleet.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Ledger(#[from] otaledger_ledger::Error),
    #[error("the MQTT broker did not acknowledge every publish within {0:?}")]
    Unacknowledged(Duration),
    #[error("no credential for device {0} (provision it: `otaledger devices provision`)")]
    NoCredential(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

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
    /// Its options, to end its session when the simulation ends.
    opts: rumqttc::MqttOptions,
}

/// The MQTT connections and which one each device reporting directly uses.
struct Links {
    all: Vec<MqttLink>,
    /// By device index; devices behind gateways have none.
    of_device: Vec<Option<usize>>,
}

/// Opens the MQTT links; messages arriving on them (commands) go to `commands`. With device
/// credentials each direct device logs in as itself on its own connection, as a real device
/// does (ADR 0026); without, `mqtt_connections` links with the configured login carry every
/// device's messages, which only a login allowed to publish for every device (otaledger's
/// service login) can do: a load generator, not a fleet.
fn mqtt_links(
    cfg: &SimConfig,
    devices: &[SimDevice],
    commands: &mpsc::UnboundedSender<Vec<u8>>,
) -> Result<Links> {
    let mut logins = Vec::new();
    let mut of_device = Vec::with_capacity(devices.len());
    match &cfg.credentials {
        Some(credentials) => {
            for d in devices {
                if d.gateway_id.is_some() {
                    of_device.push(None);
                    continue;
                }
                let token = credentials
                    .get(&d.device_id)
                    .ok_or_else(|| Error::NoCredential(d.device_id.clone()))?;
                let mut opts = cfg.mqtt.options(&d.device_id);
                opts.set_credentials(d.device_id.clone(), token.clone());
                opts.set_inflight(20);
                of_device.push(Some(logins.len()));
                logins.push(opts);
            }
        }
        None => {
            tracing::warn!(
                devices = devices.len(),
                "simulated devices share {} MQTT connections under one login: the broker checks \
                 no device's identity (give device credentials to simulate a real fleet)",
                cfg.mqtt_connections.max(1)
            );
            let n = cfg.mqtt_connections.max(1);
            for i in 0..n {
                let client_id =
                    format!("otaledger-sim-{}-{}-{i}", cfg.id_prefix, std::process::id());
                let mut opts = cfg.mqtt.options(&client_id);
                opts.set_inflight(200);
                logins.push(opts);
            }
            of_device.extend(
                devices
                    .iter()
                    .enumerate()
                    .map(|(i, d)| d.gateway_id.is_none().then_some(i % n)),
            );
        }
    }
    let mut links = Vec::new();
    for mut opts in logins {
        // A persistent session, as a device that must not miss a command keeps: the broker
        // holds its subscriptions and queues its commands while it is away or restarting.
        opts.set_clean_session(false);
        let kept = opts.clone();
        let (client, mut eventloop) = AsyncClient::new(opts, 10_000);
        let acked = Arc::new(AtomicU64::new(0));
        let counter = acked.clone();
        let commands = commands.clone();
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(MqttEvent::Incoming(Packet::PubAck(_))) => {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                        let _ = commands.send(p.payload.to_vec());
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
            opts: kept,
        });
    }
    Ok(Links {
        all: links,
        of_device,
    })
}

/// Each device reached directly listens on `{root}/{device}/commands` on its link.
async fn subscribe_commands(links: &Links, devices: &[SimDevice], root: &str) -> Result<()> {
    for (l, link) in links.all.iter().enumerate() {
        let filters: Vec<rumqttc::SubscribeFilter> = devices
            .iter()
            .enumerate()
            .filter(|(i, _)| links.of_device[*i] == Some(l))
            .map(|(_, d)| {
                rumqttc::SubscribeFilter::new(
                    format!("{root}/{}/{COMMANDS_KIND}", d.device_id),
                    QoS::AtLeastOnce,
                )
            })
            .collect();
        for chunk in filters.chunks(200) {
            link.client
                .subscribe_many(chunk.to_vec())
                .await
                .mqtt("subscribing to commands")?;
        }
    }
    Ok(())
}

/// Hands every command arriving on `queue` to `commands`.
async fn consume_queue(
    channel: &lapin::Channel,
    queue: &str,
    gw: &str,
    commands: &mpsc::UnboundedSender<Vec<u8>>,
) -> Result<()> {
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            format!("sim-{gw}").as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .amqp("consuming gateway commands")?;
    let commands = commands.clone();
    let keep = channel.clone();
    let gw = gw.to_owned();
    tokio::spawn(async move {
        // The channel lives as long as its consumer.
        let _channel = keep;
        // A delivery error is logged, not the end of the gateway: a gateway that stopped
        // silently would leave its devices' commands unanswered for good.
        while let Some(delivery) = consumer.next().await {
            match delivery {
                Ok(delivery) => {
                    let _ = commands.send(delivery.data.clone());
                    let _ = delivery.ack(BasicAckOptions::default()).await;
                }
                Err(e) => tracing::warn!(gateway = %gw, error = %e, "gateway delivery failed"),
            }
        }
        tracing::debug!(gateway = %gw, "gateway command stream ended");
    });
    Ok(())
}

/// `url` with its login replaced by `user:password`.
fn url_with_login(url: &str, user: &str, password: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("amqp", url));
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let host = rest[..authority_end]
        .rsplit_once('@')
        .map_or(&rest[..authority_end], |(_, h)| h);
    format!(
        "{scheme}://{user}:{password}@{host}{}",
        &rest[authority_end..]
    )
}

/// Where each gateway's batches go, and the login that sends them (the message's `user_id`).
struct GatewayLinks {
    connections: Vec<lapin::Connection>,
    by_gateway: HashMap<String, (lapin::Channel, String)>,
}

impl GatewayLinks {
    /// With gateway credentials each gateway logs in as itself, publishes its batches as
    /// itself and reads the command queue provisioning made for it, as a real gateway does
    /// (ADR 0029). Without, one connection under the configured login relays every gateway's
    /// batches and declares their queues: a load generator, which only otaledger's own AMQP
    /// login may be.
    async fn open(
        cfg: &SimConfig,
        gateways: &[String],
        commands: &mpsc::UnboundedSender<Vec<u8>>,
    ) -> Result<Self> {
        let mut links = GatewayLinks {
            connections: Vec::new(),
            by_gateway: HashMap::new(),
        };
        if gateways.is_empty() {
            return Ok(links);
        }
        let confirming = |channel: lapin::Channel| async move {
            channel
                .confirm_select(lapin::options::ConfirmSelectOptions::default())
                .await
                .amqp("enabling publisher confirms")?;
            Ok::<_, Error>(channel)
        };
        match &cfg.gateway_credentials {
            Some(credentials) => {
                for gw in gateways {
                    let token = credentials
                        .get(gw)
                        .ok_or_else(|| Error::NoCredential(gw.clone()))?;
                    let mut own = cfg.amqp.clone();
                    own.url = url_with_login(&cfg.amqp.url, gw, token);
                    let conn = connect(&own).await?;
                    let channel = conn.create_channel().await.amqp("opening channel")?;
                    consume_queue(&channel, &cfg.amqp.gateway_queue(gw), gw, commands).await?;
                    let channel = confirming(channel).await?;
                    links.by_gateway.insert(gw.clone(), (channel, gw.clone()));
                    links.connections.push(conn);
                }
            }
            None => {
                tracing::warn!(
                    gateways = gateways.len(),
                    "simulated gateways share one AMQP connection under the configured login: \
                     the bridge trusts it as a relay (give gateway credentials to simulate real \
                     gateways)"
                );
                let conn = connect(&cfg.amqp).await?;
                let channel = conn.create_channel().await.amqp("opening channel")?;
                declare_reports_queue(&channel, &cfg.amqp).await?;
                declare_commands_exchange(&channel, &cfg.amqp).await?;
                for gw in gateways {
                    let queue = cfg.amqp.gateway_queue(gw);
                    channel
                        .queue_declare(
                            queue.as_str().into(),
                            QueueDeclareOptions {
                                durable: true,
                                auto_delete: true,
                                ..QueueDeclareOptions::default()
                            },
                            FieldTable::default(),
                        )
                        .await
                        .amqp("declaring a gateway queue")?;
                    channel
                        .queue_bind(
                            queue.as_str().into(),
                            cfg.amqp.commands_exchange.as_str().into(),
                            gw.as_str().into(),
                            QueueBindOptions::default(),
                            FieldTable::default(),
                        )
                        .await
                        .amqp("binding a gateway queue")?;
                    consume_queue(&channel, &queue, gw, commands).await?;
                }
                let publisher =
                    confirming(conn.create_channel().await.amqp("opening channel")?).await?;
                let login = cfg.amqp.login();
                for gw in gateways {
                    links
                        .by_gateway
                        .insert(gw.clone(), (publisher.clone(), login.clone()));
                }
                links.connections.push(conn);
            }
        }
        Ok(links)
    }
}

/// A command as the dispatcher sends it.
#[derive(Debug, Deserialize)]
struct CommandJson {
    kind: String,
    command_id: Uuid,
    device_id: String,
    rollout_id: String,
    release: Option<Release>,
    target_version: Option<String>,
    /// The director's signed statement (catalogue releases).
    #[serde(default)]
    director: Option<String>,
}

/// A download's verdict, back from its task: the install goes ahead, or the device refuses it.
#[derive(Debug)]
struct Checked {
    due: Due,
    verdict: std::result::Result<(), String>,
}

/// What a device does later (install latency).
#[derive(Debug)]
struct Due {
    at: tokio::time::Instant,
    device: usize,
    command_id: Uuid,
    rollout_id: String,
    report: Outcome,
}

#[derive(Debug, Clone)]
enum Outcome {
    Installed { version: String, healthy: bool },
    Failed,
}

/// A device's running state beside its registration.
#[derive(Debug, Default, Clone)]
struct Life {
    previous: Option<String>,
    /// Heartbeats stop (the health gate fails) after a bad install.
    silent: bool,
    /// The update command being executed.
    busy: Option<Uuid>,
    /// The uptime of its last heartbeat: each heartbeat's is higher, so (device, uptime)
    /// names one heartbeat, and a test can tell a lost one from a repeated one.
    uptime: u64,
}

struct Sim<'a> {
    cfg: &'a SimConfig,
    devices: Vec<SimDevice>,
    life: Vec<Life>,
    index: HashMap<String, usize>,
    seen: HashSet<Uuid>,
    due: Vec<Due>,
    links: Links,
    batches: HashMap<String, Vec<serde_json::Value>>,
    stats: SimStats,
    rng: SmallRng,
    started: tokio::time::Instant,
    /// Where download tasks send their verdicts.
    checked: mpsc::UnboundedSender<Checked>,
}

impl Sim<'_> {
    async fn report(&mut self, i: usize, kind: &str, body: serde_json::Value) -> Result<()> {
        let root = self.cfg.mqtt.topic_root.clone();
        send(
            &mut self.links,
            &mut self.batches,
            &root,
            i,
            &self.devices[i],
            kind,
            body,
            &mut self.stats,
        )
        .await
    }

    async fn heartbeat(&mut self, i: usize) -> Result<()> {
        if self.life[i].silent {
            return Ok(());
        }
        let uptime = (self.started.elapsed().as_secs() + 3600).max(self.life[i].uptime + 1);
        self.life[i].uptime = uptime;
        let body = heartbeat_json(&self.devices[i], &mut self.rng, uptime);
        self.report(i, "heartbeat", body).await?;
        self.stats.heartbeats += 1;
        Ok(())
    }

    async fn command(&mut self, body: &[u8]) -> Result<()> {
        let Ok(c) = serde_json::from_slice::<CommandJson>(body) else {
            tracing::warn!("simulator got an unreadable command");
            return Ok(());
        };
        self.stats.commands += 1;
        if !self.seen.insert(c.command_id) {
            self.stats.duplicate_commands += 1;
            return Ok(());
        }
        let Some(&i) = self.index.get(&c.device_id) else {
            return Ok(());
        };
        let b = &self.cfg.behaviour;
        match (c.kind.as_str(), c.release, c.target_version) {
            ("update", Some(release), _) => {
                let d = &self.devices[i];
                let v = release.version.clone();
                let model = d.model.as_str();
                if b.silent
                    .iter()
                    .any(|r| r.hits(&d.device_id, model, &v, "silent"))
                {
                    return Ok(()); // never answers: the saga times it out
                }
                let outcome = if b
                    .failures
                    .iter()
                    .any(|r| r.hits(&d.device_id, model, &v, "fail"))
                {
                    Outcome::Failed
                } else {
                    Outcome::Installed {
                        healthy: !b
                            .unhealthy
                            .iter()
                            .any(|r| r.hits(&d.device_id, model, &v, "health")),
                        version: v.clone(),
                    }
                };
                self.life[i].busy = Some(c.command_id);
                if b.progress {
                    let body = json!({"kind": "progress", "rollout_id": c.rollout_id,
                        "command_id": c.command_id, "phase": "DOWNLOADING", "percent": 0});
                    self.report(i, "install", body).await?;
                }
                let due = Due {
                    at: tokio::time::Instant::now() + Duration::from_millis(b.install_ms),
                    device: i,
                    command_id: c.command_id,
                    rollout_id: c.rollout_id,
                    report: outcome,
                };
                match &self.cfg.downloads {
                    Some(downloads) => self.download(downloads, release, c.director, due),
                    None => self.due.push(due),
                }
            }
            ("rollback", _, target) => {
                let back = target
                    .filter(|t| !t.is_empty())
                    .or_else(|| self.life[i].previous.clone())
                    .unwrap_or_else(|| self.devices[i].firmware_version.clone());
                self.devices[i].firmware_version.clone_from(&back);
                self.life[i].silent = false;
                let body = json!({"kind": "result", "rollout_id": c.rollout_id,
                    "command_id": c.command_id, "outcome": "ROLLED_BACK", "firmware_version": back});
                self.report(i, "install", body).await?;
                self.stats.results += 1;
                self.heartbeat(i).await?;
            }
            ("cancel", _, _) => {
                let busy = self.life[i].busy.take();
                let before = self.due.len();
                self.due
                    .retain(|d| Some(d.command_id) != busy || d.device != i);
                if self.due.len() < before {
                    let body = json!({"kind": "result", "rollout_id": c.rollout_id,
                        "command_id": c.command_id, "outcome": "CANCELLED",
                        "firmware_version": self.devices[i].firmware_version});
                    self.report(i, "install", body).await?;
                    self.stats.results += 1;
                }
            }
            _ => tracing::warn!(kind = %c.kind, "simulator got an unknown command"),
        }
        Ok(())
    }

    /// Downloads and checks the release's artifact in a task of its own (the loop goes on); the
    /// verdict comes back through `checked`.
    fn download(
        &self,
        downloads: &std::sync::Arc<download::Downloads>,
        release: Release,
        statement: Option<String>,
        due: Due,
    ) {
        let d = &self.devices[due.device];
        let (device_id, model, rev) =
            (d.device_id.clone(), d.model.clone(), d.hardware_rev.clone());
        let credential = match &d.gateway_id {
            Some(gw) => self
                .cfg
                .gateway_credentials
                .as_ref()
                .and_then(|c| c.get(gw))
                .map(|token| (Some(gw.clone()), token.clone())),
            None => self
                .cfg
                .credentials
                .as_ref()
                .and_then(|c| c.get(&d.device_id))
                .map(|token| (None, token.clone())),
        };
        let (downloads, tx) = (std::sync::Arc::clone(downloads), self.checked.clone());
        tokio::spawn(async move {
            let device = trust::Device {
                device_id: &device_id,
                model: &model,
                hardware_rev: rev.as_deref(),
            };
            let statement = statement.as_deref();
            let verdict = match &credential {
                Some((Some(gw), token)) => {
                    let via = download::Fetcher::Gateway { id: gw, token };
                    downloads
                        .installable(&release, via, &device, statement)
                        .await
                }
                Some((None, token)) => {
                    let via = download::Fetcher::Device { token };
                    downloads
                        .installable(&release, via, &device, statement)
                        .await
                }
                None => Err("no credential to download the artifact with".to_owned()),
            };
            let _ = tx.send(Checked { due, verdict });
        });
    }

    /// A download's verdict: install (after the install time), or report `REJECTED` with the
    /// reason and keep the running version.
    async fn checked(&mut self, c: Checked) -> Result<()> {
        let Checked { mut due, verdict } = c;
        match verdict {
            Ok(()) => {
                due.at = tokio::time::Instant::now()
                    + Duration::from_millis(self.cfg.behaviour.install_ms);
                self.due.push(due);
            }
            Err(reason) => {
                let i = due.device;
                self.life[i].busy = None;
                tracing::warn!(device = %self.devices[i].device_id, %reason, "simulated device refused an update");
                // The reason as a device would keep it: short.
                let message: String = reason.chars().take(200).collect();
                let body = json!({"kind": "result", "rollout_id": due.rollout_id,
                    "command_id": due.command_id, "outcome": "REJECTED",
                    "firmware_version": self.devices[i].firmware_version,
                    "error_code": "E_VERIFY", "message": message});
                self.report(i, "install", body).await?;
                self.stats.results += 1;
            }
        }
        Ok(())
    }

    async fn finish_due(&mut self) -> Result<()> {
        let now = tokio::time::Instant::now();
        if !self.due.iter().any(|d| d.at <= now) {
            return Ok(());
        }
        let (ready, later): (Vec<Due>, Vec<Due>) = std::mem::take(&mut self.due)
            .into_iter()
            .partition(|d| d.at <= now);
        self.due = later;
        for d in ready {
            let i = d.device;
            self.life[i].busy = None;
            match d.report {
                Outcome::Installed { version, healthy } => {
                    let previous =
                        std::mem::replace(&mut self.devices[i].firmware_version, version.clone());
                    self.life[i].previous = Some(previous);
                    let body = json!({"kind": "result", "rollout_id": d.rollout_id,
                        "command_id": d.command_id, "outcome": "SUCCEEDED", "firmware_version": version});
                    self.report(i, "install", body).await?;
                    self.life[i].silent = !healthy;
                    // Back up on the new version: the heartbeat the health gate waits for.
                    self.heartbeat(i).await?;
                }
                Outcome::Failed => {
                    let body = json!({"kind": "result", "rollout_id": d.rollout_id,
                        "command_id": d.command_id, "outcome": "FAILED",
                        "firmware_version": self.devices[i].firmware_version,
                        "error_code": "E_INSTALL", "message": "simulated install failure"});
                    self.report(i, "install", body).await?;
                }
            }
            self.stats.results += 1;
        }
        Ok(())
    }
}

/// Runs the simulation until `rounds` heartbeats per device were sent or shutdown. Devices
/// and gateways execute the commands they receive meanwhile.
pub async fn run(cfg: SimConfig, mut shutdown: ShutdownSignal) -> Result<SimStats> {
    let mut devices = fleet(&cfg);
    // Provisioning decides which gateway reports for a device (ADR 0029): with credentials,
    // the fleet follows it.
    if let Some(credentials) = &cfg.credentials {
        for d in &mut devices {
            d.gateway_id = credentials.gateway(&d.device_id).map(str::to_owned);
        }
    }
    let (cmd_tx, mut cmd_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let (checked_tx, mut checked_rx) = mpsc::unbounded_channel::<Checked>();
    let links = mqtt_links(&cfg, &devices, &cmd_tx)?;
    let root = cfg.mqtt.topic_root.clone();
    subscribe_commands(&links, &devices, &root).await?;
    let mut gateways: Vec<String> = devices
        .iter()
        .filter_map(|d| d.gateway_id.clone())
        .collect();
    gateways.sort();
    gateways.dedup();
    let amqp = GatewayLinks::open(&cfg, &gateways, &cmd_tx).await?;
    let gateway_channel = &amqp;
    let mut sim = Sim {
        cfg: &cfg,
        life: vec![Life::default(); devices.len()],
        index: devices
            .iter()
            .enumerate()
            .map(|(i, d)| (d.device_id.clone(), i))
            .collect(),
        devices,
        seen: HashSet::new(),
        due: Vec::new(),
        links,
        batches: HashMap::new(),
        stats: SimStats::default(),
        rng: SmallRng::seed_from_u64(cfg.seed ^ 0x5eed),
        started: tokio::time::Instant::now(),
        checked: checked_tx,
    };

    // Registration first, as devices do when they boot.
    for i in 0..sim.devices.len() {
        let body = register_json(&sim.devices[i]);
        sim.report(i, "register", body).await?;
    }
    flush_batches(gateway_channel, &cfg.amqp, &mut sim.batches, &mut sim.stats).await?;

    let tick = Duration::from_millis(20);
    let per_tick = (cfg.rate.max(1.0) * tick.as_secs_f64()).max(1.0);
    let mut budget = 0.0_f64;
    let mut sent_heartbeats: u64 = 0;
    let n_devices = sim.devices.len() as u64;
    let total = cfg.rounds.map(|r| r * n_devices);
    let mut interval = tokio::time::interval(tick);
    let mut last_flush = tokio::time::Instant::now();
    'outer: loop {
        if n_devices == 0 {
            break;
        }
        tokio::select! {
            () = shutdown.wait() => break,
            _ = interval.tick() => {}
            Some(checked) = checked_rx.recv() => {
                sim.checked(checked).await?;
                continue;
            }
            Some(cmd) = cmd_rx.recv() => {
                sim.command(&cmd).await?;
                // Take every command already waiting before heartbeats get their turn.
                while let Ok(cmd) = cmd_rx.try_recv() {
                    sim.command(&cmd).await?;
                }
                sim.finish_due().await?;
                if last_flush.elapsed() >= Duration::from_millis(20) {
                    flush_batches(gateway_channel, &cfg.amqp, &mut sim.batches, &mut sim.stats).await?;
                    last_flush = tokio::time::Instant::now();
                }
                continue;
            }
        }
        sim.finish_due().await?;
        budget += per_tick;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let n = budget.floor() as u64;
        budget -= n as f64;
        for _ in 0..n {
            if total.is_some_and(|t| sent_heartbeats >= t) {
                break 'outer;
            }
            #[allow(clippy::cast_possible_truncation)]
            let i = (sent_heartbeats % n_devices) as usize;
            sim.heartbeat(i).await?;
            sent_heartbeats += 1;
        }
        // Gateways batch their devices' reports: up to 500, or whatever 20 ms gathered.
        if sim.batches.values().any(|b| b.len() >= 500)
            || last_flush.elapsed() >= Duration::from_millis(20)
        {
            flush_batches(gateway_channel, &cfg.amqp, &mut sim.batches, &mut sim.stats).await?;
            last_flush = tokio::time::Instant::now();
        }
    }
    flush_batches(gateway_channel, &cfg.amqp, &mut sim.batches, &mut sim.stats).await?;
    // Wait until the broker acknowledged every QoS 1 publish.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for link in &sim.links.all {
        while link.acked.load(Ordering::Relaxed) < link.sent {
            if tokio::time::Instant::now() > deadline {
                return Err(Error::Unacknowledged(Duration::from_secs(60)));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = link.client.disconnect().await;
    }
    let ends: Vec<_> = sim
        .links
        .all
        .iter()
        .map(|l| tokio::spawn(end_session(l.opts.clone())))
        .collect();
    for end in ends {
        let _ = end.await;
    }
    for conn in &amqp.connections {
        let _ = conn.close(200, "simulation done".into()).await;
    }
    let mut stats = sim.stats;
    if let Some(d) = &cfg.downloads {
        let read = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        stats.downloads_verified = read(&d.stats.verified);
        stats.downloads_rejected = read(&d.stats.rejected);
        stats.origin_bytes = read(&d.stats.origin_bytes);
        stats.gateway_cache_hits = read(&d.stats.cache_hits);
        stats.gateway_bytes_saved = read(&d.stats.bytes_saved);
    }
    tracing::info!(?stats, "simulation finished");
    Ok(stats)
}

/// Ends a link's persistent session (a clean connect, then a disconnect), so the broker does not
/// keep queueing commands for a fleet that is gone.
async fn end_session(mut opts: rumqttc::MqttOptions) {
    opts.set_clean_session(true);
    let (client, mut eventloop) = AsyncClient::new(opts, 10);
    let ended = async {
        loop {
            match eventloop.poll().await {
                Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.disconnect().await;
                }
                Ok(MqttEvent::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), ended).await;
}

#[allow(clippy::too_many_arguments)]
async fn send(
    links: &mut Links,
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
    let Some(link) = links.of_device[index].and_then(|l| links.all.get_mut(l)) else {
        return Ok(());
    };
    link.client
        .publish(
            format!("{root}/{}/{kind}", d.device_id),
            QoS::AtLeastOnce,
            false,
            body.to_string(),
        )
        .await
        .mqtt("publishing")?;
    link.sent += 1;
    stats.mqtt_messages += 1;
    Ok(())
}

async fn flush_batches(
    links: &GatewayLinks,
    cfg: &AmqpConfig,
    batches: &mut HashMap<String, Vec<serde_json::Value>>,
    stats: &mut SimStats,
) -> Result<()> {
    for (gateway_id, reports) in batches.drain() {
        let Some((channel, login)) = links.by_gateway.get(&gateway_id) else {
            continue;
        };
        if reports.is_empty() {
            continue;
        }
        stats.gateway_batches += 1;
        stats.gateway_reports += reports.len() as u64;
        let body = json!({"gateway_id": gateway_id, "reports": reports}).to_string();
        publish_batch(channel, cfg, login, body.as_bytes()).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_rules_parse_and_hit_a_stable_share() {
        let r: OutcomeRule = "elevator-gen2:2.0.0=0.25".parse().unwrap();
        assert_eq!(r.model.as_deref(), Some("elevator-gen2"));
        assert_eq!(r.version.as_deref(), Some("2.0.0"));
        let any: OutcomeRule = "*=1".parse().unwrap();
        assert_eq!((any.model, any.version), (None, None));
        assert!("2.0.0".parse::<OutcomeRule>().is_err());
        assert!("2.0.0=1.5".parse::<OutcomeRule>().is_err());
        let hits = (0..10_000)
            .filter(|i| r.hits(&format!("d{i}"), "elevator-gen2", "2.0.0", "fail"))
            .count();
        assert!((2_200..2_800).contains(&hits), "{hits} of 10000");
        assert!(!r.hits("d1", "press-p500", "2.0.0", "fail"));
        assert_eq!(
            r.hits("d7", "elevator-gen2", "2.0.0", "fail"),
            r.hits("d7", "elevator-gen2", "2.0.0", "fail")
        );
    }

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

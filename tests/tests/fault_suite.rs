#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! The fault suite (issue 17, item 7), on real services, with real faults. Every otaledger
//! component runs as its own `otaledger run` process, which the test restarts whenever it
//! exits, as systemd's `Restart=always` (deploy/systemd) or a container's restart policy does.
//! During a rollout to a simulated fleet sending heartbeats, the test injects in turn:
//! - SIGKILL of each component, at random moments;
//! - a restart of PostgreSQL (`pg_ctlcluster … restart -m fast`: every connection cut);
//! - a restart of RabbitMQ (`rabbitmqctl stop_app`, `start_app`);
//! - a restart of Mosquitto (SIGTERM and start, as a service manager does);
//! - the Kafka-API broker, durable (tansu on SQLite, as the quick start runs it, ADR 0043),
//!   killed (SIGKILL) and started again on the same storage, and later frozen (SIGSTOP) for
//!   10 s. (The soak runs on a memory broker: it kills components, not the broker.)
//!
//! Afterwards: the rollout's verdict is an undisturbed run's (every device succeeded), every
//! heartbeat the simulator sent (it waits until its broker acknowledged each) is in the ledger,
//! no device was given two update commands or ran one twice, and `otaledger verify` exits 0.
//! The soak runs rollouts one after another with a component killed during each; a rollout
//! that does not finish is a failure, with the state dumped.
//!
//! Restarting the shared services is safe because this file's tests run alone: cargo runs test
//! binaries one at a time, and the two tests here take turns (`SERIAL`). Whatever happens, the
//! services are started again when a test ends (`scripts/services.sh`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use otaledger_bench::process::{free_loopback_addr, http_get};
use otaledger_cli::components::{prepare, Component};
use otaledger_domain::Payload;
use otaledger_ledger::config::Config;
use otaledger_simulator::Behaviour;
use otaledger_tests::broker::{own_namespace_on, Broker};
use otaledger_tests::rollouts::*;
use otaledger_tests::{api_app, decode_all, eventually, otaledger_command, read_topic};
use serde_json::json;

/// The two tests restart shared services: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const COMPONENTS: &[Component] = &[
    Component::Projector,
    Component::Router,
    Component::MqttBridge,
    Component::AmqpBridge,
    Component::RolloutProjector,
    Component::Saga,
    Component::Dispatcher,
];

/// A little deterministic randomness (the seed is printed, so a failure can be replayed).
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n.max(1)
    }
}

struct Slot {
    component: Component,
    child: Child,
    restarts: u32,
    /// Where its `/metrics` are served (each process a port of its own).
    metrics: String,
}

/// Every component as a process, restarted within half a second of exiting.
struct Supervisor {
    slots: Arc<Mutex<Vec<Slot>>>,
    task: tokio::task::JoinHandle<()>,
}

fn spawn(cfg: &Config, component: Component, metrics: &str, logs: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(logs.join(format!("{}.log", component.name())))
        .unwrap();
    otaledger_command(cfg, &["run", component.name()], component.name())
        .env("OTALEDGER_METRICS_LISTEN", metrics)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

impl Supervisor {
    fn start(cfg: &Config, logs: &Path) -> Self {
        let slots: Vec<Slot> = COMPONENTS
            .iter()
            .map(|&component| {
                let metrics = free_loopback_addr().unwrap();
                Slot {
                    component,
                    child: spawn(cfg, component, &metrics, logs),
                    restarts: 0,
                    metrics,
                }
            })
            .collect();
        let slots = Arc::new(Mutex::new(slots));
        let (watched, cfg, logs) = (slots.clone(), cfg.clone(), logs.to_owned());
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let mut slots = watched.lock().unwrap();
                for s in slots.iter_mut() {
                    if matches!(s.child.try_wait(), Ok(Some(_))) {
                        s.child = spawn(&cfg, s.component, &s.metrics, &logs);
                        s.restarts += 1;
                    }
                }
            }
        });
        Supervisor { slots, task }
    }

    /// SIGKILLs `component`; the supervisor starts it again.
    fn kill(&self, component: Component) {
        let mut slots = self.slots.lock().unwrap();
        let slot = slots.iter_mut().find(|s| s.component == component).unwrap();
        let _ = slot.child.kill();
    }

    /// Waits until the MQTT bridge holds its subscription: before it, the broker drops what
    /// devices publish (the bridge's session does not exist yet).
    async fn mqtt_bridge_subscribed(&self, cfg: &Config) {
        let addr = {
            let slots = self.slots.lock().unwrap();
            let s = slots.iter().find(|s| s.component == Component::MqttBridge);
            s.unwrap().metrics.clone()
        };
        let series = format!(
            "otaledger_mqtt_bridge_subscribed{{client_id=\"{}\"}} 1",
            cfg.mqtt.bridge_client_id()
        );
        eventually(
            Duration::from_secs(60),
            "the MQTT bridge subscribed",
            || {
                let (addr, series) = (addr.clone(), series.clone());
                async move {
                    http_get(&addr, "/metrics")
                        .await
                        .filter(|body| body.lines().any(|l| l == series))
                        .map(|_| ())
                }
            },
        )
        .await;
    }

    /// Restarts of each component (kills and crashes).
    fn restarts(&self) -> Vec<(&'static str, u32)> {
        let slots = self.slots.lock().unwrap();
        slots
            .iter()
            .map(|s| (s.component.name(), s.restarts))
            .collect()
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.task.abort();
        for s in self.slots.lock().unwrap().iter_mut() {
            let _ = s.child.kill();
            let _ = s.child.wait();
        }
    }
}

fn run(what: &str, program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(status.success(), "{what}: {status}");
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

fn wait_port(port: u16, open: bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while port_open(port) != open {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The shared services, restarted for real.
#[derive(Debug, Clone, Copy)]
enum Service {
    Postgres,
    RabbitMq,
    Mosquitto,
}

impl Service {
    fn restart(self) {
        match self {
            Service::Postgres => {
                let version = std::fs::read_dir("/etc/postgresql")
                    .unwrap()
                    .filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .max_by_key(|v| v.parse::<u32>().unwrap_or(0))
                    .unwrap();
                run(
                    "restarting PostgreSQL",
                    "pg_ctlcluster",
                    &[
                        "--skip-systemctl-redirect",
                        &version,
                        "main",
                        "restart",
                        "-m",
                        "fast",
                    ],
                );
                wait_port(5432, true, "PostgreSQL back");
            }
            Service::RabbitMq => {
                run("stopping RabbitMQ", "rabbitmqctl", &["-q", "stop_app"]);
                run("starting RabbitMQ", "rabbitmqctl", &["-q", "start_app"]);
                wait_port(5672, true, "RabbitMQ back");
            }
            Service::Mosquitto => {
                let pid = std::fs::read_to_string("/run/mosquitto/mosquitto.pid")
                    .ok()
                    .or_else(|| {
                        let out = Command::new("pgrep")
                            .args(["-x", "mosquitto"])
                            .output()
                            .ok()?;
                        Some(String::from_utf8_lossy(&out.stdout).into_owned())
                    })
                    .unwrap();
                run("stopping Mosquitto", "kill", &["-TERM", pid.trim()]);
                wait_port(1883, false, "Mosquitto stopped");
                run(
                    "starting Mosquitto",
                    "mosquitto",
                    &["-d", "-c", "/etc/mosquitto/mosquitto.conf"],
                );
                wait_port(1883, true, "Mosquitto back");
            }
        }
    }
}

/// Starts whatever service is down when a test ends, passing or not.
struct ServicesBack;

impl Drop for ServicesBack {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/services.sh");
        let _ = Command::new("bash")
            .arg(script)
            .env(
                "OTALEDGER_KAFKA_PORT",
                std::env::var("OTALEDGER_TEST_KAFKA")
                    .ok()
                    .and_then(|k| k.rsplit(':').next().map(str::to_owned))
                    .unwrap_or_else(|| "9093".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The stack on a Kafka-API broker of the test's own storing with `storage`, every component
/// supervised.
async fn stack(test: &str, storage: &str) -> (Config, axum::Router, Broker, Supervisor, PathBuf) {
    let (mut cfg, broker) = own_namespace_on(test, storage).await;
    cfg.kafka.partitions = 4;
    if storage.starts_with("sqlite") {
        // As the quick start's configuration does on its durable broker (ADR 0043).
        cfg.kafka.fetch_wait_max_ms = 250;
        cfg.kafka.linger_ms = 100;
    }
    prepare(&cfg).await.unwrap();
    let app = api_app(&cfg).await;
    let logs = broker.dir.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let supervisor = Supervisor::start(&cfg, &logs);
    supervisor.mqtt_bridge_subscribed(&cfg).await;
    (cfg, app, broker, supervisor, logs)
}

/// (device, uptime) of every heartbeat in the ledger whose device starts with `prefix`, and how
/// many records they took.
async fn heartbeats(cfg: &Config, prefix: &str) -> (BTreeSet<(String, i64)>, usize) {
    let records = read_topic(&cfg.kafka, &cfg.kafka.topics().device_events).await;
    let mut n = 0;
    let set = decode_all(&records)
        .into_iter()
        .filter_map(|(_, e)| match e.payload {
            Payload::Heartbeat(h) if h.device_id.starts_with(prefix) => {
                n += 1;
                Some((h.device_id, h.health.uptime_s))
            }
            _ => None,
        })
        .collect();
    (set, n)
}

/// A fleet of `devices` reporting over MQTT only (the simulator's gateways do not reconnect
/// after RabbitMQ restarts), every one registered; and dice from a printed seed.
async fn fleet(
    cfg: &Config,
    devices: usize,
    prefix: &str,
    install_ms: u64,
) -> (
    otaledger_ledger::shutdown::Shutdown,
    tokio::task::JoinHandle<otaledger_simulator::SimStats>,
    Dice,
    u64,
) {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut sim = sim_config(
        cfg,
        devices,
        prefix,
        Behaviour {
            install_ms,
            ..Behaviour::default()
        },
    );
    sim.gateway_share = 0.0;
    sim.mqtt_connections = 8;
    let (stop, sim) = start_sim(sim);
    wait_registered(cfg, devices).await;
    (stop, sim, Dice(seed), seed)
}

/// Waits until every device of the fleet registered (its model known to the fleet view).
async fn wait_registered(cfg: &Config, devices: usize) {
    let pool = otaledger_tests::test_pool(cfg, 1).await;
    eventually(Duration::from_secs(300), "the fleet registered", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM devices WHERE model IS NOT NULL")
            .fetch_one(&pool)
            .await
            .ok()?;
        (n >= devices as i64).then_some(())
    })
    .await;
    pool.close().await;
}

/// What a hung rollout leaves for whoever reads the failure.
async fn dump(cfg: &Config, app: &axum::Router, id: &str, logs: &Path) -> String {
    let (_, rollout) = get(app, &format!("/v1/rollouts/{id}")).await;
    let pool = otaledger_tests::test_pool(cfg, 1).await;
    let offsets: Vec<(String, i32, i64, i64, String)> = sqlx::query_as(
        "SELECT consumer, partition, next_offset, epoch, owner FROM consumer_offsets
         ORDER BY 1, 2",
    )
    .fetch_all(&pool)
    .await
    .unwrap_or_default();
    pool.close().await;
    let mut tails = String::new();
    for c in COMPONENTS {
        let text =
            std::fs::read_to_string(logs.join(format!("{}.log", c.name()))).unwrap_or_default();
        let last: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .collect();
        let from = last.len().saturating_sub(5);
        tails.push_str(&format!("--- {}:\n{}\n", c.name(), last[from..].join("\n")));
    }
    format!(
        "rollout: {rollout}\noffsets: {offsets:?}\nlogs ({}):\n{tails}",
        logs.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollout_survives_every_service_restarted_and_every_component_killed() {
    let _serial = SERIAL.lock().await;
    let _back = ServicesBack;
    let (cfg, app, mut broker, supervisor, logs) = stack("faults", "sqlite://ledger.db").await;
    let devices = 5_000;
    let (sim_stop, sim, mut dice, seed) = fleet(&cfg, devices, "fs-", 3_000).await;
    let started = Instant::now();
    let id = request_rollout(
        &app,
        &rollout_body(
            "9.9.9",
            all_models(),
            json!({"waves_pct": [5, 30, 100], "max_in_flight": 300}),
        ),
    )
    .await;

    // The faults, in turn, a random 2 to 6 s apart: each component killed once, at a random
    // place among the service faults.
    enum Fault {
        Kill(Component),
        Restart(Service),
        RestartBroker,
        FreezeBroker,
    }
    let mut faults: Vec<Fault> = vec![
        Fault::RestartBroker,
        Fault::Restart(Service::Postgres),
        Fault::Restart(Service::RabbitMq),
        Fault::Restart(Service::Mosquitto),
        Fault::FreezeBroker,
    ];
    for &c in COMPONENTS {
        let at = dice.below(faults.len() as u64 + 1) as usize;
        faults.insert(at, Fault::Kill(c));
    }
    let mut injected = Vec::new();
    for fault in faults {
        tokio::time::sleep(Duration::from_millis(2_000 + dice.below(4_000))).await;
        let what = match fault {
            Fault::Kill(c) => {
                supervisor.kill(c);
                format!("SIGKILL {}", c.name())
            }
            Fault::Restart(s) => {
                tokio::task::spawn_blocking(move || s.restart())
                    .await
                    .unwrap();
                format!("restart {s:?}")
            }
            Fault::RestartBroker => {
                broker.kill();
                tokio::time::sleep(Duration::from_secs(2)).await;
                broker.start();
                broker.ready().await;
                "SIGKILL broker, restart on its storage".to_owned()
            }
            Fault::FreezeBroker => {
                broker.signal("-STOP");
                tokio::time::sleep(Duration::from_secs(10)).await;
                broker.signal("-CONT");
                "broker frozen 10 s".to_owned()
            }
        };
        println!("{:>6.1} s  {what}", started.elapsed().as_secs_f64());
        injected.push(what);
    }

    let over = tokio::time::timeout(
        Duration::from_secs(900),
        wait_over(&app, &id, Duration::from_secs(3_600)),
    )
    .await;
    let done = match over {
        Ok(done) => done,
        Err(_) => panic!("the rollout hung:\n{}", dump(&cfg, &app, &id, &logs).await),
    };
    let took = started.elapsed();
    assert_eq!(
        (done["state"].as_str(), done["states"]["SUCCEEDED"].as_i64()),
        (Some("COMPLETED"), Some(devices as i64)),
        "an undisturbed run's verdict: {}",
        dump(&cfg, &app, &id, &logs).await
    );
    // The simulator stops once its broker acknowledged every message it sent.
    sim_stop.trigger();
    let stats = sim.await.unwrap();
    let updates = updates_by_device(&rollout_events(&cfg).await);
    assert_eq!(updates.len(), devices);
    assert!(
        updates.values().all(|u| u.len() == 1),
        "a device given two update commands"
    );
    assert_eq!(
        stats.commands - stats.duplicate_commands,
        devices as u64,
        "devices ran one update each: {stats:?}"
    );
    let (seen, records) = eventually(
        Duration::from_secs(180),
        "every heartbeat sent in the ledger",
        || async {
            let (seen, n) = heartbeats(&cfg, "fs-").await;
            (seen.len() as u64 >= stats.heartbeats).then_some((seen, n))
        },
    )
    .await;
    let lost = stats.heartbeats.saturating_sub(seen.len() as u64);
    let duplicated = records - seen.len();
    assert_eq!(lost, 0);
    // The projections equal a rebuild from the ledger.
    eventually(Duration::from_secs(120), "otaledger verify to pass", || {
        let cfg = cfg.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                otaledger_command(&cfg, &["verify"], "verify")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .unwrap()
                    .success()
                    .then_some(())
            })
            .await
            .unwrap()
        }
    })
    .await;
    let restarts = supervisor.restarts();
    println!(
        "fault suite (seed {seed}): {} faults injected during a {devices}-device rollout, all \
         survived; COMPLETED {devices}/{devices} in {took:.0?}; {} heartbeats sent, {lost} \
         lost, {duplicated} duplicated; 0 devices updated twice; component restarts {restarts:?}",
        injected.len(),
        stats.heartbeats
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_soak_of_rollouts_in_a_row_with_kills_never_hangs() {
    let _serial = SERIAL.lock().await;
    let _back = ServicesBack;
    let (cfg, app, _broker, supervisor, logs) = stack("soak", "memory://tansu/").await;
    let devices = 300;
    let (sim_stop, sim, mut dice, seed) = fleet(&cfg, devices, "sk-", 200).await;
    let rounds = 20;
    let started = Instant::now();
    let mut kills = 0;
    for round in 1..=rounds {
        let id = request_rollout(
            &app,
            &rollout_body(
                &format!("20.0.{round}"),
                all_models(),
                json!({"waves_pct": [20, 100], "max_in_flight": 100}),
            ),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(dice.below(3_000))).await;
        let victim = COMPONENTS[dice.below(COMPONENTS.len() as u64) as usize];
        supervisor.kill(victim);
        kills += 1;
        let over = tokio::time::timeout(
            Duration::from_secs(240),
            wait_over(&app, &id, Duration::from_secs(3_600)),
        )
        .await;
        let Ok(done) = over else {
            panic!(
                "round {round} hung after a kill of {}:\n{}",
                victim.name(),
                dump(&cfg, &app, &id, &logs).await
            );
        };
        assert_eq!(
            (done["state"].as_str(), done["states"]["SUCCEEDED"].as_i64()),
            (Some("COMPLETED"), Some(devices as i64)),
            "round {round}, {} killed: {}",
            victim.name(),
            dump(&cfg, &app, &id, &logs).await
        );
    }
    sim_stop.trigger();
    let stats = sim.await.unwrap();
    assert_eq!(
        stats.commands - stats.duplicate_commands,
        (devices * rounds) as u64,
        "{stats:?}"
    );
    println!(
        "soak (seed {seed}): {rounds} rollouts of {devices} devices in a row, {kills} components \
         killed, none hung, every device updated once per rollout, in {:.0?}; restarts {:?}",
        started.elapsed(),
        supervisor.restarts()
    );
}

//! `otaledger-bench`: speed against the machine's own limits, measured in the same run. A
//! crate and binary of its own, so that no benchmark code ships in the product binary.
//!
//! Every scenario works in a namespace of its own (topic prefix and PostgreSQL schema) on the
//! configured services, so it never touches a live ledger, and it prints each figure beside the
//! limit it is measured against.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use otaledger_domain::events::{Health, Heartbeat};
use otaledger_domain::ids::new_trace_id;
use otaledger_domain::time::now_micros;
use otaledger_domain::{Event, Payload};
use otaledger_ledger::config::KafkaConfig;
use otaledger_ledger::kafka::{client_config, ensure_topics};
use serde::Serialize;

use otaledger_ledger::config::Config;

pub mod api;
mod download;
pub mod lag;
mod limits;
pub mod mqtt_ingest;
pub mod process;
pub mod projection;
pub mod rollout;
mod scenarios;

/// Benchmarks report any failure as text: they are run by hand or by a test that prints it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Raw produce and consume rates of the broker, PostgreSQL COPY rate.
    Limits,
    /// Events/s through the otaledger producer against the raw produce rate.
    Ingest,
    /// Projector catch-up against the raw consume rate and a naive projector.
    Projection,
    /// End-to-end lag (occurred-at to projection commit) at a steady rate.
    Lag,
    /// API latency under a fixed arrival rate (open loop) over a large fleet.
    Api,
    /// `otaledger rebuild` of every projection from the ingested events into a shadow schema.
    Rebuild,
    /// A four-wave rollout over a fleet of instant simulated devices: commands/s over MQTT and
    /// AMQP, request to last command and to completion, saga decision latency, peak RSS.
    Rollout,
    /// Device reports/s through Mosquitto and the MQTT bridge into the ledger, in plain text
    /// and over TLS (the cost of TLS on ingest).
    MqttIngest,
    /// Artifact download throughput from the API against nginx serving the same file, and the
    /// origin bytes of 1,000 devices downloading through 20 caching gateways.
    Download,
    /// Every scenario above.
    All,
}

#[derive(Debug, Clone)]
pub struct BenchArgs {
    pub scenario: Scenario,
    pub events: usize,
    pub devices: usize,
    pub naive_events: usize,
    /// How long the steady-rate lag scenario runs.
    pub lag_duration: Duration,
    /// Events/s of the lag scenario; `None`: half the catch-up rate.
    pub lag_rate: Option<f64>,
    /// Devices in the fleet the API scenario queries.
    pub api_devices: usize,
    /// Requests per second and seconds per endpoint in the API scenario.
    pub api_rate: f64,
    pub api_duration: Duration,
    /// Devices in the rollout scenario's fleet.
    pub rollout_devices: usize,
    /// Devices of the MQTT ingest scenario (each registers and sends four heartbeats), and the
    /// broker's TLS listener it also measures (`None`: plain text only).
    pub mqtt_devices: usize,
    pub mqtt_tls: Option<mqtt_ingest::TlsListener>,
    pub out: std::path::PathBuf,
    /// The `otaledger` binary the rollout scenario runs each component with, a process each.
    pub components: std::path::PathBuf,
    pub download: DownloadSize,
}

/// The download scenario's sizes.
#[derive(Debug, Clone)]
pub struct DownloadSize {
    /// The file downloaded again and again from the API and from nginx, and for how long each.
    pub artifact_bytes: usize,
    pub run: Duration,
    /// The fleet behind caching gateways, and the release it downloads.
    pub fleet_devices: usize,
    pub gateways: usize,
    pub release_bytes: usize,
}

impl DownloadSize {
    /// The issue's figures: 1,000 devices, 20 gateways, a 10 MB release.
    #[must_use]
    pub fn issue(artifact_bytes: usize, run: Duration) -> Self {
        DownloadSize {
            artifact_bytes,
            run,
            fleet_devices: 1000,
            gateways: 20,
            release_bytes: 10_000_000,
        }
    }
}

impl BenchArgs {
    #[must_use]
    pub fn sized(scenario: Scenario, quick: bool, out: std::path::PathBuf) -> Self {
        // The product binary built beside this one runs the rollout's components.
        let components = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join("otaledger")))
            .unwrap_or_else(|| "otaledger".into());
        if quick {
            BenchArgs {
                scenario,
                events: 100_000,
                devices: 10_000,
                naive_events: 3_000,
                lag_duration: Duration::from_secs(10),
                lag_rate: None,
                api_devices: 100_000,
                api_rate: 5_000.0,
                api_duration: Duration::from_secs(5),
                rollout_devices: 10_000,
                mqtt_devices: 5_000,
                mqtt_tls: None,
                out,
                components,
                download: DownloadSize::issue(64 << 20, Duration::from_secs(5)),
            }
        } else {
            BenchArgs {
                scenario,
                events: 1_000_000,
                devices: 100_000,
                naive_events: 20_000,
                lag_duration: Duration::from_secs(60),
                lag_rate: None,
                api_devices: 1_000_000,
                api_rate: 5_000.0,
                api_duration: Duration::from_secs(20),
                rollout_devices: 100_000,
                mqtt_devices: 20_000,
                mqtt_tls: None,
                out,
                components,
                download: DownloadSize::issue(256 << 20, Duration::from_secs(10)),
            }
        }
    }
}

/// One measured figure.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    pub scenario: &'static str,
    pub name: &'static str,
    pub value: f64,
    pub unit: &'static str,
    /// The figure divided by the limit it is measured against, when there is one.
    pub ratio: Option<f64>,
    pub against: Option<&'static str>,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub machine: BTreeMap<String, String>,
    /// The commit measured (`git rev-parse --short HEAD`), so that every figure is dated by it.
    pub commit: Option<String>,
    /// The day of the run, UTC (`YYYY-MM-DD`).
    pub date: String,
    pub events: usize,
    pub devices: usize,
    pub figures: Vec<Figure>,
}

impl Report {
    fn add(&mut self, scenario: &'static str, name: &'static str, value: f64, unit: &'static str) {
        println!("  {scenario:<11} {name:<34} {value:>14.0} {unit}");
        self.figures.push(Figure {
            scenario,
            name,
            value,
            unit,
            ratio: None,
            against: None,
        });
    }

    fn ratio(&mut self, name: &'static str, against: &'static str) {
        let limit = self
            .figures
            .iter()
            .find(|f| f.name == against)
            .map(|f| f.value);
        if let (Some(limit), Some(f)) = (
            limit,
            self.figures.iter_mut().rev().find(|f| f.name == name),
        ) {
            if limit > 0.0 {
                f.ratio = Some(f.value / limit);
                f.against = Some(against);
                println!(
                    "  {:<11} {:<34} {:>14.2} x {against}",
                    "",
                    "",
                    f.value / limit
                );
            }
        }
    }

    fn table(&self) -> String {
        let mut s = String::from(
            "| scenario | figure | value | unit | ratio to limit |\n|---|---|---:|---|---|\n",
        );
        for f in &self.figures {
            let ratio = match (f.ratio, f.against) {
                (Some(r), Some(a)) => format!("{r:.2} x {a}"),
                _ => String::new(),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {:.0} | {} | {} |",
                f.scenario, f.name, f.value, f.unit, ratio
            );
        }
        s
    }
}

/// Heartbeats `range` of a run of heartbeats from `devices` devices in turn (each round on
/// the next firmware version), as if starting at `now`.
pub(crate) fn heartbeats(range: std::ops::Range<usize>, devices: usize, now: i64) -> Vec<Event> {
    range
        .map(|i| {
            let d = i % devices.max(1);
            Event::at(
                Payload::Heartbeat(Heartbeat {
                    device_id: format!("bench-{d:07}"),
                    firmware_version: format!("1.{}.0", (i / devices.max(1)) % 4),
                    gateway_id: None,
                    health: Health {
                        uptime_s: i as i64,
                        cpu_pct: (i % 100) as f32,
                        mem_pct: 40.0,
                        temperature_c: 35.5,
                        error_count: 0,
                        signal_dbm: Some(-60),
                    },
                }),
                now + i as i64,
                now + i as i64,
                new_trace_id(),
            )
        })
        .collect()
}

/// The figure of a component's peak RSS in the rollout scenario.
fn rss_figure(c: otaledger_cli::components::Component) -> &'static str {
    use otaledger_cli::components::Component;
    match c {
        Component::Api => "peak RSS, api",
        Component::Projector => "peak RSS, projector",
        Component::MqttBridge => "peak RSS, mqtt-bridge",
        Component::AmqpBridge => "peak RSS, amqp-bridge",
        Component::Router => "peak RSS, router",
        Component::Saga => "peak RSS, saga",
        Component::Dispatcher => "peak RSS, dispatcher",
        Component::RolloutProjector => "peak RSS, rollout-projector",
        Component::History => "peak RSS, history",
    }
}

/// Events generated and produced at a time.
const CHUNK: usize = 100_000;

/// The commit of the checkout the bench runs in, if it runs in one.
fn measured_commit() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()?;
    let commit = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (out.status.success() && !commit.is_empty()).then_some(commit)
}

fn rate(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64().max(1e-9)
}

fn peak_rss_mib() -> f64 {
    crate::process::peak_rss_mib("self")
}

/// The `q` quantile (0 to 1) of sorted microseconds, in milliseconds; 0 when there are none.
fn percentile(sorted_micros: &[i64], q: f64) -> f64 {
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((sorted_micros.len().max(1) as f64 - 1.0) * q).round() as usize;
    #[allow(clippy::cast_precision_loss)]
    sorted_micros.get(i).map_or(0.0, |v| *v as f64 / 1000.0)
}

/// One bench run: its namespace and configuration, the event sample, and what earlier scenarios
/// measured and left behind (where each partition ends).
pub(crate) struct Ctx<'a> {
    args: &'a BenchArgs,
    /// The configuration with the run's topic prefix and schema.
    cfg: Config,
    /// The run's namespace: topic prefix and schema name.
    name: String,
    raw_topic: String,
    now: i64,
    /// The codec sample (the first million events at most), reused by ingest and the naive
    /// projector.
    events: Vec<Event>,
    encoded: Vec<(String, Vec<u8>)>,
    ends: BTreeMap<i32, i64>,
    report: Report,
}

/// Runs the scenarios `args` asks for, each in the run's own namespace, and writes the report.
pub async fn run(cfg: &Config, args: &BenchArgs) -> Result<Report, BoxError> {
    let mut b = prepare(cfg, args).await?;
    use Scenario as S;
    let wants = |of: &[Scenario]| args.scenario == S::All || of.contains(&args.scenario);
    use scenarios::{api, download, ingest, lag, limits, mqtt, projection, rebuild, rollout};
    if wants(&[S::Limits, S::Ingest, S::Projection]) {
        limits(&mut b).await?;
    }
    if wants(&[S::Ingest, S::Projection, S::Rebuild]) {
        ingest(&mut b).await?;
    }
    if wants(&[S::Projection]) {
        projection(&mut b).await?;
    }
    if wants(&[S::Lag]) {
        lag(&mut b).await?;
    }
    if wants(&[S::Api]) {
        api(&mut b).await?;
    }
    if wants(&[S::Rebuild]) {
        rebuild(&mut b).await?;
    }
    if wants(&[S::Rollout]) {
        rollout(&mut b).await?;
    }
    if wants(&[S::MqttIngest]) {
        mqtt(&mut b).await?;
    }
    if wants(&[S::Download]) {
        download(&mut b).await?;
    }
    finish(b).await
}

/// The run's namespace and topics, the report's header, and the codec figures over the sample.
async fn prepare<'a>(cfg: &Config, args: &'a BenchArgs) -> Result<Ctx<'a>, BoxError> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let name = format!(
        "bench_{stamp}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    );
    let mut bench_cfg = cfg.clone();
    bench_cfg.kafka.topic_prefix = format!("{name}.");
    bench_cfg.database.schema = name.clone();
    // Instances started together settle their shares within half a second.
    bench_cfg.projector.rebalance_ms = 500;
    let kafka = bench_cfg.kafka.clone();
    ensure_topics(&kafka).await?;
    let raw_topic = format!("{name}.raw");
    create_topic(&kafka, &raw_topic).await?;

    let mut report = Report {
        events: args.events,
        devices: args.devices,
        commit: measured_commit(),
        date: chrono::Utc::now().format("%Y-%m-%d").to_string(),
        ..Report::default()
    };
    report.machine.insert(
        "cores".into(),
        std::thread::available_parallelism()
            .map_or(0, usize::from)
            .to_string(),
    );
    report.machine.insert("kafka".into(), kafka.brokers.clone());
    println!(
        "otaledger bench: {} events from {} devices (namespace {name})",
        args.events, args.devices
    );

    // Generated in chunks where possible: 10,000,000 events held at once (decoded and encoded)
    // take more memory than this machine has beside an in-memory broker.
    let now = now_micros();
    let codec_sample = args.events.min(1_000_000);
    let events = heartbeats(0..codec_sample, args.devices, now);
    let started = Instant::now();
    let encoded: Vec<(String, Vec<u8>)> = events
        .iter()
        .map(|e| Ok((e.key().to_owned(), otaledger_schemas::encode(e)?)))
        .collect::<Result<_, otaledger_schemas::Error>>()?;
    report.add(
        "codec",
        "Avro encode (1 core)",
        rate(events.len(), started.elapsed()),
        "events/s",
    );
    let started = Instant::now();
    for (_, bytes) in &encoded {
        otaledger_schemas::decode(bytes)?;
    }
    report.add(
        "codec",
        "Avro decode (1 core)",
        rate(events.len(), started.elapsed()),
        "events/s",
    );
    Ok(Ctx {
        args,
        cfg: bench_cfg,
        name,
        raw_topic,
        now,
        events,
        encoded,
        ends: BTreeMap::new(),
        report,
    })
}

/// Drops the run's schemas and writes the report.
async fn finish(b: Ctx<'_>) -> Result<Report, BoxError> {
    let Ctx {
        args,
        cfg: bench_cfg,
        name,
        report,
        ..
    } = b;
    // The bench's tables are scratch; its topics stay (Kafka topics are cheap, deleting them is
    // not supported everywhere).
    let admin = otaledger_ledger::db::pool(&bench_cfg.database.url, &name, 1).await?;
    for schema in [
        name.clone(),
        format!("{name}_naive"),
        format!("{name}_deep"),
        format!("{name}_pair"),
        format!("{name}_rollout"),
        format!("{name}_rebuild"),
    ] {
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .execute(&admin)
            .await?;
    }
    admin.close().await;
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&report)?)?;
    println!("\n{}\nwritten to {}", report.table(), args.out.display());
    Ok(report)
}

pub(crate) async fn create_topic(kafka: &KafkaConfig, topic: &str) -> Result<(), BoxError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        client_config(kafka).create()?;
    let new = NewTopic::new(
        topic,
        kafka.partitions,
        TopicReplication::Fixed(kafka.replication_factor),
    );
    admin.create_topics(&[new], &AdminOptions::new()).await?;
    otaledger_ledger::kafka::wait_for_topic(kafka, topic, Duration::from_secs(30)).await?;
    Ok(())
}

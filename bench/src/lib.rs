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
use otaledger_domain::ids::{new_event_id, new_trace_id};
use otaledger_domain::time::now_micros;
use otaledger_domain::{Event, EventMeta, Payload};
use otaledger_ledger::config::KafkaConfig;
use otaledger_ledger::kafka::{client_config, ensure_topics, EventProducer};
use otaledger_projections::projector::{fold_batch, merge_patches, DimensionCache};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use otaledger_ledger::config::Config;

pub mod lag;
pub mod process;
pub mod rollout;

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
    pub out: std::path::PathBuf,
    /// The `otaledger` binary the rollout scenario runs each component with, a process each.
    pub components: std::path::PathBuf,
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
                out,
                components,
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
                out,
                components,
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
            Event {
                meta: EventMeta {
                    event_id: new_event_id(),
                    occurred_at: now + i as i64,
                    recorded_at: now + i as i64,
                    trace_id: new_trace_id(),
                },
                payload: Payload::Heartbeat(Heartbeat {
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
            }
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

/// A plain producer (no idempotence, Avro or headers) batching as otaledger's does.
pub(crate) fn raw_producer(kafka: &KafkaConfig) -> Result<FutureProducer, BoxError> {
    Ok(client_config(kafka)
        .set("linger.ms", "10")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "500000")
        .create()?)
}

/// Enqueues one record, waiting while the producer's queue is full.
pub(crate) async fn raw_send(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    payload: &[u8],
) -> rdkafka::producer::DeliveryFuture {
    let mut record = FutureRecord::to(topic).key(key).payload(payload);
    loop {
        match producer.send_result(record) {
            Ok(f) => return f,
            Err((_, r)) => {
                record = r;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

async fn raw_produce(
    kafka: &KafkaConfig,
    topic: &str,
    payloads: &[(String, Vec<u8>)],
) -> Result<Duration, BoxError> {
    let producer = raw_producer(kafka)?;
    let started = Instant::now();
    let mut pending = Vec::with_capacity(payloads.len());
    for (key, payload) in payloads {
        pending.push(raw_send(&producer, topic, key, payload).await);
    }
    for p in pending {
        p.await?.map_err(|(e, _)| e)?;
    }
    Ok(started.elapsed())
}

/// A plain consumer of every partition of `topic` from its start, configured as otaledger's
/// consumers are, so that the limits it measures are theirs.
pub(crate) fn raw_reader(
    kafka: &KafkaConfig,
    name: &str,
    topic: &str,
) -> Result<BaseConsumer, BoxError> {
    let consumer: BaseConsumer = otaledger_ledger::reader::consumer_config(kafka, name).create()?;
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    for p in md
        .topics()
        .first()
        .map(|t| t.partitions())
        .unwrap_or_default()
    {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    Ok(consumer)
}

fn raw_consume(kafka: &KafkaConfig, topic: &str, expected: usize) -> Result<Duration, BoxError> {
    let consumer = raw_reader(kafka, "bench-raw-consume", topic)?;
    let started = Instant::now();
    let mut n = 0usize;
    let mut bytes = 0usize;
    while n < expected {
        if started.elapsed() > Duration::from_secs(600) {
            return Err(format!("raw consume read {n} of {expected}").into());
        }
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            bytes += m?.payload().map_or(0, <[u8]>::len);
            n += 1;
        }
    }
    tracing::debug!(bytes, "raw consume done");
    Ok(started.elapsed())
}

async fn copy_rate(cfg: &Config, schema: &str, rows: usize) -> Result<Duration, BoxError> {
    let pool = otaledger_ledger::db::pool(&cfg.database.url, schema, 2).await?;
    let mut conn = pool.acquire().await?;
    sqlx::query(
        "CREATE TABLE copy_probe (device_id text, firmware_version text, last_seen_at timestamptz, \
         uptime_s bigint, cpu_pct real, mem_pct real, temperature_c real, signal_dbm int, \
         last_partition int, last_offset bigint)",
    )
    .execute(&mut *conn)
    .await?;
    let mut data = String::with_capacity(rows * 90);
    for i in 0..rows {
        let _ = writeln!(
            data,
            "bench-{i:07},1.0.0,2026-11-26 10:00:00+00,{i},12.5,40,35.5,-60,{},{i}",
            i % 6
        );
    }
    let started = Instant::now();
    let mut copy = conn
        .copy_in_raw("COPY copy_probe FROM STDIN (FORMAT csv)")
        .await?;
    for chunk in data.as_bytes().chunks(1 << 20) {
        copy.send(chunk).await?;
    }
    copy.finish().await?;
    Ok(started.elapsed())
}

/// Runs the scenarios and writes the report.
pub async fn run(cfg: &Config, args: &BenchArgs) -> Result<Report, BoxError> {
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
    let all = args.scenario == Scenario::All;

    if all
        || matches!(
            args.scenario,
            Scenario::Limits | Scenario::Ingest | Scenario::Projection
        )
    {
        let t = raw_produce(&kafka, &raw_topic, &encoded).await?;
        report.add("limits", "raw produce", rate(encoded.len(), t), "msg/s");
        let (k, topic, n) = (kafka.clone(), raw_topic.clone(), encoded.len());
        let t = tokio::task::spawn_blocking(move || {
            raw_consume(&k, &topic, n).map_err(|e| e.to_string())
        })
        .await??;
        report.add("limits", "raw consume", rate(n, t), "msg/s");
        let rows = args.events.min(1_000_000);
        let t = copy_rate(&bench_cfg, &name, rows).await?;
        report.add("limits", "postgres COPY", rate(rows, t), "rows/s");
    }

    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    if all
        || matches!(
            args.scenario,
            Scenario::Ingest | Scenario::Projection | Scenario::Rebuild
        )
    {
        let producer = EventProducer::new(&kafka)?;
        let started = Instant::now();
        let mut pending = std::collections::VecDeque::new();
        let mut note = |d: otaledger_ledger::kafka::Delivered| {
            let end = ends.entry(d.partition).or_insert(0);
            *end = (*end).max(d.offset + 1);
        };
        for chunk in (0..args.events).step_by(CHUNK) {
            // The first million are the codec sample, generated already; the rest as they go.
            let generated;
            let slice = if chunk < events.len() {
                &events[chunk..(chunk + CHUNK).min(events.len())]
            } else {
                generated = heartbeats(chunk..(chunk + CHUNK).min(args.events), args.devices, now);
                &generated[..]
            };
            for e in slice {
                pending.push_back(producer.enqueue(e).await?);
            }
            while pending.len() > 4 * CHUNK {
                if let Some(p) = pending.pop_front() {
                    note(p.acked().await?);
                }
            }
        }
        for p in pending {
            note(p.acked().await?);
        }
        report.add(
            "ingest",
            "otaledger producer (Avro, acks=all)",
            rate(args.events, started.elapsed()),
            "events/s",
        );
        report.ratio("otaledger producer (Avro, acks=all)", "raw produce");
    }

    if all || args.scenario == Scenario::Projection {
        // Live windows (at most 50,000 rows a transaction): what the projector sustains while
        // it follows the stream, and the rate the lag scenario halves. Far behind, deep
        // windows fold the backlog (the whole of it here) before writing.
        let runs: [(&'static str, &str, &[&str], bool); 3] = [
            ("projector catch-up", "", &["bench"], false),
            ("projector catch-up, far behind", "_deep", &["bench"], true),
            (
                "2 instances catch-up, far behind",
                "_pair",
                &["bench-a", "bench-b"],
                true,
            ),
        ];
        for (figure, suffix, members, far_behind) in runs {
            let schema = format!("{name}{suffix}");
            let (elapsed, rss) = project(
                &bench_cfg,
                &schema,
                members,
                &ends,
                far_behind,
                &args.components,
            )
            .await?;
            report.add("projection", figure, rate(args.events, elapsed), "events/s");
            report.ratio(figure, "raw consume");
            if let [one] = rss[..] {
                let name = if far_behind {
                    "peak RSS, projector far behind"
                } else {
                    "peak RSS, projector"
                };
                report.add("projection", name, one, "MiB");
            }
        }

        // The naive projector: the same merge, one event per transaction.
        let naive_schema = format!("{name}_naive");
        let naive = otaledger_ledger::db::pool(&bench_cfg.database.url, &naive_schema, 2).await?;
        otaledger_projections::migrations::migrate(&naive).await?;
        let n = args.naive_events.min(events.len());
        let started = Instant::now();
        for (i, e) in events.iter().take(n).enumerate() {
            let positioned = [otaledger_ledger::Positioned {
                position: otaledger_domain::device_view::Position {
                    partition: 0,
                    offset: i as i64,
                },
                event: e.clone(),
            }];
            let mut tx = naive.begin().await?;
            merge_patches(
                &mut tx,
                fold_batch(&positioned),
                &mut DimensionCache::default(),
            )
            .await?;
            tx.commit().await?;
        }
        report.add(
            "projection",
            "naive projector (1 event per tx)",
            rate(n, started.elapsed()),
            "events/s",
        );
        let catch_up = report
            .figures
            .iter()
            .find(|f| f.name == "projector catch-up")
            .map(|f| f.value);
        if let (Some(fast), Some(f)) = (catch_up, report.figures.last_mut()) {
            println!(
                "  {:<11} {:<34} {:>14.1} x faster than naive",
                "",
                "",
                fast / f.value
            );
        }
        report.add(
            "projection",
            "peak RSS, bench process (naive projector, event sample)",
            peak_rss_mib(),
            "MiB",
        );
    }

    if all || args.scenario == Scenario::Lag {
        // Half the measured catch-up rate, as a steady load the projector must follow closely.
        let catch_up = report
            .figures
            .iter()
            .find(|f| f.name == "projector catch-up")
            .map_or(20_000.0, |f| f.value);
        let rate = args.lag_rate.unwrap_or(catch_up / 2.0).max(100.0);
        let mut lag_cfg = bench_cfg.clone();
        lag_cfg.kafka.topic_prefix = format!("{name}.lag.");
        let samples = crate::lag::steady_lag(
            &lag_cfg,
            &format!("{name}_lag"),
            rate,
            args.lag_duration,
            args.devices,
        )
        .await?;
        let rate_name = if args.lag_rate.is_some() {
            "steady rate (--lag-rate)"
        } else {
            "steady rate (half of catch-up)"
        };
        report.add("lag", rate_name, rate, "events/s");
        let pct = |q: f64| percentile(&samples, q);
        report.add("lag", "occurred-at to commit p50", pct(0.50), "ms");
        report.add("lag", "occurred-at to commit p99", pct(0.99), "ms");
        report.add("lag", "occurred-at to commit max", pct(1.0), "ms");
        let samples = crate::lag::raw_lag(
            &lag_cfg.kafka,
            &format!("{name}.lag.raw"),
            rate,
            args.lag_duration,
            args.devices,
        )
        .await?;
        let pct = |q: f64| percentile(&samples, q);
        report.add("lag", "raw produce to consume p50", pct(0.50), "ms");
        report.add("lag", "raw produce to consume p99", pct(0.99), "ms");
        report.add("lag", "raw produce to consume max", pct(1.0), "ms");
        report.ratio("occurred-at to commit p99", "raw produce to consume p99");
    }

    if all || args.scenario == Scenario::Api {
        let schema = format!("{name}_api");
        let (addr, server) = api_over_fleet(&bench_cfg, &schema, args.api_devices).await?;
        report.add("api", "fleet size", args.api_devices as f64, "devices");
        for (label, names) in [
            (
                "GET /v1/devices/{id}",
                [
                    "devices/{id} p50",
                    "devices/{id} p99",
                    "devices/{id} p99.9",
                    "devices/{id} errors",
                ],
            ),
            (
                "GET /v1/fleet/summary",
                [
                    "summary p50",
                    "summary p99",
                    "summary p99.9",
                    "summary errors",
                ],
            ),
        ] {
            // A second of warm-up first: connections, the pool and PostgreSQL's caches.
            let warm = args.api_duration.min(Duration::from_secs(1));
            open_loop(addr, label, args.api_rate, warm, args.api_devices).await?;
            let (lat, errors) = open_loop(
                addr,
                label,
                args.api_rate,
                args.api_duration,
                args.api_devices,
            )
            .await?;
            let pct = |q: f64| percentile(&lat, q);
            println!(
                "  api         {label} at {:.0} req/s for {:?}",
                args.api_rate, args.api_duration
            );
            report.add("api", names[0], pct(0.50), "ms");
            report.add("api", names[1], pct(0.99), "ms");
            report.add("api", names[2], pct(0.999), "ms");
            report.add("api", names[3], errors as f64, "requests");
        }
        let (lookups, queries) = otaledger_api::device_lookup::counters();
        #[allow(clippy::cast_precision_loss)]
        report.add(
            "api",
            "devices/{id} lookups per query",
            lookups.get() as f64 / queries.get().max(1) as f64,
            "lookups",
        );
        server.abort();
    }

    if all || args.scenario == Scenario::Rebuild {
        let plan = otaledger_projections::rebuild::RebuildPlan {
            database_url: bench_cfg.database.url.clone(),
            kafka: kafka.clone(),
            shadow: format!("{name}_rebuild"),
            until: None,
            stop_at: Some(BTreeMap::from([
                ("projector".to_owned(), ends.clone()),
                ("history".to_owned(), ends.clone()),
                ("rollout-projector".to_owned(), BTreeMap::new()),
            ])),
        };
        let p = otaledger_projections::rebuild::build_shadow(&plan, |_| {}).await?;
        // Every projection of the device events (fleet view and device history) reads them all.
        report.add(
            "rebuild",
            "rebuild into a shadow schema",
            rate(args.events, p.elapsed),
            "events/s",
        );
        report.ratio("rebuild into a shadow schema", "raw consume");
        report.add(
            "rebuild",
            "rebuild time",
            p.elapsed.as_secs_f64() * 1000.0,
            "ms",
        );
    }

    if all || args.scenario == Scenario::Rollout {
        let mut rc = bench_cfg.clone();
        rc.database.schema = format!("{name}_rollout");
        rc.mqtt.topic_root = format!("{name}/devices");
        rc.amqp.reports_queue = format!("{name}.reports");
        rc.amqp.commands_exchange = format!("{name}.gateway-commands");
        let (alone, alone_mqtt, alone_amqp) =
            crate::rollout::dispatch_only(&rc, args.rollout_devices).await?;
        report.add(
            "rollout",
            "dispatcher alone, commands queued",
            alone,
            "commands/s",
        );
        report.add(
            "rollout",
            "dispatcher alone, over MQTT",
            alone_mqtt,
            "commands/s",
        );
        report.add(
            "rollout",
            "dispatcher alone, over AMQP",
            alone_amqp,
            "commands/s",
        );
        let f = crate::rollout::run(&rc, args.rollout_devices, &args.components).await?;
        #[allow(clippy::cast_precision_loss)]
        {
            report.add("rollout", "fleet size", f.devices as f64, "devices");
            report.add(
                "rollout",
                "commands dispatched",
                f.commands_per_s,
                "commands/s",
            );
            report.add(
                "rollout",
                "commands dispatched while waiting",
                f.dispatch_busy_per_s,
                "commands/s",
            );
            report.add(
                "rollout",
                "commands dispatched, best second",
                f.peak_per_s,
                "commands/s",
            );
            report.add("rollout", "commands over MQTT", f.mqtt_per_s, "commands/s");
            report.add("rollout", "commands over AMQP", f.amqp_per_s, "commands/s");
            report.add(
                "rollout",
                "MQTT commands",
                f.mqtt_commands as f64,
                "commands",
            );
            report.add(
                "rollout",
                "AMQP commands",
                f.amqp_commands as f64,
                "commands",
            );
        }
        report.add(
            "rollout",
            "request to last command",
            f.request_to_last_command_s * 1000.0,
            "ms",
        );
        report.add(
            "rollout",
            "request to completion",
            f.request_to_completion_s * 1000.0,
            "ms",
        );
        report.add("rollout", "saga decision p50", f.decision_p50_ms, "ms");
        report.add("rollout", "saga decision p99", f.decision_p99_ms, "ms");
        for (c, mib) in &f.peak_rss_mib {
            report.add("rollout", rss_figure(*c), *mib, "MiB");
        }
        report.add(
            "rollout",
            "peak RSS, bench process (simulated fleet)",
            f.simulator_peak_rss_mib,
            "MiB",
        );
    }

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

/// Projects the device-events topic into a fresh schema with one projector instance per member
/// (sharing the partitions), and returns the time until every partition reached `ends`.
/// Runs one projector process per member over the topic into `schema` until every partition
/// reached `ends`; resolves to the time taken and each process's peak RSS in MiB.
async fn project(
    cfg: &Config,
    schema: &str,
    members: &[&str],
    ends: &BTreeMap<i32, i64>,
    far_behind: bool,
    bin: &std::path::Path,
) -> Result<(Duration, Vec<f64>), BoxError> {
    let topic = cfg.kafka.topics().device_events;
    let pool = otaledger_ledger::db::pool(&cfg.database.url, schema, 8).await?;
    otaledger_projections::migrations::migrate(&pool).await?;
    otaledger_ledger::db::create_if_missing(&pool, otaledger_ledger::ownership::OFFSETS_DDL)
        .await?;
    // The bench's backlog is seconds old, not the minutes or hours of an outage: far behind, it
    // counts as far behind whatever its age; otherwise only live windows are used.
    let settings = std::env::temp_dir().join(format!("{schema}.toml"));
    std::fs::write(
        &settings,
        if far_behind {
            "[projector]\ndeep_fold_when_behind_ms = 0\n"
        } else {
            "[projector]\ndeep_fold_max_events = 0\n"
        },
    )?;
    let started = Instant::now();
    let mut processes = Vec::new();
    for member in members {
        let mut pc = cfg.clone();
        pc.database.schema = schema.to_owned();
        pc.projector.member = (*member).to_owned();
        processes.push(crate::process::ComponentProcess::start(
            bin,
            &pc,
            otaledger_cli::components::Component::Projector,
            Some(&settings),
        )?);
    }
    let outcome = loop {
        let done = otaledger_ledger::runner::committed_offsets(&pool, "projector", &topic).await?;
        if ends.iter().all(|(p, e)| done.get(p) >= Some(e)) {
            break Ok(started.elapsed());
        }
        if processes
            .iter_mut()
            .any(crate::process::ComponentProcess::exited)
            || started.elapsed() > Duration::from_secs(1800)
        {
            break Err("a projector stopped before catching up".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let rss = processes.iter().map(|p| p.peak_rss_mib()).collect();
    for p in processes {
        p.stop().await;
    }
    let _ = std::fs::remove_file(&settings);
    pool.close().await;
    outcome.map(|elapsed| (elapsed, rss))
}

/// Fills a fleet of `devices` rows and serves the API over it on a free loopback port.
async fn api_over_fleet(
    cfg: &Config,
    schema: &str,
    devices: usize,
) -> Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>), BoxError> {
    let pool = otaledger_ledger::db::pool(&cfg.database.url, schema, 16).await?;
    otaledger_projections::migrations::migrate(&pool).await?;
    let now = now_micros();
    for start in (0..devices).step_by(20_000) {
        let mut patches = BTreeMap::new();
        for i in start..(start + 20_000).min(devices) {
            let e = Event {
                meta: EventMeta {
                    event_id: new_event_id(),
                    occurred_at: now,
                    recorded_at: now,
                    trace_id: String::new(),
                },
                payload: Payload::DeviceRegistered(otaledger_domain::events::DeviceRegistered {
                    device_id: format!("bench-{i:07}"),
                    model: format!("model-{}", i % 7),
                    site: format!("site-{}", i % 50),
                    tags: vec!["prod".into()],
                    firmware_version: format!("1.{}.0", i % 5),
                    gateway_id: None,
                    hardware_rev: None,
                }),
            };
            let position = otaledger_domain::device_view::Position {
                partition: 0,
                offset: i as i64,
            };
            if let Some(v) = otaledger_domain::device_view::DeviceView::apply(None, &e, position) {
                patches.insert(v.device_id.clone(), v);
            }
        }
        let mut tx = pool.begin().await?;
        merge_patches(&mut tx, patches, &mut DimensionCache::default()).await?;
        tx.commit().await?;
    }
    sqlx::query("VACUUM ANALYZE devices").execute(&pool).await?;
    let state = otaledger_api::AppState::new(
        pool,
        EventProducer::new(&cfg.kafka)?,
        cfg.kafka.clone(),
        cfg.offline_after(),
    )?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, otaledger_api::app(state)).await;
    });
    Ok((addr, server))
}

/// A kept-alive connection of the load generator and its read buffer.
struct Conn {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

/// One HTTP/1.1 GET on a kept-alive connection; returns whether it answered 200.
async fn get_once(conn: &mut Conn, path: &str) -> std::io::Result<bool> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.stream
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: bench\r\n\r\n").as_bytes())
        .await?;
    let buf = &mut conn.buf;
    buf.clear();
    loop {
        buf.reserve(4096);
        if conn.stream.read_buf(buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                buf.reserve(4096);
                if conn.stream.read_buf(buf).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
            return Ok(head.starts_with("http/1.1 200"));
        }
    }
}

/// Sends requests at a fixed arrival rate whatever the answers take (open loop), measuring each
/// from its scheduled time so that a slow answer cannot hide the queue behind it. Returns the
/// sorted latencies (µs) and the error count.
///
/// The generator is a client apart, as it would be in production: a pacing thread (sleeping
/// with the OS timer, tens of µs late at most; Tokio's timer ticks in whole milliseconds, which
/// added up to a millisecond to every latency) hands each request to a one-worker runtime of its
/// own. Finished requests are freed at once (holding 100,000 finished tasks until the end put a
/// tenth of the process's CPU into zeroing fresh pages; with both fixes the lookup p99 went
/// from 21.9 to 5.6–11.0 ms, see BENCHMARKS.md).
async fn open_loop(
    addr: std::net::SocketAddr,
    label: &str,
    rate: f64,
    duration: Duration,
    devices: usize,
) -> Result<(Vec<i64>, u64), BoxError> {
    let summary = label.contains("summary");
    Ok(
        tokio::task::spawn_blocking(move || generate(addr, summary, rate, duration, devices))
            .await??,
    )
}

fn generate(
    addr: std::net::SocketAddr,
    summary: bool,
    rate: f64,
    duration: Duration,
    devices: usize,
) -> std::io::Result<(Vec<i64>, u64)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bench-client")
        .enable_all()
        .build()?;
    let pool: std::sync::Arc<std::sync::Mutex<Vec<Conn>>> = std::sync::Arc::default();
    // Each request reports its latency, or None for an error.
    let (done, mut results) = tokio::sync::mpsc::unbounded_channel::<Option<i64>>();
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let total = (duration.as_secs_f64() * rate) as u64;
    let start = Instant::now();
    for i in 0..total {
        let due = start + interval.mul_f64(i as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let (pool, done) = (pool.clone(), done.clone());
        let path = if summary {
            "/v1/fleet/summary".to_owned()
        } else {
            format!(
                "/v1/devices/bench-{:07}",
                (i.wrapping_mul(2_654_435_761)) % devices.max(1) as u64
            )
        };
        rt.spawn(async move {
            let conn = pool.lock().ok().and_then(|mut p| p.pop());
            let conn = match conn {
                Some(c) => Ok(c),
                None => tokio::net::TcpStream::connect(addr)
                    .await
                    .map(|stream| Conn {
                        stream,
                        buf: Vec::with_capacity(8192),
                    }),
            };
            let ok = match conn {
                Ok(mut c) => match get_once(&mut c, &path).await {
                    Ok(ok) => {
                        if let Ok(mut p) = pool.lock() {
                            p.push(c);
                        }
                        ok
                    }
                    Err(_) => false,
                },
                Err(_) => false,
            };
            let micros = i64::try_from(due.elapsed().as_micros()).unwrap_or(i64::MAX);
            let _ = done.send(ok.then_some(micros));
        });
    }
    drop(done);
    let (mut lat, errors) = rt.block_on(async {
        let (mut lat, mut errors) = (Vec::with_capacity(usize::try_from(total).unwrap_or(0)), 0);
        while let Some(r) = results.recv().await {
            match r {
                Some(micros) => lat.push(micros),
                None => errors += 1,
            }
        }
        (lat, errors)
    });
    lat.sort_unstable();
    Ok((lat, errors))
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

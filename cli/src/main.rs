//! `otaledger`: the event-sourced OTA update ledger's one command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use otaledger_cli::components::{self, Component};
use otaledger_cli::{rebuild, replay};
use otaledger_ledger::config::{Config, ENV_OVERRIDES};
use otaledger_ledger::shutdown::Shutdown;
use otaledger_simulator::{self as simulator, Behaviour, OutcomeRule, SimConfig};

#[derive(Debug, Parser)]
#[command(name = "otaledger", version, about = "Event-sourced over-the-air update ledger for IoT fleets",
    long_about = "Event-sourced over-the-air update ledger for IoT fleets.\n\n\
        Kafka holds the ledger of record (ota.device-events, ota.rollout-events, ota.device-commands, \
        ota.dead-letters); bridges append device facts from MQTT, AMQP and HTTP; projectors fold them \
        into PostgreSQL; the HTTP API answers fleet queries.",
    after_help = env_help())]
struct Cli {
    /// TOML configuration file (see otaledger.example.toml); environment variables override it.
    #[arg(long, short, global = true, env = "OTALEDGER_CONFIG")]
    config: Option<PathBuf>,
    /// Log format: human-readable text or one JSON object per line.
    #[arg(long, global = true, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

fn env_help() -> String {
    let mut s = String::from("Environment overrides:\n");
    for o in ENV_OVERRIDES {
        s.push_str(&format!("  {:<28} {}\n", o.var, o.setting));
    }
    s.push_str("  RUST_LOG                     log filter, e.g. info or otaledger_consumers=debug");
    s
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole stack in one process: API, projector, MQTT and AMQP bridges (and, with
    /// --simulate, a simulated fleet). Creates topics and tables first. Stops on SIGTERM/Ctrl-C.
    Up {
        /// Also run the fleet simulator.
        #[arg(long)]
        simulate: bool,
        #[command(flatten)]
        sim: SimArgs,
    },
    /// Run one component alone (scale out by running more: partitions are shared among them).
    Run {
        #[arg(value_enum)]
        component: Component,
    },
    /// Simulate a fleet: devices over MQTT, a share behind gateways reporting over AMQP.
    Simulate {
        #[command(flatten)]
        sim: SimArgs,
    },
    /// Create the ledger topics, the database schema and its tables if missing.
    Init,
    /// Rebuild every projection from offset 0 into a shadow schema and swap it in atomically
    /// (the API keeps answering); with --until, build a snapshot of the fleet as of that time
    /// instead, answered by GET /v1/fleet/summary?as_of=<time>.
    Rebuild {
        /// Apply only events that occurred at or before this RFC 3339 time (a snapshot).
        #[arg(long)]
        until: Option<String>,
        /// The snapshot's schema name (with --until; default <schema>_asof_<time>).
        #[arg(long)]
        into: Option<String>,
        /// Keep the replaced projections in a schema <schema>_old_<stamp>.
        #[arg(long)]
        keep_old: bool,
    },
    /// Rebuild every projection into a shadow schema up to the live position and compare it
    /// with the live one (row counts and per-row checksums); exits 1 when anything differs.
    Verify {
        /// Keep the shadow schema for inspection.
        #[arg(long)]
        keep_shadow: bool,
    },
    /// Export every event of the ledger to an analytics format (incremental and crash-safe:
    /// a re-run continues where the last one stopped).
    Export {
        #[command(subcommand)]
        format: ExportFormat,
    },
    /// A readable timeline of a device or a rollout, explained from the ledger alone.
    Audit {
        #[command(subcommand)]
        target: replay::AuditTarget,
    },
    /// Read the ledger back (every schema version), filter it and print it as JSON lines or a
    /// table; a progress line on a terminal, none when piped.
    Replay {
        /// Topics to read: device-events, rollout-events, device-commands (default: all three).
        #[arg(long, value_delimiter = ',')]
        topic: Vec<String>,
        /// Start every partition at this offset instead of the beginning.
        #[arg(long, default_value_t = 0)]
        from_offset: i64,
        /// Only events about this device.
        #[arg(long)]
        device: Option<String>,
        /// Only events of this rollout.
        #[arg(long)]
        rollout: Option<String>,
        /// Only these event types (comma-separated, e.g. Heartbeat,InstallResult).
        #[arg(long = "type", value_delimiter = ',')]
        types: Vec<String>,
        /// Only events that occurred at or after this RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Only events that occurred before this RFC 3339 time.
        #[arg(long)]
        until: Option<String>,
        #[arg(long, value_enum, default_value = "json")]
        format: replay::Format,
    },
}

#[derive(Debug, Subcommand)]
enum ExportFormat {
    /// Parquet files partitioned by event type and day: DIR/type=<T>/day=<YYYY-MM-DD>/part-<segment>.parquet,
    /// with DIR/_checkpoint.json recording how far the export got.
    Parquet {
        /// The directory to export into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Keep exporting as events arrive, a segment at least every --flush-seconds.
        #[arg(long)]
        follow: bool,
        /// Events per segment at most.
        #[arg(long, default_value_t = 200_000)]
        segment_events: usize,
        /// With --follow, how often buffered events are written.
        #[arg(long, default_value_t = 5)]
        flush_seconds: u64,
    },
}

#[derive(Debug, Args)]
struct SimArgs {
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
    /// MQTT connections the devices are multiplexed over.
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
}

impl SimArgs {
    fn to_config(&self, cfg: &Config) -> SimConfig {
        SimConfig {
            devices: self.devices,
            rate: self.rate,
            gateway_share: self.gateway_share,
            gateways: self.gateways,
            id_prefix: self.id_prefix.clone(),
            seed: self.seed,
            rounds: self.rounds,
            mqtt_connections: self.mqtt_connections,
            mqtt: cfg.mqtt.clone(),
            amqp: cfg.amqp.clone(),
            behaviour: Behaviour {
                install_ms: self.install_ms,
                progress: self.progress,
                failures: self.failures.clone(),
                silent: self.silent.clone(),
                unhealthy: self.unhealthy.clone(),
            },
        }
    }
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,rdkafka=warn,lapin=warn,sqlx=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

// Every component allocates per event (decoding, folding, batching); glibc's malloc spent a
// third of a rebuild's cycles in its free lists (ADR 0012).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log_format);
    let cfg = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("otaledger: configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    let result: Result<(), components::BoxError> = async {
        match cli.command {
            Command::Init => components::prepare(&cfg).await,
            Command::Run { component } => {
                components::prepare(&cfg).await?;
                let metrics = if component == Component::Api {
                    None
                } else {
                    components::serve_metrics(&cfg, shutdown.signal()).await?
                };
                let result = components::run(component, cfg, shutdown.signal()).await;
                shutdown.trigger();
                if let Some(m) = metrics {
                    let _ = m.await;
                }
                result
            }
            Command::Up { simulate, sim } => {
                components::prepare(&cfg).await?;
                tracing::info!(api = %format!("http://{}", cfg.http.listen), "otaledger is starting; \
                    try GET /v1/fleet/summary, /v1/devices, /metrics, /openapi.json");
                let stack = components::supervise(Component::ALL.to_vec(), cfg.clone(), &shutdown);
                if simulate {
                    let sim_cfg = sim.to_config(&cfg);
                    let signal = shutdown.signal();
                    tokio::spawn(async move {
                        if let Err(e) = simulator::run(sim_cfg, signal).await {
                            tracing::error!(error = %e, "simulator failed");
                        }
                    });
                }
                stack.await;
                Ok(())
            }
            Command::Rebuild { until, into, keep_old } => {
                let until = until
                    .as_deref()
                    .map(|t| replay::parse_time(t).map(|m| chrono::DateTime::from_timestamp_micros(m).unwrap_or_default()))
                    .transpose()?;
                rebuild::rebuild(&cfg, until, into, keep_old).await
            }
            Command::Verify { keep_shadow } => {
                let differences = rebuild::verify(&cfg, keep_shadow).await?;
                if differences > 0 {
                    return Err(format!("{differences} differences between the live projections and the ledger").into());
                }
                Ok(())
            }
            Command::Export { format: ExportFormat::Parquet { out, follow, segment_events, flush_seconds } } => {
                let args = otaledger_cli::export::ExportArgs {
                    out,
                    follow,
                    segment_events: segment_events.max(1),
                    flush_every: std::time::Duration::from_secs(flush_seconds.max(1)),
                    idle: std::time::Duration::from_secs(2),
                    stop: Some(shutdown.signal()),
                };
                let kafka = cfg.kafka.clone();
                let stats = tokio::task::spawn_blocking(move || {
                    otaledger_cli::export::export(&kafka, &args).map_err(|e| e.to_string())
                })
                .await??;
                #[allow(clippy::cast_precision_loss)]
                let rate = stats.events as f64 / stats.elapsed.as_secs_f64().max(0.001);
                println!(
                    "exported {} events in {} segments ({} files) in {:.1} s ({rate:.0} events/s); {} undecodable records skipped",
                    stats.events, stats.segments, stats.files, stats.elapsed.as_secs_f64(), stats.undecodable
                );
                Ok(())
            }
            Command::Audit { target } => {
                let kafka = cfg.kafka.clone();
                let lines = tokio::task::spawn_blocking(move || {
                    replay::audit(&kafka, &target, std::time::Duration::from_secs(2)).map_err(|e| e.to_string())
                })
                .await??;
                for line in lines {
                    println!("{}  {}", replay::rfc3339(line.at), line.text);
                }
                Ok(())
            }
            Command::Replay { topic, from_offset, device, rollout, types, since, until, format } => {
                let topics = cfg.kafka.topics();
                let names = if topic.is_empty() {
                    vec!["device-events".to_owned(), "rollout-events".to_owned(), "device-commands".to_owned()]
                } else {
                    topic
                };
                let mut filter = replay::Filter { from_offset, device, rollout, idle: std::time::Duration::from_secs(2), ..Default::default() };
                for name in names {
                    filter.topics.push(match name.as_str() {
                        "device-events" => topics.device_events.clone(),
                        "rollout-events" => topics.rollout_events.clone(),
                        "device-commands" => topics.device_commands.clone(),
                        "dead-letters" => return Err("dead letters are raw bytes, not events: read them with a Kafka client".into()),
                        other => return Err(format!("unknown topic {other:?}: use device-events, rollout-events or device-commands").into()),
                    });
                }
                for t in types {
                    filter.types.push(otaledger_domain::EventType::from_name(&t).ok_or_else(|| format!("unknown event type {t:?}"))?);
                }
                filter.since = since.as_deref().map(replay::parse_time).transpose()?;
                filter.until = until.as_deref().map(replay::parse_time).transpose()?;
                let kafka = cfg.kafka.clone();
                let stats = tokio::task::spawn_blocking(move || {
                    replay::replay(&kafka, &filter, format, &mut std::io::stdout().lock()).map_err(|e| e.to_string())
                })
                .await??;
                tracing::info!(?stats, "replay done");
                Ok(())
            }
            Command::Simulate { sim } => {
                let stats = simulator::run(sim.to_config(&cfg), shutdown.signal()).await?;
                println!(
                    "sent {} MQTT messages and {} gateway batches ({} reports); executed {} commands ({} duplicates ignored), reported {} results",
                    stats.mqtt_messages, stats.gateway_batches, stats.gateway_reports,
                    stats.commands, stats.duplicate_commands, stats.results
                );
                Ok(())
            }
        }
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "otaledger failed");
            eprintln!("otaledger: {e}");
            ExitCode::FAILURE
        }
    }
}

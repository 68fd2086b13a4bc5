//! `otaledger-bench`: otaledger's benchmarks, kept out of the product binary. Each scenario
//! works in a namespace of its own (topic prefix and PostgreSQL schema) on the configured
//! services and prints each figure beside the machine's own limit it is measured against.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use otaledger_bench::{run, BenchArgs, Scenario};
use otaledger_ledger::config::Config;

/// Measure speed against the machine's limits in the same run (own topics and schema); prints
/// a table and writes a JSON report. Components run as `otaledger run` processes: build the
/// product binary first (`cargo build --release -p otaledger-cli -p otaledger-bench`).
#[derive(Debug, Parser)]
#[command(name = "otaledger-bench", version)]
struct Cli {
    #[arg(value_enum, default_value = "all")]
    scenario: Scenario,
    /// TOML configuration file (see otaledger.example.toml); environment variables override it.
    #[arg(long, short, env = "OTALEDGER_CONFIG")]
    config: Option<PathBuf>,
    /// The everyday size (100,000 events) instead of the full one (1,000,000).
    #[arg(long)]
    quick: bool,
    /// Events to produce and project (overrides the size).
    #[arg(long)]
    events: Option<usize>,
    /// Distinct devices the events come from (overrides the size).
    #[arg(long)]
    devices: Option<usize>,
    /// Seconds the steady-rate lag scenario is measured, after a warm-up of a quarter of that
    /// (at most 5 s) (overrides the size).
    #[arg(long)]
    lag_seconds: Option<u64>,
    /// Events/s of the lag scenario (default: half the catch-up rate measured in the same
    /// run, or 10,000 when the projection scenario does not run).
    #[arg(long)]
    lag_rate: Option<f64>,
    /// Devices in the rollout scenario's fleet (overrides the size).
    #[arg(long)]
    rollout_devices: Option<usize>,
    /// The `otaledger` binary that runs the components (default: the one beside this binary).
    #[arg(long)]
    otaledger: Option<PathBuf>,
    /// Devices of the MQTT ingest scenario (overrides the size).
    #[arg(long)]
    mqtt_devices: Option<usize>,
    /// Mosquitto's TLS listener port, measured beside the plain one in the MQTT ingest scenario.
    #[arg(long, default_value_t = 8883)]
    mqtt_tls_port: u16,
    /// The CA that signed the broker's certificate (default: the development CA that
    /// scripts/services.sh makes, when it exists).
    #[arg(long)]
    tls_ca: Option<PathBuf>,
    /// Where to write the JSON report.
    #[arg(long, default_value = "bench/results.json")]
    out: PathBuf,
}

// The same allocator as the product binary, so that in-process figures compare (ADR 0012).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,rdkafka=warn,lapin=warn,sqlx=warn")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match bench(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("otaledger-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn bench(cli: Cli) -> anyhow::Result<()> {
    let cfg = Config::load(cli.config.as_deref())
        .map_err(anyhow::Error::msg)
        .context("configuration")?;
    let mut args = BenchArgs::sized(cli.scenario, cli.quick, cli.out);
    if let Some(secs) = cli.lag_seconds {
        args.lag_duration = std::time::Duration::from_secs(secs);
    }
    args.lag_rate = cli.lag_rate;
    args.events = cli.events.unwrap_or(args.events);
    args.devices = cli.devices.unwrap_or(args.devices);
    args.rollout_devices = cli.rollout_devices.unwrap_or(args.rollout_devices);
    args.mqtt_devices = cli.mqtt_devices.unwrap_or(args.mqtt_devices);
    let dev_ca = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/otaledger/tls/ca.pem"))
        .filter(|p| p.exists());
    args.mqtt_tls = cli
        .tls_ca
        .or(dev_ca)
        .map(|ca| otaledger_bench::mqtt_ingest::TlsListener {
            port: cli.mqtt_tls_port,
            ca: ca.display().to_string(),
        });
    if let Some(bin) = cli.otaledger {
        args.components = bin;
    }
    anyhow::ensure!(
        args.components.exists(),
        "{} is missing: build it with `cargo build --release -p otaledger-cli`, or name it with --otaledger",
        args.components.display()
    );
    run(&cfg, &args)
        .await
        .map_err(|e| anyhow::anyhow!(e))
        .context("benchmark")?;
    Ok(())
}

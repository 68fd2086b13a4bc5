//! `otaledger`: the event-sourced OTA update ledger's one command. Each command lives in a
//! module of `cmd/`; this file parses the command line, loads the configuration and dispatches.

mod cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use otaledger_cli::components::Component;
use otaledger_cli::replay::AuditTarget;
use otaledger_ledger::config::{Config, ENV_OVERRIDES};
use otaledger_ledger::shutdown::Shutdown;

use cmd::export::ExportFormat;
use cmd::rebuild::{RebuildArgs, VerifyArgs};
use cmd::replay::ReplayArgs;
use cmd::simulate::SimArgs;

#[derive(Debug, Parser)]
#[command(name = "otaledger", version, about = "Event-sourced over-the-air update ledger for IoT fleets",
    long_about = "Event-sourced over-the-air update ledger for IoT fleets.\n\n\
        Kafka holds the ledger of record (ota.device-events, ota.rollout-events, ota.device-commands, \
        ota.access-events, \
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
    s.push_str("  RUST_LOG                     log filter, e.g. info or otaledger_ledger=debug");
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
    Rebuild(RebuildArgs),
    /// Rebuild every projection into a shadow schema up to the live position and compare it
    /// with the live one (row counts and per-row checksums); exits 1 when anything differs.
    Verify(VerifyArgs),
    /// Export every event of the ledger to an analytics format (incremental and crash-safe:
    /// a re-run continues where the last one stopped).
    Export {
        #[command(subcommand)]
        format: ExportFormat,
    },
    /// A readable timeline of a device or a rollout, explained from the ledger alone.
    Audit {
        #[command(subcommand)]
        target: AuditTarget,
    },
    /// Read the ledger back (every schema version), filter it and print it as JSON lines or a
    /// table; a progress line on a terminal, none when piped.
    Replay(ReplayArgs),
    /// API tokens: create (printed once), list, revoke. Every change is an event in
    /// ota.access-events (`otaledger audit access`).
    Token {
        #[command(subcommand)]
        command: cmd::access::TokenCommand,
    },
    /// Device credentials: provision from a file (printed once), revoke.
    Devices {
        #[command(subcommand)]
        command: cmd::access::DevicesCommand,
    },
    /// Edge gateway credentials: provision (each its own RabbitMQ user), revoke.
    Gateways {
        #[command(subcommand)]
        command: cmd::access::GatewaysCommand,
    },
    /// What the entrances and the consumers refused (`ota.dead-letters`): list it, and re-drive
    /// the entrances' refusals into the ledger once their cause is fixed.
    DeadLetters {
        #[command(subcommand)]
        command: cmd::dead_letters::DeadLettersCommand,
    },
    /// Firmware artifacts in the store: push a file (stored under its SHA-256) or list them.
    Artifact {
        #[command(subcommand)]
        command: cmd::artifact::ArtifactCommand,
    },
    /// The image repository's offline keys (TUF, ADR 0038): generate them and the first root,
    /// rotate the root key. Run where the keys are kept, not on the server.
    Keys {
        #[command(subcommand)]
        command: cmd::keys::KeysCommand,
    },
    /// Releases: sign the targets metadata that publishes one, with the offline release key.
    Release {
        #[command(subcommand)]
        command: cmd::keys::ReleaseCommand,
    },
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
    // Boxed: the commands' futures together are large, and this runs once per process.
    match Box::pin(dispatch(cli.command, cfg, &shutdown)).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "otaledger failed");
            eprintln!("otaledger: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command, cfg: Config, shutdown: &Shutdown) -> anyhow::Result<()> {
    match command {
        Command::Init => otaledger_cli::components::prepare(&cfg)
            .await
            .context("creating topics and tables"),
        Command::Run { component } => cmd::stack::run(cfg, component, shutdown)
            .await
            .with_context(|| format!("running {}", component.name())),
        Command::Up { simulate, sim } => cmd::stack::up(&cfg, simulate, &sim, shutdown).await,
        Command::Simulate { sim } => cmd::simulate::run(&sim, &cfg, shutdown).await,
        Command::Rebuild(args) => cmd::rebuild::rebuild(&cfg, args).await.context("rebuild"),
        Command::Verify(args) => cmd::rebuild::verify(&cfg, &args).await.context("verify"),
        Command::Export { format } => cmd::export::run(&cfg, format, shutdown)
            .await
            .context("export"),
        Command::Audit { target } => cmd::replay::audit(&cfg, &target).await.context("audit"),
        Command::Replay(args) => cmd::replay::replay(&cfg, args).await.context("replay"),
        Command::Token { command } => cmd::access::token(&cfg, command).await.context("token"),
        Command::Devices { command } => {
            cmd::access::devices(&cfg, command).await.context("devices")
        }
        Command::Gateways { command } => cmd::access::gateways(&cfg, command)
            .await
            .context("gateways"),
        Command::DeadLetters { command } => cmd::dead_letters::run(&cfg, command)
            .await
            .context("dead-letters"),
        Command::Artifact { command } => {
            cmd::artifact::run(&cfg, command).await.context("artifact")
        }
        Command::Keys { command } => cmd::keys::keys(&cfg, command).await.context("keys"),
        Command::Release { command } => cmd::keys::release(command).context("release"),
    }
}

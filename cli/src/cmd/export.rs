//! `otaledger export parquet`: every event into Parquet files, incrementally.

use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;
use otaledger_cli::export::{export, ExportArgs};
use otaledger_ledger::config::Config;
use otaledger_ledger::shutdown::Shutdown;

#[derive(Debug, Subcommand)]
pub enum ExportFormat {
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

pub async fn run(cfg: &Config, format: ExportFormat, shutdown: &Shutdown) -> anyhow::Result<()> {
    let ExportFormat::Parquet {
        out,
        follow,
        segment_events,
        flush_seconds,
    } = format;
    let args = ExportArgs {
        out,
        follow,
        segment_events: segment_events.max(1),
        flush_every: Duration::from_secs(flush_seconds.max(1)),
        idle: Duration::from_secs(2),
        stop: Some(shutdown.signal()),
    };
    let stats = export(&cfg.kafka, &args).await?;
    #[allow(clippy::cast_precision_loss)]
    let rate = stats.events as f64 / stats.elapsed.as_secs_f64().max(0.001);
    println!(
        "exported {} events in {} segments ({} files) in {:.1} s ({rate:.0} events/s); {} undecodable records skipped",
        stats.events,
        stats.segments,
        stats.files,
        stats.elapsed.as_secs_f64(),
        stats.undecodable
    );
    Ok(())
}

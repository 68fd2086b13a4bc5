//! `otaledger rebuild` and `otaledger verify`: projections folded again from the ledger.

use clap::Args;
use otaledger_cli::{rebuild, replay};
use otaledger_ledger::config::Config;

#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// Apply only events that occurred at or before this RFC 3339 time (a snapshot).
    #[arg(long)]
    until: Option<String>,
    /// The snapshot's schema name (with --until; default <schema>_asof_<time>).
    #[arg(long)]
    into: Option<String>,
    /// Keep the replaced projections in a schema <schema>_old_<stamp>.
    #[arg(long)]
    keep_old: bool,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Keep the shadow schema for inspection.
    #[arg(long)]
    keep_shadow: bool,
}

pub async fn rebuild(cfg: &Config, args: RebuildArgs) -> anyhow::Result<()> {
    let until = args
        .until
        .as_deref()
        .map(|t| {
            replay::parse_time(t)
                .map(|m| chrono::DateTime::from_timestamp_micros(m).unwrap_or_default())
        })
        .transpose()?;
    rebuild::rebuild(cfg, until, args.into, args.keep_old).await
}

pub async fn verify(cfg: &Config, args: &VerifyArgs) -> anyhow::Result<()> {
    let differences = rebuild::verify(cfg, args.keep_shadow).await?;
    anyhow::ensure!(
        differences == 0,
        "{differences} differences between the live projections and the ledger"
    );
    Ok(())
}

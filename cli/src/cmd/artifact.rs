//! `otaledger artifact push|list`: firmware into and out of the artifact store (ADR 0037),
//! where the configuration says it is (a directory or an S3 bucket), for scripts; elsewhere,
//! `POST /v1/artifacts` with an operator token does the same over HTTP.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;

use otaledger_domain::digest::Sha256;
use otaledger_ledger::config::Config;

#[derive(Debug, clap::Subcommand)]
pub enum ArtifactCommand {
    /// Store a file under its SHA-256 (kept once, written atomically) and print
    /// `{"sha256", "length", "created"}`; a rollout's release names the digest and the length.
    Push {
        file: PathBuf,
        /// Refuse the file unless its SHA-256 is this one (64 hexadecimal digits).
        #[arg(long)]
        sha256: Option<Sha256>,
    },
    /// One line per artifact: its SHA-256 and its length in bytes.
    List,
}

pub async fn run(cfg: &Config, command: ArtifactCommand) -> anyhow::Result<()> {
    let store = otaledger_cli::components::open_artifact_store(&cfg.artifacts).await?;
    let mut out = std::io::stdout().lock();
    match command {
        ArtifactCommand::Push { file, sha256 } => {
            let mut reader = tokio::fs::File::open(&file)
                .await
                .with_context(|| format!("opening {}", file.display()))?;
            let stored = store
                .put(&mut reader, cfg.artifacts.max_bytes, sha256.as_ref())
                .await
                .with_context(|| format!("storing {}", file.display()))?;
            writeln!(
                out,
                "{}",
                serde_json::json!({
                    "sha256": stored.sha256.as_str(),
                    "length": stored.length,
                    "created": stored.created,
                })
            )?;
        }
        ArtifactCommand::List => {
            for (sha256, length) in store.list().await? {
                writeln!(out, "{sha256} {length}")?;
            }
        }
    }
    Ok(())
}

//! `otaledger replay` and `otaledger audit`: the ledger read back.

use std::time::Duration;

use clap::Args;
use otaledger_cli::replay::{self, AuditTarget, Filter, Format};
use otaledger_domain::EventType;
use otaledger_ledger::config::Config;

#[derive(Debug, Args)]
pub struct ReplayArgs {
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
    format: Format,
}

pub async fn replay(cfg: &Config, args: ReplayArgs) -> anyhow::Result<()> {
    let topics = cfg.kafka.topics();
    let names = if args.topic.is_empty() {
        vec![
            "device-events".to_owned(),
            "rollout-events".to_owned(),
            "device-commands".to_owned(),
        ]
    } else {
        args.topic
    };
    let mut filter = Filter {
        from_offset: args.from_offset,
        device: args.device,
        rollout: args.rollout,
        idle: Duration::from_secs(2),
        ..Filter::default()
    };
    for name in names {
        filter.topics.push(match name.as_str() {
            "device-events" => topics.device_events.clone(),
            "rollout-events" => topics.rollout_events.clone(),
            "device-commands" => topics.device_commands.clone(),
            "dead-letters" => anyhow::bail!(
                "dead letters are raw bytes, not events: read them with a Kafka client"
            ),
            other => anyhow::bail!(
                "unknown topic {other:?}: use device-events, rollout-events or device-commands"
            ),
        });
    }
    for t in args.types {
        let Some(event_type) = EventType::from_name(&t) else {
            anyhow::bail!("unknown event type {t:?}");
        };
        filter.types.push(event_type);
    }
    filter.since = args.since.as_deref().map(replay::parse_time).transpose()?;
    filter.until = args.until.as_deref().map(replay::parse_time).transpose()?;
    let stats = replay::replay(
        &cfg.kafka,
        &filter,
        args.format,
        &mut std::io::stdout().lock(),
    )
    .await?;
    tracing::info!(?stats, "replay done");
    Ok(())
}

pub async fn audit(cfg: &Config, target: &AuditTarget) -> anyhow::Result<()> {
    let lines = replay::audit(&cfg.kafka, target, Duration::from_secs(2)).await?;
    for line in lines {
        println!("{}  {}", replay::rfc3339(line.at), line.text);
    }
    Ok(())
}

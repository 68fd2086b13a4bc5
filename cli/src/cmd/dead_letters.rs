//! `otaledger dead-letters list|replay`: what the entrances and the consumers refused, read back
//! from `ota.dead-letters`, and re-driven into the ledger once the cause is fixed.

use std::collections::BTreeMap;
use std::io::Write as _;

use anyhow::Context as _;
use otaledger_ledger::config::Config;
use otaledger_ledger::dead_letters::{read_all, redrive, DeadLetter};
use otaledger_ledger::kafka::EventProducer;

/// Which dead letters a command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Filter {
    /// Only those refused for this reason (`invalid_field`, `payload_too_large`, …).
    #[arg(long)]
    reason: Option<String>,
    /// Only those refused by this entrance (`mqtt`, `amqp`, `http`) or consumer (`projector`,
    /// `saga`, …).
    #[arg(long)]
    by: Option<String>,
}

impl Filter {
    fn takes(&self, d: &DeadLetter) -> bool {
        self.reason.as_deref().is_none_or(|r| d.reason() == r)
            && self.by.as_deref().is_none_or(|b| d.who() == b)
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum DeadLettersCommand {
    /// One line per dead letter, oldest first in each partition: where it sits, who refused
    /// it and why, its key, its size, and the error.
    List {
        #[command(flatten)]
        filter: Filter,
        /// At most this many (the newest are left out).
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Read the entrances' dead letters again by today's rules and append those that pass to
    /// the ledger (after a fix, or a limit raised). Each gets an id derived from where the dead
    /// letter sits, so replaying twice appends the same events, which consumers take once.
    /// Never re-driven: refusals of authority (`unauthorized`), messages kept only in part,
    /// whole gateway batches that did not read, and records of the ledger a consumer could not
    /// apply (they are still in the ledger: fix the cause and run `otaledger rebuild`).
    Replay {
        #[command(flatten)]
        filter: Filter,
        /// Say what would be re-driven, append nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

pub async fn run(cfg: &Config, command: DeadLettersCommand) -> anyhow::Result<()> {
    let all = read_all(&cfg.kafka)
        .await
        .context("reading the dead letters")?;
    match command {
        DeadLettersCommand::List { filter, limit } => {
            let mut out = std::io::stdout().lock();
            let taken: Vec<&DeadLetter> = all.iter().filter(|d| filter.takes(d)).collect();
            for d in taken.iter().take(limit) {
                let size = match d.header("dlq-truncated-from") {
                    Some(whole) => format!("{}/{whole}B", d.payload.len()),
                    None => format!("{}B", d.payload.len()),
                };
                writeln!(
                    out,
                    "{}:{}\t{}\t{}\t{}\t{}\t{}",
                    d.partition,
                    d.offset,
                    d.who(),
                    d.reason(),
                    String::from_utf8_lossy(&d.key),
                    size,
                    d.header("dlq-error").unwrap_or_default()
                )?;
            }
            eprintln!(
                "{} dead letter(s){}",
                taken.len(),
                if taken.len() > limit {
                    format!(", the first {limit} shown")
                } else {
                    String::new()
                }
            );
        }
        DeadLettersCommand::Replay { filter, dry_run } => {
            let topic = cfg.kafka.topics().dead_letters;
            let producer = (!dry_run)
                .then(|| EventProducer::new(&cfg.kafka))
                .transpose()
                .context("creating the Kafka producer")?;
            let (mut redriven, mut refused) = (0usize, BTreeMap::<String, usize>::new());
            for d in all.iter().filter(|d| filter.takes(d)) {
                match redrive(d, &cfg.mqtt, &topic) {
                    Ok(event) => {
                        if let Some(p) = &producer {
                            p.append(&event).await.with_context(|| {
                                format!("appending the event of {}:{}", d.partition, d.offset)
                            })?;
                        }
                        println!(
                            "{}:{}\t{}\t{}",
                            d.partition,
                            d.offset,
                            if dry_run { "would append" } else { "appended" },
                            event.meta.event_id
                        );
                        redriven += 1;
                    }
                    Err(why) => {
                        // The reason without its detail, so the summary groups alike ones.
                        let class = why.split(':').next().unwrap_or_default().to_owned();
                        *refused.entry(class).or_default() += 1;
                    }
                }
            }
            eprintln!(
                "{} re-driven{}",
                redriven,
                if dry_run { " (dry run)" } else { "" }
            );
            for (why, n) in refused {
                eprintln!("{n} not re-driven: {why}");
            }
        }
    }
    Ok(())
}

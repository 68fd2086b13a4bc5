//! `otaledger token …` and `otaledger devices …`: issuing and revoking access from where the
//! database and Kafka are reachable (the trust root: the first admin token comes from here).
//! Secrets are printed once, to stdout, and never logged.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use chrono::Utc;
use futures_util::StreamExt as _;
use otaledger_domain::access::Role;
use otaledger_ledger::config::Config;
use otaledger_ledger::kafka::EventProducer;
use otaledger_ledger::mqtt_admin::{AdminError, MqttAdmin};

/// Devices provisioned at once by `devices provision`.
const PROVISION_CONCURRENCY: usize = 16;

/// Who issues and revokes from the command line, as recorded in the ledger.
fn actor() -> String {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}")
}

async fn store(cfg: &Config) -> anyhow::Result<(sqlx::PgPool, EventProducer)> {
    otaledger_cli::components::prepare(cfg)
        .await
        .context("creating topics and tables")?;
    let pool = otaledger_ledger::db::pool(&cfg.database.url, &cfg.database.schema, 8)
        .await
        .context("connecting to PostgreSQL")?;
    let producer = EventProducer::new(&cfg.kafka).context("creating the Kafka producer")?;
    Ok((pool, producer))
}

/// The broker's admin login, to add and remove device logins (ADR 0026); `None`, said loudly,
/// when none is configured.
fn broker(cfg: &Config) -> anyhow::Result<Option<MqttAdmin>> {
    match MqttAdmin::connect(&cfg.mqtt) {
        Ok(admin) => Ok(Some(admin)),
        Err(AdminError::NotConfigured) => {
            tracing::warn!(
                "no MQTT admin login (mqtt.admin_username, mqtt.admin_password): device logins \
                 are not added to or removed from the broker; devices can report over HTTP only"
            );
            Ok(None)
        }
        Err(e) => Err(e).context("connecting to the MQTT broker as its admin"),
    }
}

/// API tokens.
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Issue a token and print it once (keep it: only its hash is stored).
    Create {
        /// Who holds it; recorded as the actor of everything done with it.
        #[arg(long)]
        name: String,
        /// viewer reads; operator also starts, pauses, resumes and aborts rollouts; approver
        /// also approves; admin also manages tokens and devices.
        #[arg(long, value_parser = ["viewer", "operator", "approver", "admin"])]
        role: String,
        /// Lifetime, e.g. 90d, 12h, 30m, 45s; none: until revoked.
        #[arg(long)]
        expires: Option<String>,
    },
    /// List tokens and device credentials (never their secrets).
    List {
        /// Only those that are neither revoked nor expired.
        #[arg(long)]
        live: bool,
    },
    /// Revoke the live token of a name (every API instance refuses it within a second).
    Revoke { name: String },
}

/// Device credentials.
#[derive(Debug, clap::Subcommand)]
pub enum DevicesCommand {
    /// Give devices their credentials: FILE has one device id per line (a CSV whose first
    /// column is the id; a `device_id` header is skipped). Prints `device_id,token` lines once.
    Provision {
        #[arg(long = "from")]
        from: PathBuf,
        /// Revoke a device's live credential (and MQTT login) first instead of refusing it.
        #[arg(long)]
        replace: bool,
    },
    /// Revoke a device's credential.
    Revoke { device_id: String },
}

/// `90d`, `12h`, `30m`, `45s` as seconds.
fn seconds(text: &str) -> anyhow::Result<i64> {
    let (n, unit) = text.split_at(text.len().saturating_sub(1));
    let n: i64 = n
        .parse()
        .with_context(|| format!("{text:?} is not a duration like 90d, 12h, 30m or 45s"))?;
    let scale = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        "s" => 1,
        _ => bail!("{text:?} is not a duration like 90d, 12h, 30m or 45s"),
    };
    if n <= 0 {
        bail!("a lifetime must be positive");
    }
    n.checked_mul(scale).context("lifetime out of range")
}

pub async fn token(cfg: &Config, command: TokenCommand) -> anyhow::Result<()> {
    let (pool, producer) = store(cfg).await?;
    match command {
        TokenCommand::Create {
            name,
            role,
            expires,
        } => {
            let role: Role = role.parse()?;
            let expires_at = expires
                .as_deref()
                .map(seconds)
                .transpose()?
                .map(|s| Utc::now() + chrono::Duration::seconds(s));
            let issued =
                otaledger_api::tokens::issue(&pool, &producer, &name, role, expires_at, &actor())
                    .await
                    .context("issuing the token")?;
            eprintln!(
                "issued {role} token {:?} (id {}); it is shown once:",
                issued.row.name, issued.row.token_id
            );
            println!("{}", issued.token);
        }
        TokenCommand::List { live } => {
            let rows = otaledger_projections::access::list(&pool, live).await?;
            println!(
                "{:<16}  {:<24}  {:<8}  {:<20}  state",
                "id", "name", "role", "issued by"
            );
            for r in rows {
                let state = match (r.revoked_at, r.expires_at) {
                    (Some(at), _) => format!("revoked {}", at.to_rfc3339()),
                    (None, Some(at)) if at <= Utc::now() => format!("expired {}", at.to_rfc3339()),
                    (None, Some(at)) => format!("live until {}", at.to_rfc3339()),
                    (None, None) => "live".into(),
                };
                println!(
                    "{:<16}  {:<24}  {:<8}  {:<20}  {state}",
                    r.token_id, r.name, r.role, r.issued_by
                );
            }
        }
        TokenCommand::Revoke { name } => revoke(cfg, &pool, &producer, &name).await?,
    }
    Ok(())
}

async fn revoke(
    cfg: &Config,
    pool: &sqlx::PgPool,
    producer: &EventProducer,
    name: &str,
) -> anyhow::Result<()> {
    let broker = broker(cfg)?;
    match otaledger_api::tokens::revoke_named(pool, producer, broker.as_ref(), name, &actor())
        .await?
    {
        Some(r) => eprintln!("revoked {:?} (id {})", r.name, r.token_id),
        None => bail!("no live token named {name:?}"),
    }
    Ok(())
}

pub async fn devices(cfg: &Config, command: DevicesCommand) -> anyhow::Result<()> {
    let (pool, producer) = store(cfg).await?;
    match command {
        DevicesCommand::Provision { from, replace } => {
            let text = std::fs::read_to_string(&from)
                .with_context(|| format!("reading {}", from.display()))?;
            let ids: Vec<&str> = text
                .lines()
                .filter_map(|l| l.split(',').next())
                .map(str::trim)
                .filter(|id| !id.is_empty() && *id != "device_id")
                .collect();
            for id in &ids {
                otaledger_domain::ids::validate_device_id(id)
                    .with_context(|| format!("{}: device {id:?}", from.display()))?;
            }
            let broker = broker(cfg)?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "device_id,token")?;
            let started = std::time::Instant::now();
            // Several at once: each waits on PostgreSQL, Kafka's acknowledgement and the
            // broker's answer, which overlap (the producer batches, the admin connection
            // carries many requests).
            let actor = actor();
            let mut provisioned = futures_util::stream::iter(&ids)
                .map(|id| {
                    let (pool, producer, broker, actor) =
                        (&pool, &producer, broker.as_ref(), &actor);
                    async move {
                        otaledger_api::tokens::provision_device(
                            pool, producer, broker, id, actor, replace,
                        )
                        .await
                        .with_context(|| format!("provisioning {id}"))
                        .map(|issued| (*id, issued.token))
                    }
                })
                .buffer_unordered(PROVISION_CONCURRENCY);
            let mut i = 0;
            while let Some(done) = provisioned.next().await {
                let (id, token) = done?;
                writeln!(out, "{id},{token}")?;
                i += 1;
                if i % 500 == 0 {
                    eprintln!(
                        "provisioned {} of {} devices ({:.0?})",
                        i,
                        ids.len(),
                        started.elapsed()
                    );
                }
            }
            eprintln!(
                "provisioned {} devices in {:.1?}{}",
                ids.len(),
                started.elapsed(),
                if broker.is_some() {
                    ", with their MQTT logins"
                } else {
                    ""
                }
            );
        }
        DevicesCommand::Revoke { device_id } => {
            revoke(cfg, &pool, &producer, &device_id).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::seconds;

    #[test]
    fn lifetimes_read_in_days_hours_minutes_and_seconds() {
        assert_eq!(seconds("90d").unwrap(), 90 * 86_400);
        assert_eq!(seconds("12h").unwrap(), 12 * 3_600);
        assert_eq!(seconds("30m").unwrap(), 1_800);
        assert_eq!(seconds("1s").unwrap(), 1);
        for bad in ["", "d", "0d", "-1h", "5w", "1.5h", "h5"] {
            assert!(seconds(bad).is_err(), "{bad}");
        }
    }
}

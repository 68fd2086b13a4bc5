//! `otaledger token …`, `otaledger devices …` and `otaledger gateways …`: issuing and revoking
//! access from where the
//! database and Kafka are reachable (the trust root: the first admin token comes from here).
//! Secrets are printed once, to stdout, and never logged.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context as _};
use chrono::Utc;
use futures_util::StreamExt as _;
use otaledger_api::tokens::Brokers;
use otaledger_domain::access::Role;
use otaledger_ledger::amqp_admin::RabbitAdmin;
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

/// RabbitMQ's management login, to create and delete gateway users (ADR 0029); `None` when
/// none is configured.
fn rabbit(cfg: &Config) -> anyhow::Result<Option<RabbitAdmin>> {
    match RabbitAdmin::new(&cfg.amqp) {
        Ok(admin) => Ok(Some(admin)),
        Err(otaledger_ledger::amqp_admin::AdminError::NotConfigured) => Ok(None),
        Err(e) => Err(e).context("reading amqp.admin_url"),
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
        /// Confine the token to the devices a selector selects, e.g.
        /// `site=berlin-01,site=munich-02,tag=prod` (keys model, site, tag, version, device;
        /// a repeated key means any of its values; tags all must be carried). Its rollouts
        /// reach only those devices, it sees only those devices, and routes that answer for
        /// the whole fleet refuse it. Not for admin tokens.
        #[arg(long, value_name = "SELECTOR")]
        scope: Option<String>,
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
    /// Give devices their credentials: FILE has one device per line, `device_id` or
    /// `device_id,gateway_id` (a device behind a provisioned gateway: only that gateway may
    /// report for it); a header line is skipped. Prints `device_id,token,gateway_id` lines once.
    Provision {
        #[arg(long = "from")]
        from: PathBuf,
        /// Revoke a device's live credential (and MQTT login) first instead of refusing it.
        #[arg(long)]
        replace: bool,
    },
    /// Revoke a device's credential.
    Revoke { device_id: String },
    /// List the admission requests of devices that were not provisioned (with
    /// `admission.pending` on, ADR 0032), oldest first, as `device_id,fingerprint,model,state,
    /// requested_at` lines.
    Pending {
        /// Also the decided ones (accepted, rejected, claimed).
        #[arg(long)]
        all: bool,
    },
    /// Accept a device's admission request. FINGERPRINT must be the one the device itself
    /// shows (its label, its installer): a request with another fingerprint for the same id
    /// is someone else's. The device then claims its credential with its secret, once.
    Accept {
        device_id: String,
        fingerprint: String,
    },
    /// Reject a device's admission request.
    Reject {
        device_id: String,
        fingerprint: String,
    },
}

/// Edge gateway credentials: each gateway is its own RabbitMQ user (ADR 0029).
#[derive(Debug, clap::Subcommand)]
pub enum GatewaysCommand {
    /// Give gateways their credentials and RabbitMQ users (needs amqp.admin_url, the
    /// management API's administrator login). Prints `gateway_id,token` lines once; the token
    /// is the gateway's RabbitMQ password.
    Provision {
        /// Gateway ids.
        ids: Vec<String>,
        /// Also every gateway id in FILE, one per line (a header line is skipped).
        #[arg(long = "from")]
        from: Option<PathBuf>,
        /// Revoke a gateway's live credential (and RabbitMQ user) first instead of refusing it.
        #[arg(long)]
        replace: bool,
    },
    /// Revoke a gateway's credential: its RabbitMQ user is deleted and its connections closed.
    Revoke { gateway_id: String },
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
    n.checked_mul(scale)
        .filter(|s| *s <= 10 * 366 * 86_400)
        .context("a lifetime is at most ten years")
}

pub async fn token(cfg: &Config, command: TokenCommand) -> anyhow::Result<()> {
    let (pool, producer) = store(cfg).await?;
    match command {
        TokenCommand::Create {
            name,
            role,
            expires,
            scope,
        } => {
            let role: Role = role.parse()?;
            if name.trim().is_empty() || name.chars().count() > 128 || name.contains('\0') {
                bail!("--name must be 1 to 128 characters, not blank");
            }
            let scope = scope
                .as_deref()
                .map(otaledger_domain::access::scope::parse)
                .transpose()
                .map_err(anyhow::Error::msg)
                .context("--scope")?;
            if scope.is_some() && role == Role::Admin {
                bail!("an admin manages tokens and devices fleet-wide, so it cannot be scoped");
            }
            let expires_at = expires
                .as_deref()
                .map(seconds)
                .transpose()?
                .map(|s| Utc::now() + chrono::Duration::seconds(s));
            let issued = otaledger_api::tokens::issue(
                &pool,
                &producer,
                &name,
                role,
                expires_at,
                &actor(),
                scope.as_ref(),
            )
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
    let (mqtt, amqp) = (broker(cfg)?, rabbit(cfg)?);
    let brokers = Brokers {
        mqtt: mqtt.as_ref(),
        amqp: amqp.as_ref(),
    };
    match otaledger_api::tokens::revoke_named(pool, producer, brokers, name, &actor()).await? {
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
            let ids: Vec<(&str, Option<&str>)> = text
                .lines()
                .map(|l| {
                    let mut cols = l.split(',').map(str::trim);
                    let id = cols.next().unwrap_or_default();
                    (id, cols.next().filter(|g| !g.is_empty()))
                })
                .filter(|(id, _)| !id.is_empty() && *id != "device_id")
                .collect();
            for (id, gateway) in &ids {
                otaledger_domain::ids::validate_device_id(id)
                    .with_context(|| format!("{}: device {id:?}", from.display()))?;
                if let Some(g) = gateway {
                    otaledger_domain::ids::validate_device_id(g)
                        .with_context(|| format!("{}: gateway {g:?}", from.display()))?;
                }
            }
            let broker = broker(cfg)?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "device_id,token,gateway_id")?;
            let started = std::time::Instant::now();
            // Several at once: each waits on PostgreSQL, Kafka's acknowledgement and the
            // broker's answer, which overlap (the producer batches, the admin connection
            // carries many requests).
            let actor = actor();
            let mut provisioned = futures_util::stream::iter(&ids)
                .map(|(id, gateway)| {
                    let brokers = Brokers {
                        mqtt: broker.as_ref(),
                        amqp: None,
                    };
                    let (pool, producer, actor) = (&pool, &producer, &actor);
                    async move {
                        otaledger_api::tokens::provision_device(
                            pool, producer, brokers, id, *gateway, actor, replace,
                        )
                        .await
                        .with_context(|| format!("provisioning {id}"))
                        .map(|issued| (*id, issued.token, gateway.unwrap_or_default()))
                    }
                })
                .buffer_unordered(PROVISION_CONCURRENCY);
            let mut i = 0;
            while let Some(done) = provisioned.next().await {
                let (id, token, gateway) = done?;
                writeln!(out, "{id},{token},{gateway}")?;
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
        DevicesCommand::Pending { all } => {
            let rows = otaledger_projections::admission::list(&pool, !all, i64::MAX).await?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "device_id,fingerprint,model,state,requested_at")?;
            for r in &rows {
                writeln!(
                    out,
                    "{},{},{},{},{}",
                    r.device_id,
                    r.fingerprint,
                    r.model.as_deref().unwrap_or_default(),
                    r.state,
                    r.requested_at.to_rfc3339()
                )?;
            }
            eprintln!("{} request(s)", rows.len());
        }
        DevicesCommand::Accept {
            device_id,
            fingerprint,
        } => decide(&pool, &producer, &device_id, &fingerprint, true).await?,
        DevicesCommand::Reject {
            device_id,
            fingerprint,
        } => decide(&pool, &producer, &device_id, &fingerprint, false).await?,
    }
    Ok(())
}

async fn decide(
    pool: &sqlx::PgPool,
    producer: &EventProducer,
    device: &str,
    fingerprint: &str,
    accept: bool,
) -> anyhow::Result<()> {
    let fingerprint = fingerprint.to_ascii_lowercase();
    let decided =
        otaledger_api::admission::decide(pool, producer, device, &fingerprint, accept, &actor())
            .await?;
    match decided {
        Some(r) => eprintln!(
            "{} the admission of {:?} (fingerprint {})",
            if accept { "accepted" } else { "rejected" },
            r.device_id,
            r.fingerprint
        ),
        None => bail!("no pending admission request of {device:?} with fingerprint {fingerprint}"),
    }
    Ok(())
}

pub async fn gateways(cfg: &Config, command: GatewaysCommand) -> anyhow::Result<()> {
    let (pool, producer) = store(cfg).await?;
    match command {
        GatewaysCommand::Provision { ids, from, replace } => {
            let text = match &from {
                Some(f) => std::fs::read_to_string(f)
                    .with_context(|| format!("reading {}", f.display()))?,
                None => String::new(),
            };
            let listed = text
                .lines()
                .filter_map(|l| l.split(',').next())
                .map(str::trim)
                .filter(|id| !id.is_empty() && *id != "gateway_id");
            let all: Vec<&str> = ids.iter().map(String::as_str).chain(listed).collect();
            for id in &all {
                otaledger_domain::ids::validate_device_id(id)
                    .with_context(|| format!("gateway {id:?}"))?;
            }
            let Some(rabbit) = rabbit(cfg)? else {
                bail!(
                    "gateways need RabbitMQ's management API: set amqp.admin_url (or \
                     OTALEDGER_AMQP_ADMIN_URL) to http://user:password@host:15672"
                );
            };
            let brokers = Brokers {
                mqtt: None,
                amqp: Some(&rabbit),
            };
            let mut out = std::io::stdout().lock();
            writeln!(out, "gateway_id,token")?;
            for id in &all {
                let issued = otaledger_api::tokens::provision_gateway(
                    &pool,
                    &producer,
                    brokers,
                    id,
                    &actor(),
                    replace,
                )
                .await
                .with_context(|| format!("provisioning gateway {id}"))?;
                writeln!(out, "{id},{}", issued.token)?;
            }
            eprintln!(
                "provisioned {} gateways, each its own RabbitMQ user",
                all.len()
            );
        }
        GatewaysCommand::Revoke { gateway_id } => {
            revoke(cfg, &pool, &producer, &gateway_id).await?;
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
        assert_eq!(seconds("3660d").unwrap(), 3660 * 86_400, "ten years");
        // Past ten years (and past what a timestamp holds: no panic in chrono).
        for bad in [
            "",
            "d",
            "0d",
            "-1h",
            "5w",
            "1.5h",
            "h5",
            "3661d",
            "9223372036854775807s",
        ] {
            assert!(seconds(bad).is_err(), "{bad}");
        }
    }
}

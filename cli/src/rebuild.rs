//! `otaledger rebuild` and `otaledger verify`: fold every projection again from offset 0 into a
//! shadow schema, then swap it in, diff it against the live schema, or keep it as a snapshot.

use std::io::{IsTerminal, Write};

use otaledger_projections::rebuild::{self, Progress, RebuildPlan};

use otaledger_ledger::config::Config;

fn stamp() -> String {
    chrono::Utc::now().format("%Y%m%d%H%M%S").to_string()
}

/// A progress line on a terminal (none when piped), and a log line at the end.
fn progress(what: &'static str) -> impl FnMut(Progress) {
    let tty = std::io::stderr().is_terminal();
    move |p: Progress| {
        if tty {
            #[allow(clippy::cast_precision_loss)]
            let rate = p.applied_offsets as f64 / p.elapsed.as_secs_f64().max(0.001);
            let pct = if p.target_offsets == 0 {
                100.0
            } else {
                #[allow(clippy::cast_precision_loss)]
                let v = p.applied_offsets as f64 * 100.0 / p.target_offsets as f64;
                v
            };
            let mut err = std::io::stderr().lock();
            let _ = write!(
                err,
                "\r{what}: {}/{} events ({pct:5.1}%), {rate:.0} events/s, {:.1} s   ",
                p.applied_offsets,
                p.target_offsets,
                p.elapsed.as_secs_f64()
            );
            let _ = err.flush();
        }
    }
}

fn done_line(what: &str, p: &Progress) {
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
    #[allow(clippy::cast_precision_loss)]
    let rate = p.applied_offsets as f64 / p.elapsed.as_secs_f64().max(0.001);
    // Each projection reads its topic whole: a ledger event read by two projections counts twice.
    println!(
        "{what}: {} events applied across the projections in {:.1} s ({rate:.0} events/s)",
        p.applied_offsets,
        p.elapsed.as_secs_f64()
    );
}

async fn live_pool(cfg: &Config) -> anyhow::Result<sqlx::PgPool> {
    let pool = otaledger_projections::migrations::migrated_pool(
        &cfg.database.url,
        &cfg.database.schema,
        2,
    )
    .await?;
    // A live schema no projector has run on yet still has (empty) positions to compare and swap.
    otaledger_ledger::db::create_if_missing(&pool, otaledger_ledger::ownership::OFFSETS_DDL)
        .await?;
    Ok(pool)
}

/// Rebuilds every projection and swaps it in; with `until`, builds a snapshot instead.
pub async fn rebuild(
    cfg: &Config,
    until: Option<chrono::DateTime<chrono::Utc>>,
    into: Option<String>,
    keep_old: bool,
) -> anyhow::Result<()> {
    let live = cfg.database.schema.clone();
    let pool = live_pool(cfg).await?;
    let shadow = match (&until, into) {
        (Some(_), Some(name)) => name,
        (Some(t), None) => format!("{live}_asof_{}", t.format("%Y%m%d%H%M%S")),
        (None, Some(_)) => anyhow::bail!("--into names a snapshot: use it with --until"),
        (None, None) => format!("{live}_rebuild_{}", stamp()),
    };
    if shadow == live {
        anyhow::bail!("the shadow schema cannot be the live schema");
    }
    drop_schema(&pool, &shadow).await?;
    let plan = RebuildPlan {
        database_url: cfg.database.url.clone(),
        kafka: cfg.kafka.clone(),
        shadow: shadow.clone(),
        until: until.map(|t| t.timestamp_micros()),
        stop_at: None,
    };
    let p = rebuild::build_shadow(&plan, progress("rebuild")).await?;
    done_line("rebuild", &p);
    if let Some(t) = until {
        rebuild::register_snapshot(&pool, &shadow, t).await?;
        println!("snapshot of the fleet as of {t} in schema {shadow}; ask GET /v1/fleet/summary?as_of=<time>");
        return Ok(());
    }
    let old = format!("{live}_old_{}", stamp());
    rebuild::swap(&pool, &live, &shadow, &old).await?;
    println!("swapped the rebuilt projections in for {live}");
    if keep_old {
        println!("the previous projections are kept in schema {old}");
    } else {
        drop_schema(&pool, &old).await?;
    }
    pool.close().await;
    Ok(())
}

async fn drop_schema(pool: &sqlx::PgPool, schema: &str) -> anyhow::Result<()> {
    otaledger_ledger::db::validate_schema(schema)?;
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .execute(pool)
        .await?;
    Ok(())
}

/// What was dead-lettered, by consumer (or, for what an entrance refused, its source) and
/// reason: events a projection left out are absent from the projections on both sides, so
/// they are reported here, not as differences.
async fn print_dead_letters(cfg: &Config) -> anyhow::Result<()> {
    let tally = otaledger_ledger::dead_letters::read_tally(&cfg.kafka).await?;
    if tally.is_empty() {
        println!("dead letters: none");
        return Ok(());
    }
    println!("dead letters ({}):", cfg.kafka.topics().dead_letters);
    for ((who, reason), n) in &tally {
        println!("  {who:<18} {reason:<22} {n:>8}");
    }
    Ok(())
}

/// Rebuilds into a shadow schema up to the live projections' positions and diffs the two.
/// Returns the number of differences (the command exits non-zero when there are any).
pub async fn verify(cfg: &Config, keep_shadow: bool) -> anyhow::Result<usize> {
    let live = cfg.database.schema.clone();
    let pool = live_pool(cfg).await?;
    let positions = rebuild::live_positions(&pool).await?;
    let shadow = format!("{live}_verify_{}", stamp());
    drop_schema(&pool, &shadow).await?;
    let plan = RebuildPlan {
        database_url: cfg.database.url.clone(),
        kafka: cfg.kafka.clone(),
        shadow: shadow.clone(),
        until: None,
        stop_at: Some(positions.clone()),
    };
    let p = rebuild::build_shadow(&plan, progress("verify")).await?;
    done_line("verify rebuild", &p);
    let c = rebuild::compare(&pool, &cfg.kafka, &live, &shadow, &positions, 50).await?;
    for (t, n, r) in &c.counts {
        let mark = if n == r { "" } else { "  <- differs" };
        println!("{t:<18} live {n:>10}  rebuilt {r:>10}{mark}");
    }
    if !c.moved.devices.is_empty() || !c.moved.rollouts.is_empty() {
        println!(
            "left out: {} device(s) and {} rollout(s) with events the live projections applied \
             during verify{}",
            c.moved.devices.len(),
            c.moved.rollouts.len(),
            if c.moved.devices.is_empty() {
                ""
            } else {
                "; fleet_counts checked against the live devices"
            }
        );
    }
    for d in &c.diffs {
        println!(
            "{} {}:\n  live:    {}\n  rebuilt: {}",
            d.table,
            d.key,
            d.live.as_deref().unwrap_or("(missing)"),
            d.rebuilt.as_deref().unwrap_or("(missing)")
        );
    }
    print_dead_letters(cfg).await?;
    let n = c.differences();
    if n == 0 {
        println!("verify: the live projections equal a rebuild from the ledger");
    } else {
        println!("verify: {} differing rows", c.diffs.len());
    }
    if !keep_shadow {
        drop_schema(&pool, &shadow).await?;
    }
    pool.close().await;
    Ok(n)
}

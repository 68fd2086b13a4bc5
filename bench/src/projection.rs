//! The projection scenario's runs: projector processes over a backlog until it is applied.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use otaledger_ledger::config::Config;

use crate::BoxError;

/// Projects the device-events topic into a fresh schema with one projector instance per member
/// (sharing the partitions), and returns the time until every partition reached `ends`.
/// Runs one projector process per member over the topic into `schema` until every partition
/// reached `ends`; resolves to the time taken and each process's peak RSS in MiB.
pub(crate) async fn project(
    cfg: &Config,
    schema: &str,
    members: &[&str],
    ends: &BTreeMap<i32, i64>,
    far_behind: bool,
    bin: &std::path::Path,
) -> Result<(Duration, Vec<f64>), BoxError> {
    let topic = cfg.kafka.topics().device_events;
    let pool =
        otaledger_projections::migrations::migrated_pool(&cfg.database.url, schema, 8).await?;
    otaledger_ledger::db::create_if_missing(&pool, otaledger_ledger::ownership::OFFSETS_DDL)
        .await?;
    // The bench's backlog is seconds old, not the minutes or hours of an outage: far behind, it
    // counts as far behind whatever its age; otherwise only live windows are used.
    let settings = std::env::temp_dir().join(format!("{schema}.toml"));
    std::fs::write(
        &settings,
        if far_behind {
            "[projector]\ndeep_fold_when_behind_ms = 0\n"
        } else {
            "[projector]\ndeep_fold_max_events = 0\n"
        },
    )?;
    let started = Instant::now();
    let mut processes = Vec::new();
    for member in members {
        let mut pc = cfg.clone();
        pc.database.schema = schema.to_owned();
        pc.projector.member = (*member).to_owned();
        processes.push(crate::process::ComponentProcess::start(
            bin,
            &pc,
            otaledger_cli::components::Component::Projector,
            Some(&settings),
        )?);
    }
    let outcome = loop {
        let done = otaledger_ledger::runner::committed_offsets(&pool, "projector", &topic).await?;
        if ends.iter().all(|(p, e)| done.get(p) >= Some(e)) {
            break Ok(started.elapsed());
        }
        if processes
            .iter_mut()
            .any(crate::process::ComponentProcess::exited)
            || started.elapsed() > Duration::from_secs(1800)
        {
            break Err("a projector stopped before catching up".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let rss = processes.iter().map(|p| p.peak_rss_mib()).collect();
    for p in processes {
        p.stop().await;
    }
    let _ = std::fs::remove_file(&settings);
    pool.close().await;
    outcome.map(|elapsed| (elapsed, rss))
}

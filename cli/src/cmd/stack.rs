//! `otaledger up`, `run` and `init`: the stack in one process, one component alone, or only
//! the topics and tables.

use otaledger_cli::components::{self, Component};
use otaledger_ledger::config::Config;
use otaledger_ledger::shutdown::Shutdown;
use otaledger_simulator as simulator;

use super::simulate::SimArgs;

/// Every component in one process, each restarted with backoff when it fails; with a
/// simulated fleet when asked.
pub async fn up(
    cfg: &Config,
    simulate: bool,
    sim: &SimArgs,
    shutdown: &Shutdown,
) -> anyhow::Result<()> {
    components::prepare(cfg).await?;
    tracing::info!(api = %format!("http://{}", cfg.http.listen), "otaledger is starting; \
        try GET /v1/fleet/summary, /v1/devices, /metrics, /openapi.json");
    let stack = components::supervise(Component::ALL.to_vec(), cfg.clone(), shutdown);
    if simulate {
        let sim_cfg = sim.to_config(cfg)?;
        let signal = shutdown.signal();
        tokio::spawn(async move {
            if let Err(e) = simulator::run(sim_cfg, signal).await {
                tracing::error!(error = %e, "simulator failed");
            }
        });
    }
    stack.await;
    Ok(())
}

/// One component alone, with its own `/metrics` unless it is the API (which serves them).
pub async fn run(cfg: Config, component: Component, shutdown: &Shutdown) -> anyhow::Result<()> {
    components::prepare(&cfg).await?;
    let metrics = if component == Component::Api {
        None
    } else {
        components::serve_metrics(&cfg, shutdown.signal()).await?
    };
    let result = match components::run(component, cfg, shutdown.signal()).await {
        // Stopped by SIGTERM while it waited (for a broker that is down): a clean stop.
        Err(e) if components::interrupted(&e) => {
            tracing::info!(reason = format!("{e:#}"), "stopped");
            Ok(())
        }
        other => other,
    };
    shutdown.trigger();
    if let Some(m) = metrics {
        let _ = m.await;
    }
    result
}

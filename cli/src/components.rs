//! The components `otaledger up` runs together and `otaledger run <component>` runs alone.

use std::time::Duration;

use otaledger_consumers::{Runner, RunnerConfig};
use otaledger_producers::kafka::{ensure_topics, EventProducer};
use otaledger_producers::shutdown::{Shutdown, ShutdownSignal};
use otaledger_projections::projector::FleetProjector;

use crate::config::Config;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Component {
    /// The HTTP API (fleet queries, ingest, /metrics, /openapi.json).
    Api,
    /// The fleet projector (ota.device-events to PostgreSQL).
    Projector,
    /// The MQTT bridge (devices to ota.device-events).
    MqttBridge,
    /// The AMQP bridge (gateway report batches to ota.device-events).
    AmqpBridge,
}

impl Component {
    pub const ALL: [Component; 4] = [
        Component::Api,
        Component::Projector,
        Component::MqttBridge,
        Component::AmqpBridge,
    ];

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Component::Api => "api",
            Component::Projector => "projector",
            Component::MqttBridge => "mqtt-bridge",
            Component::AmqpBridge => "amqp-bridge",
        }
    }
}

/// Creates topics, schema and tables that do not exist yet.
pub async fn prepare(cfg: &Config) -> Result<(), BoxError> {
    ensure_topics(&cfg.kafka).await?;
    let pool = otaledger_consumers::db::pool(&cfg.database.url, &cfg.database.schema, 2).await?;
    otaledger_projections::migrations::migrate(&pool).await?;
    pool.close().await;
    Ok(())
}

/// The fleet projector's runner settings for `schema`, as this instance `member`.
#[must_use]
pub fn projector_runner_config(cfg: &Config, schema: &str, member: &str) -> RunnerConfig {
    RunnerConfig {
        consumer: "projector".into(),
        topic: cfg.kafka.topics().device_events,
        database_url: cfg.database.url.clone(),
        schema: schema.to_owned(),
        member: member.to_owned(),
        batch_max: cfg.projector.batch_max,
        batch_wait: Duration::from_millis(cfg.projector.batch_wait_ms),
        rebalance_every: Duration::from_millis(cfg.projector.rebalance_ms),
        kafka: cfg.kafka.clone(),
    }
}

/// A pool on the configured schema, migrated.
async fn migrated_pool(cfg: &Config) -> Result<sqlx::PgPool, BoxError> {
    let db = &cfg.database;
    let pool = otaledger_consumers::db::pool(&db.url, &db.schema, db.max_connections).await?;
    otaledger_projections::migrations::migrate(&pool).await?;
    Ok(pool)
}

/// Runs one component until shutdown.
pub async fn run(
    component: Component,
    cfg: Config,
    shutdown: ShutdownSignal,
) -> Result<(), BoxError> {
    let producer = EventProducer::new(&cfg.kafka)?;
    let result = match component {
        Component::Api => run_api(&cfg, producer.clone(), shutdown).await,
        Component::Projector => run_projector(&cfg, producer.clone(), shutdown).await,
        Component::MqttBridge => {
            otaledger_producers::mqtt_bridge::run(cfg.mqtt.clone(), producer.clone(), shutdown)
                .await
                .map_err(Into::into)
        }
        Component::AmqpBridge => {
            otaledger_producers::amqp_bridge::run(cfg.amqp.clone(), producer.clone(), shutdown)
                .await
                .map_err(Into::into)
        }
    };
    let _ = producer.flush(Duration::from_secs(10));
    result
}

async fn run_projector(
    cfg: &Config,
    producer: EventProducer,
    shutdown: ShutdownSignal,
) -> Result<(), BoxError> {
    let pool = migrated_pool(cfg).await?;
    let runner_cfg = projector_runner_config(cfg, &cfg.database.schema, &cfg.member());
    Runner::new(runner_cfg, FleetProjector::new(), producer, pool)
        .run(shutdown)
        .await?;
    Ok(())
}

async fn run_api(
    cfg: &Config,
    producer: EventProducer,
    mut shutdown: ShutdownSignal,
) -> Result<(), BoxError> {
    let pool = migrated_pool(cfg).await?;
    let state =
        otaledger_api::AppState::new(pool, producer, cfg.kafka.clone(), cfg.offline_after())?;
    let listener = tokio::net::TcpListener::bind(&cfg.http.listen).await?;
    tracing::info!(listen = %listener.local_addr()?, "API listening");
    axum::serve(listener, otaledger_api::app(state))
        .with_graceful_shutdown(async move { shutdown.wait().await })
        .await?;
    Ok(())
}

/// Runs components together, restarting any that fails (with backoff) until shutdown.
pub async fn supervise(components: Vec<Component>, cfg: Config, shutdown: &Shutdown) {
    let mut tasks = Vec::new();
    for c in components {
        let cfg = cfg.clone();
        let mut signal = shutdown.signal();
        tasks.push(tokio::spawn(async move {
            let mut backoff = Duration::from_millis(500);
            loop {
                let started = tokio::time::Instant::now();
                match run(c, cfg.clone(), signal.clone()).await {
                    Ok(()) if signal.is_triggered() => break,
                    Ok(()) => tracing::warn!(component = c.name(), "component stopped; restarting"),
                    Err(e) => tracing::error!(component = c.name(), error = %e, "component failed; restarting"),
                }
                if started.elapsed() > Duration::from_secs(60) {
                    backoff = Duration::from_millis(500);
                }
                tokio::select! {
                    () = signal.wait() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

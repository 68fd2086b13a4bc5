//! The components `otaledger up` runs together and `otaledger run <component>` runs alone.

use anyhow::Context as _;
use std::time::Duration;

use otaledger_consumers::dispatcher::{Dispatcher, DispatcherConfig, DISPATCHER_DDL};
use otaledger_consumers::router::{Router, ROUTER_DDL};
use otaledger_consumers::saga::{Saga, SagaConfig};
use otaledger_ledger::kafka::{ensure_topics, EventProducer};
use otaledger_ledger::shutdown::{Shutdown, ShutdownSignal};
use otaledger_ledger::{FoldWindow, Runner, RunnerConfig};
use otaledger_projections::history::HistoryProjector;
use otaledger_projections::projector::FleetProjector;
use otaledger_projections::rollouts::RolloutProjector;

use otaledger_ledger::config::Config;

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
    /// The report router (rollout results and health heartbeats to ota.rollout-events).
    Router,
    /// The rollout saga (decisions to ota.rollout-events, commands to ota.device-commands).
    Saga,
    /// The command dispatcher (ota.device-commands to devices over MQTT, gateways over AMQP).
    Dispatcher,
    /// The rollout projector (ota.rollout-events to PostgreSQL).
    RolloutProjector,
    /// The device history projector (ota.device-events to each device's history).
    History,
}

impl Component {
    pub const ALL: [Component; 9] = [
        Component::Api,
        Component::Projector,
        Component::MqttBridge,
        Component::AmqpBridge,
        Component::Router,
        Component::Saga,
        Component::Dispatcher,
        Component::RolloutProjector,
        Component::History,
    ];

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Component::Api => "api",
            Component::Projector => "projector",
            Component::MqttBridge => "mqtt-bridge",
            Component::AmqpBridge => "amqp-bridge",
            Component::Router => "router",
            Component::Saga => "saga",
            Component::Dispatcher => "dispatcher",
            Component::RolloutProjector => "rollout-projector",
            Component::History => "history",
        }
    }
}

/// Creates topics, schema and tables that do not exist yet.
pub async fn prepare(cfg: &Config) -> anyhow::Result<()> {
    ensure_topics(&cfg.kafka).await?;
    let pool = otaledger_projections::migrations::migrated_pool(
        &cfg.database.url,
        &cfg.database.schema,
        2,
    )
    .await?;
    pool.close().await;
    Ok(())
}

/// The fleet projector's runner settings for `schema`, as this instance `member`.
#[must_use]
pub fn projector_runner_config(cfg: &Config, schema: &str, member: &str) -> RunnerConfig {
    let p = &cfg.projector;
    RunnerConfig {
        consumer: "projector".into(),
        topic: cfg.kafka.topics().device_events,
        database_url: cfg.database.url.clone(),
        schema: schema.to_owned(),
        member: member.to_owned(),
        batch_max: p.batch_max,
        batch_wait: Duration::from_millis(p.batch_wait_ms),
        fold: FoldWindow {
            when_behind: Duration::from_millis(p.fold_when_behind_ms),
            max_events: p.fold_max_events,
            max_rows: p.fold_max_rows,
            max_wait: Duration::from_millis(p.fold_max_wait_ms),
        },
        deep_fold: (p.deep_fold_max_events > 0).then(|| FoldWindow {
            when_behind: Duration::from_millis(p.deep_fold_when_behind_ms),
            max_events: p.deep_fold_max_events,
            max_rows: p.deep_fold_max_rows,
            max_wait: Duration::from_millis(p.deep_fold_max_wait_ms),
        }),
        rebalance_every: Duration::from_millis(p.rebalance_ms),
        kafka: cfg.kafka.clone(),
        stop_at: None,
    }
}

/// Runner settings for one of the ledger consumers, on the configured schema.
fn runner_config(cfg: &Config, consumer: &str, topic: String) -> RunnerConfig {
    RunnerConfig {
        consumer: consumer.to_owned(),
        topic,
        ..projector_runner_config(cfg, &cfg.database.schema, &cfg.member())
    }
}

/// The saga's settings.
#[must_use]
pub fn saga_config(cfg: &Config) -> SagaConfig {
    SagaConfig {
        topic: cfg.kafka.topics().rollout_events,
        database_url: cfg.database.url.clone(),
        schema: cfg.database.schema.clone(),
        member: cfg.member(),
        tick: Duration::from_millis(cfg.saga.tick_ms),
        join_every: Duration::from_millis(cfg.saga.join_every_ms),
        rebalance_every: Duration::from_millis(cfg.projector.rebalance_ms),
        settle: Duration::from_millis(cfg.saga.settle_ms),
        kafka: cfg.kafka.clone(),
    }
}

/// A pool on the configured schema, migrated.
async fn migrated_pool(cfg: &Config) -> anyhow::Result<sqlx::PgPool> {
    let db = &cfg.database;
    let pool =
        otaledger_projections::migrations::migrated_pool(&db.url, &db.schema, db.max_connections)
            .await?;
    Ok(pool)
}

/// Runs one component until shutdown.
pub async fn run(
    component: Component,
    cfg: Config,
    shutdown: ShutdownSignal,
) -> anyhow::Result<()> {
    let producer = EventProducer::new(&cfg.kafka)?;
    let result = match component {
        Component::Api => run_api(&cfg, producer.clone(), shutdown).await,
        Component::Projector => run_projector(&cfg, producer.clone(), shutdown).await,
        Component::MqttBridge => otaledger_producers::mqtt_bridge::run(
            cfg.mqtt.clone(),
            &cfg.ingest,
            producer.clone(),
            shutdown,
        )
        .await
        .map_err(Into::into),
        Component::AmqpBridge => {
            let pool = migrated_pool(&cfg).await?;
            otaledger_producers::amqp_bridge::run(
                cfg.amqp.clone(),
                &cfg.ingest,
                producer.clone(),
                pool,
                shutdown,
            )
            .await
            .map_err(Into::into)
        }
        Component::Router => {
            let pool = migrated_pool(&cfg).await?;
            for ddl in ROUTER_DDL {
                otaledger_ledger::db::create_if_missing(&pool, ddl).await?;
            }
            let rc = runner_config(&cfg, "router", cfg.kafka.topics().device_events);
            Runner::new(rc, Router::new(producer.clone()), producer.clone(), pool)
                .run(shutdown)
                .await
                .map_err(Into::into)
        }
        Component::Saga => {
            let pool = migrated_pool(&cfg).await?;
            Saga::new(saga_config(&cfg), producer.clone(), pool)
                .run(shutdown)
                .await
                .map_err(Into::into)
        }
        Component::Dispatcher => {
            let pool = migrated_pool(&cfg).await?;
            otaledger_ledger::db::create_if_missing(&pool, DISPATCHER_DDL).await?;
            let topic = cfg.kafka.topics().device_commands;
            let dc = DispatcherConfig {
                mqtt: cfg.mqtt.clone(),
                amqp: cfg.amqp.clone(),
                attempts: cfg.dispatcher.attempts,
                backoff: Duration::from_millis(cfg.dispatcher.backoff_ms),
                commands_topic: topic.clone(),
            };
            let mut waiting = shutdown.clone();
            let Some(dispatcher) =
                Dispatcher::connect(dc, producer.clone(), &cfg.member(), &mut waiting).await?
            else {
                return Ok(());
            };
            let rc = runner_config(&cfg, "dispatcher", topic);
            Runner::new(rc, dispatcher, producer.clone(), pool)
                .run(shutdown)
                .await
                .map_err(Into::into)
        }
        Component::History => {
            let pool = migrated_pool(&cfg).await?;
            let rc = runner_config(&cfg, "history", cfg.kafka.topics().device_events);
            Runner::new(rc, HistoryProjector::new(), producer.clone(), pool)
                .run(shutdown)
                .await
                .map_err(Into::into)
        }
        Component::RolloutProjector => {
            let pool = migrated_pool(&cfg).await?;
            let rc = runner_config(&cfg, "rollout-projector", cfg.kafka.topics().rollout_events);
            Runner::new(rc, RolloutProjector, producer.clone(), pool)
                .run(shutdown)
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
) -> anyhow::Result<()> {
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
) -> anyhow::Result<()> {
    let pool = migrated_pool(cfg).await?;
    let mut state =
        otaledger_api::AppState::new(pool, producer, cfg.kafka.clone(), cfg.offline_after())?;
    match otaledger_ledger::mqtt_admin::MqttAdmin::connect(&cfg.mqtt) {
        Ok(admin) => state = state.with_mqtt_admin(admin),
        Err(otaledger_ledger::mqtt_admin::AdminError::NotConfigured) => tracing::warn!(
            "no MQTT admin login (mqtt.admin_username, mqtt.admin_password): devices provisioned \
             through the API get no MQTT login and can report over HTTP only"
        ),
        Err(e) => return Err(e).context("connecting to the MQTT broker as its admin"),
    }
    match otaledger_ledger::amqp_admin::RabbitAdmin::new(&cfg.amqp) {
        Ok(admin) => state = state.with_rabbit_admin(admin),
        Err(otaledger_ledger::amqp_admin::AdminError::NotConfigured) => tracing::warn!(
            "no RabbitMQ management login (amqp.admin_url): gateways cannot be provisioned \
             through the API"
        ),
        Err(e) => return Err(e).context("reading amqp.admin_url"),
    }
    if let Some(verifier) = otaledger_api::oidc::OidcVerifier::new(&cfg.oidc).await? {
        tracing::info!(issuer = %cfg.oidc.issuer, audience = %cfg.oidc.audience, "accepting OIDC bearer tokens");
        state = state.with_oidc(verifier);
    }
    if cfg.admission.pending {
        tracing::warn!(
            max_pending = cfg.admission.max_pending,
            "admission.pending is on: devices that were not provisioned may ask to be admitted \
             (POST /v1/admission/requests, open to anyone) and wait for an admin"
        );
        state = state.with_admission(cfg.admission.max_pending);
    }
    let store = open_artifact_store(&cfg.artifacts).await?;
    state = state
        .with_artifacts(store, cfg.artifacts.max_bytes)
        .with_device_rate(cfg.ingest.device_rate_per_s, cfg.ingest.device_burst);
    // The image repository's timestamp is re-signed before it expires (ADR 0038).
    let refresher = tokio::spawn(otaledger_api::tuf::refresher(
        state.pool.clone(),
        std::time::Duration::from_secs(60),
        shutdown.clone(),
    ));
    let _refresher = AbortOnDrop(refresher);
    let listener = tokio::net::TcpListener::bind(&cfg.http.listen).await?;
    let app = otaledger_api::app(state);
    let shutdown = async move { shutdown.wait().await };
    if cfg.http.tls_cert.is_empty() && cfg.http.tls_key.is_empty() {
        tracing::info!(listen = %listener.local_addr()?, "API listening (plain HTTP)");
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await?;
        return Ok(());
    }
    if cfg.http.tls_cert.is_empty() || cfg.http.tls_key.is_empty() {
        anyhow::bail!("HTTPS needs both http.tls_cert and http.tls_key");
    }
    let acceptor = otaledger_api::tls::acceptor(
        std::path::Path::new(&cfg.http.tls_cert),
        std::path::Path::new(&cfg.http.tls_key),
    )?;
    tracing::info!(listen = %listener.local_addr()?, "API listening (HTTPS)");
    otaledger_api::tls::serve(listener, acceptor, app, shutdown).await?;
    Ok(())
}

/// The artifact store the configuration names: an S3-compatible bucket when `s3_bucket` is
/// set, the local directory otherwise (ADR 0037).
///
/// # Errors
/// The directory cannot be opened, or the S3 settings make no client.
pub async fn open_artifact_store(
    a: &otaledger_ledger::config::ArtifactsConfig,
) -> anyhow::Result<std::sync::Arc<dyn otaledger_artifacts::Store>> {
    if !a.s3_bucket.is_empty() {
        let settings = otaledger_artifacts::S3Settings {
            bucket: a.s3_bucket.clone(),
            endpoint: a.s3_endpoint.clone(),
            region: a.s3_region.clone(),
            prefix: a.s3_prefix.clone(),
            access_key_id: a.s3_access_key_id.clone(),
            secret_access_key: a.s3_secret_access_key.clone(),
            allow_http: a.s3_allow_http,
        };
        let store =
            otaledger_artifacts::S3Store::new(&settings).context("the S3 artifact store")?;
        tracing::info!(bucket = %a.s3_bucket, endpoint = %a.s3_endpoint, prefix = %a.s3_prefix, max_bytes = a.max_bytes, "artifact store (S3)");
        return Ok(std::sync::Arc::new(store));
    }
    let dir = a.dir();
    let store = otaledger_artifacts::FsStore::open(&dir)
        .await
        .with_context(|| format!("opening the artifact store in {}", dir.display()))?;
    tracing::info!(dir = %dir.display(), max_bytes = a.max_bytes, "artifact store");
    Ok(std::sync::Arc::new(store))
}

/// Stops a task when the component that started it ends (also by an error or a panic).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Serves `/metrics` and `/healthz` on `http.metrics_listen` until shutdown, for a process
/// that runs a worker component (the API serves them itself); nothing when it is empty.
pub async fn serve_metrics(
    cfg: &Config,
    mut shutdown: ShutdownSignal,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    if cfg.http.metrics_listen.is_empty() {
        return Ok(None);
    }
    let listener = tokio::net::TcpListener::bind(&cfg.http.metrics_listen).await?;
    tracing::info!(listen = %listener.local_addr()?, "metrics listening");
    Ok(Some(tokio::spawn(async move {
        let served = axum::serve(listener, otaledger_api::metrics_routes())
            .with_graceful_shutdown(async move { shutdown.wait().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "metrics endpoint failed");
        }
    })))
}

/// The ledger reset a component stopped for (ADR 0023), if that is why it failed: the runtime's
/// error as the runner returns it, or carried by the consumers' error (the saga's).
#[must_use]
pub fn ledger_reset(e: &anyhow::Error) -> Option<&otaledger_ledger::Error> {
    let ledger =
        e.downcast_ref::<otaledger_ledger::Error>()
            .or_else(|| match e.downcast_ref::<otaledger_consumers::Error>() {
                Some(otaledger_consumers::Error::Ledger(l)) => Some(l),
                _ => None,
            })?;
    ledger.is_ledger_reset().then_some(ledger)
}

/// Whether `e` is a component's stop at shutdown while it waited (nothing was committed), not
/// a failure.
#[must_use]
pub fn interrupted(e: &anyhow::Error) -> bool {
    // The runner carries a projection's error in `otaledger_ledger::Error::Apply`.
    let apply = match e.downcast_ref::<otaledger_ledger::Error>() {
        Some(otaledger_ledger::Error::Apply(inner)) => inner.downcast_ref(),
        _ => None,
    };
    matches!(
        apply.or_else(|| e.downcast_ref::<otaledger_consumers::Error>()),
        Some(otaledger_consumers::Error::Stopped(_))
    )
}

/// Runs components together, restarting any that fails (with backoff) until shutdown; a
/// ledger reset stops a component for good.
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
                    // A component that shutdown interrupted mid-wait (nothing committed).
                    Err(e) if signal.is_triggered() && interrupted(&e) => {
                        tracing::info!(component = c.name(), reason = format!("{e:#}"), "stopped");
                        break;
                    }
                    Ok(()) => tracing::warn!(component = c.name(), "component stopped; restarting"),
                    Err(e) if ledger_reset(&e).is_some() => {
                        // Not transient: every restart would find the same ledger (ADR 0023).
                        tracing::error!(
                            component = c.name(),
                            error = format!("{e:#}"),
                            "component stopped for good: the ledger went backwards; not restarting"
                        );
                        break;
                    }
                    Err(e) => tracing::error!(
                        component = c.name(),
                        error = format!("{e:#}"),
                        "component failed; restarting"
                    ),
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

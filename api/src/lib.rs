//! The HTTP API: `fn app(state) -> Router`, so tests drive it with `oneshot` and binaries serve
//! it. Errors are JSON `{ "error", "reason" }` and never expose internals.

pub mod admission;
pub mod artifacts;
pub mod auth;
mod body;
pub mod device_lookup;
mod devices;
mod error;
pub mod ingest;
pub mod oidc;
mod openapi;
mod ops;
pub use ops::metrics_routes;
mod params;
pub mod releases;
mod rollout_views;
pub mod rollouts;
pub mod scope;
pub mod summary_cache;
pub mod tls;
pub mod tokens;
pub mod tuf;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{FromRef, MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use otaledger_ledger::config::KafkaConfig;
use otaledger_ledger::kafka::EventProducer;
use otaledger_ledger::metrics::REGISTRY;
use otaledger_ledger::rate_limit::DeviceLimits;
use otaledger_ledger::KafkaContext;
use rdkafka::consumer::BaseConsumer;
use sqlx::PgPool;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

pub use error::{ApiError, ErrorBody, Unavailable};

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub producer: EventProducer,
    /// A metadata client for `/readyz`.
    pub kafka_probe: Arc<BaseConsumer>,
    pub kafka: KafkaConfig,
    pub offline_after: Duration,
    pub summary: Arc<summary_cache::SummaryCache>,
    pub devices: device_lookup::DeviceLookup,
    pub auth: Arc<auth::Authenticator>,
    /// Off only through [`AppState::unauthenticated_for_benchmarks`]; no configuration turns it
    /// off.
    authenticate: bool,
    /// Adds and removes device logins in the MQTT broker when devices are provisioned and
    /// revoked (ADR 0026); without it a provisioned device can report over HTTP only.
    pub mqtt_admin: Option<Arc<otaledger_ledger::mqtt_admin::MqttAdmin>>,
    /// Creates and deletes gateways' RabbitMQ users when gateways are provisioned and revoked
    /// (ADR 0029); without it no gateway can be provisioned.
    pub rabbit_admin: Option<Arc<otaledger_ledger::amqp_admin::RabbitAdmin>>,
    /// With `admission.pending` on, how many admission requests may wait (ADR 0032); `None`:
    /// the admission routes answer 404.
    pub admission_max_pending: Option<i64>,
    /// The artifact store (ADR 0037); `None`: the artifact routes answer 404.
    pub artifacts: Option<Arc<artifacts::Artifacts>>,
    /// Each device's rate on HTTP ingest (ADR 0040); `None`: no limit.
    pub device_rates: Option<Arc<std::sync::Mutex<DeviceLimits>>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("kafka", &self.kafka)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Must be called within a Tokio runtime: it starts the device lookup batcher.
    pub fn new(
        pool: PgPool,
        producer: EventProducer,
        kafka: KafkaConfig,
        offline_after: Duration,
    ) -> otaledger_ledger::Result<Self> {
        let probe: BaseConsumer = otaledger_ledger::kafka::client_config(&kafka)
            .create()
            .kafka("creating the Kafka probe")?;
        Ok(AppState {
            devices: device_lookup::DeviceLookup::spawn(pool.clone(), offline_after),
            auth: Arc::new(auth::Authenticator::new(pool.clone())),
            authenticate: true,
            pool,
            producer,
            kafka_probe: Arc::new(probe),
            kafka,
            offline_after,
            summary: Arc::new(summary_cache::SummaryCache::new(Duration::from_secs(1))),
            mqtt_admin: None,
            rabbit_admin: None,
            admission_max_pending: None,
            artifacts: None,
            device_rates: None,
        })
    }

    /// Provisioning and revoking devices also adds and removes their MQTT logins.
    #[must_use]
    pub fn with_mqtt_admin(mut self, admin: otaledger_ledger::mqtt_admin::MqttAdmin) -> Self {
        self.mqtt_admin = Some(Arc::new(admin));
        self
    }

    /// Provisioning and revoking gateways also creates and deletes their RabbitMQ users.
    #[must_use]
    pub fn with_rabbit_admin(mut self, admin: otaledger_ledger::amqp_admin::RabbitAdmin) -> Self {
        self.rabbit_admin = Some(Arc::new(admin));
        self
    }

    /// Records requests of unprovisioned devices as pending, at most `max_pending` at once
    /// (ADR 0032).
    #[must_use]
    pub fn with_admission(mut self, max_pending: i64) -> Self {
        self.admission_max_pending = Some(max_pending);
        self
    }

    /// Serves the artifact routes from `store`, uploads up to `max_bytes` (ADR 0037).
    #[must_use]
    pub fn with_artifacts(
        mut self,
        store: Arc<dyn otaledger_artifacts::Store>,
        max_bytes: u64,
    ) -> Self {
        self.artifacts = Some(Arc::new(artifacts::Artifacts::new(store, max_bytes)));
        self
    }

    /// Refuses a device's reports over HTTP (429) beyond `rate_per_s` a second on average
    /// and `burst` at once, as the bridges do (ADR 0040); a rate of 0 sets no limit.
    #[must_use]
    pub fn with_device_rate(mut self, rate_per_s: f64, burst: u32) -> Self {
        self.device_rates = (rate_per_s > 0.0)
            .then(|| Arc::new(std::sync::Mutex::new(DeviceLimits::new(rate_per_s, burst))));
        self
    }

    /// Also accepts OIDC bearer tokens (ADR 0030).
    #[must_use]
    pub fn with_oidc(mut self, verifier: oidc::OidcVerifier) -> Self {
        self.auth = Arc::new(auth::Authenticator::new(self.pool.clone()).with_oidc(verifier));
        self
    }

    /// The brokers whose logins follow provisioning and revocation.
    #[must_use]
    pub fn brokers(&self) -> tokens::Brokers<'_> {
        tokens::Brokers {
            mqtt: self.mqtt_admin.as_deref(),
            amqp: self.rabbit_admin.as_deref(),
        }
    }
}

impl FromRef<AppState> for EventProducer {
    fn from_ref(state: &AppState) -> EventProducer {
        state.producer.clone()
    }
}

impl FromRef<AppState> for ingest::Ingest {
    fn from_ref(state: &AppState) -> ingest::Ingest {
        ingest::Ingest {
            producer: state.producer.clone(),
            rates: state.device_rates.clone(),
        }
    }
}

/// Every route with its OpenAPI operation: the document cannot miss a route.
fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .merge(devices::routes())
        .merge(rollouts::routes())
        .merge(rollout_views::routes())
        .merge(ingest::routes())
        .merge(tokens::routes())
        .merge(admission::routes())
        .merge(artifacts::routes())
        .merge(releases::routes())
        .merge(tuf::routes())
        .merge(ops::routes())
}

/// The OpenAPI document, derived from the routes and the request and response types.
#[must_use]
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = routes().into_openapi();
    openapi::secure(&mut doc);
    doc
}

impl AppState {
    /// Every route open to anyone, so that `otaledger-bench` can measure what authentication
    /// costs. Never reachable from a configuration or a command line of the product.
    #[must_use]
    pub fn unauthenticated_for_benchmarks(mut self) -> Self {
        tracing::warn!("AUTHENTICATION IS OFF: every route is open to anyone (benchmark only)");
        self.authenticate = false;
        self
    }
}

/// The whole API.
pub fn app(state: AppState) -> Router {
    let (router, _) = routes().split_for_parts();
    router
        // After routing, so the layer knows the route (and so its role).
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authorize,
        ))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(middleware::from_fn(track))
        .with_state(state)
}

/// Counts requests and their latency by route and status.
async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().to_string();
    let started = Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    REGISTRY
        .counter(
            "otaledger_http_requests_total",
            "HTTP requests by route, method and status",
            &[("route", &route), ("method", &method), ("status", &status)],
        )
        .inc();
    REGISTRY
        .histogram(
            "otaledger_http_request_seconds",
            "HTTP request latency by route",
            &[("route", &route)],
        )
        .observe(started.elapsed().as_secs_f64());
    response
}

#[cfg(test)]
mod tests {
    /// `api/openapi.json` is a copy for readers and clients; the server serves `openapi()`.
    #[test]
    #[allow(clippy::unwrap_used)]
    fn the_checked_in_document_is_the_generated_one() {
        let generated = serde_json::to_string_pretty(&super::openapi()).unwrap() + "\n";
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
        if std::env::var_os("OTALEDGER_WRITE_OPENAPI").is_some() {
            std::fs::write(path, &generated).unwrap();
        }
        let checked_in = std::fs::read_to_string(path).unwrap();
        assert!(
            checked_in == generated,
            "api/openapi.json is stale: OTALEDGER_WRITE_OPENAPI=1 cargo test -p otaledger-api"
        );
    }
}

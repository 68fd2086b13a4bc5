//! Operations endpoints: liveness, readiness, metrics, OpenAPI.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use otaledger_ledger::metrics::REGISTRY;
use rdkafka::consumer::Consumer;
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::AppState;

/// The document, written once: it is derived from the routes and types, not hand-kept.
static OPENAPI: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    serde_json::to_string_pretty(&crate::openapi()).unwrap_or_else(|e| {
        tracing::error!(error = %e, "the OpenAPI document does not serialise");
        String::new()
    })
});

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi_json))
}

/// `/metrics` and `/healthz` alone, for processes that run a worker component without the API.
pub fn metrics_routes() -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", operation_id = "healthz", tag = "operations",
    responses((status = 200, description = "Alive", body = Object, example = json!({"status": "ok"}))))]
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// This OpenAPI document.
#[utoipa::path(get, path = "/openapi.json", operation_id = "openapi", tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1", content_type = "application/json", body = Object)))]
async fn openapi_json() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        OPENAPI.as_str(),
    )
}

/// Ready when PostgreSQL answers, the device-events topic exists and the Kafka producer is not
/// in a fatal state.
#[utoipa::path(get, path = "/readyz", operation_id = "readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Object),
        (status = 503, description = "Not ready, with the failing checks", body = Object),
    ))]
async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    let db = match tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query("SELECT 1").execute(&s.pool),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".to_owned()),
    };
    let probe = s.kafka_probe.clone();
    let topic = s.kafka.topics().device_events;
    let kafka = tokio::task::spawn_blocking(move || {
        probe
            .fetch_metadata(Some(&topic), Duration::from_secs(2))
            .map_err(|e| e.to_string())
            .and_then(|md| match md.topics().first() {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(()),
                _ => Err(format!("topic {topic} is missing")),
            })
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    // A producer in librdkafka's fatal state refuses every record: not ready until it is
    // replaced (this check replaces it).
    let producer = s.producer.health();
    let ready = db.is_ok() && kafka.is_ok() && producer.is_ok();
    if !ready {
        tracing::warn!(?db, ?kafka, ?producer, "not ready");
    }
    let word = |r: &Result<(), String>| if r.is_ok() { "ok" } else { "unavailable" };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(
            json!({"ready": ready, "checks": {"postgres": word(&db), "kafka": word(&kafka),
            "producer": word(&producer)}}),
        ),
    )
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", security(("token" = ["viewer"])), tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        REGISTRY.render(),
    )
}

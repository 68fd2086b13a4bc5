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

use crate::AppState;

const OPENAPI: &str = include_str!("../openapi.json");

pub(crate) fn routes(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .with_state(state)
}

/// `/metrics` and `/healthz` alone, for processes that run a worker component without the API.
pub fn metrics_routes() -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/metrics", get(metrics))
}

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
    let ready = db.is_ok() && kafka.is_ok();
    if !ready {
        tracing::warn!(?db, ?kafka, "not ready");
    }
    let word = |r: &Result<(), String>| if r.is_ok() { "ok" } else { "unavailable" };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"ready": ready, "checks": {"postgres": word(&db), "kafka": word(&kafka)}})),
    )
}

async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        REGISTRY.render(),
    )
}

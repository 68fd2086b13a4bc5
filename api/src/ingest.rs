//! HTTP ingest: `POST /v1/devices/{id}/heartbeats` (and `/registrations`, `/install-reports`)
//! answers 202 only after Kafka acknowledged the event; bad input gets a 4xx JSON reason and a
//! dead letter; a device over its rate gets 429 (ADR 0040).

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use otaledger_domain::ids::new_trace_id;
use serde::Serialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use otaledger_domain::device_json::{
    parse_device_message, HeartbeatJson, InstallJson, MessageKind, RegisterJson, MAX_DEVICE_PAYLOAD,
};
use otaledger_ledger::dead_letters::{dead_letter, Origin};
use otaledger_ledger::kafka::EventProducer;
use otaledger_ledger::metrics;
use otaledger_ledger::rate_limit::{self, DeviceLimits, Verdict};

use crate::auth::Principal;
use crate::params::DeviceIdPath;
use crate::{ApiError, ErrorBody};

static HTTP_INGESTED: std::sync::LazyLock<metrics::Counter> =
    std::sync::LazyLock::new(|| metrics::ingested("http"));
static HTTP_RATE_LIMITED: std::sync::LazyLock<metrics::Counter> =
    std::sync::LazyLock::new(|| rate_limit::refused_counter("http"));

/// What the ingest routes need: the producer, and the devices' rates when they are limited.
#[derive(Clone)]
pub(crate) struct Ingest {
    pub(crate) producer: EventProducer,
    pub(crate) rates: Option<std::sync::Arc<std::sync::Mutex<DeviceLimits>>>,
}

/// Where the ledger holds a device's event.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Accepted {
    event_id: String,
    partition: i32,
    offset: i64,
}

/// The ingest routes; they need only the producer.
pub(crate) fn routes() -> OpenApiRouter<crate::AppState> {
    OpenApiRouter::new()
        .routes(routes!(heartbeats))
        .routes(routes!(registrations))
        .routes(routes!(install_reports))
        // Bodies up to four times the device limit reach the handler, so they are dead-lettered
        // byte for byte and answered 413; larger ones are refused unread (413, counted).
        .layer(DefaultBodyLimit::max(MAX_DEVICE_PAYLOAD * 4))
}

/// A device report route: the same answers for each, only the path, the operation, the body's
/// schema and the message kind differ.
macro_rules! report_route {
    ($(#[doc = $doc:literal])* $name:ident, $what:literal, $operation:literal, $body:ty, $kind:expr) => {
        $(#[doc = $doc])*
        #[utoipa::path(post, path = concat!("/v1/devices/{id}/", $what), operation_id = $operation,
            security(("token" = ["device"])), tag = "ingest", params(DeviceIdPath),
            request_body(content = $body, content_type = "application/json"),
            responses(
                (status = 202, description = "The ledger holds the event", body = Accepted),
                (status = 400, description = "Refused and dead-lettered, with the reason", body = ErrorBody),
                (status = 413, description = "Over the device payload limit", body = ErrorBody),
                (status = 429, description = "The device sent over its rate (`ingest.device_rate_per_s`); send again after `Retry-After` seconds", body = ErrorBody),
                (status = 503, description = "The ledger is unavailable", body = ErrorBody),
            ))]
        async fn $name(
            s: State<Ingest>,
            who: Extension<Principal>,
            id: Path<String>,
            h: HeaderMap,
            body: Result<Bytes, BytesRejection>,
        ) -> Result<Response, ApiError> {
            receive($kind, $what, s, &who, id, h, body).await
        }
    };
}

report_route!(
    /// A device reports its health.
    heartbeats, "heartbeats", "postHeartbeat", HeartbeatJson, MessageKind::Heartbeat
);
report_route!(
    /// A device registers itself: model, site, tags, firmware, gateway.
    registrations, "registrations", "postRegistration", RegisterJson, MessageKind::Register
);
report_route!(
    /// A device reports an install's progress or result.
    install_reports, "install-reports", "postInstallReport", InstallJson, MessageKind::Install
);

async fn receive(
    kind: MessageKind,
    what: &'static str,
    State(s): State<Ingest>,
    who: &Principal,
    id: Path<String>,
    h: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    // A device reports for itself alone: its credential names the device of the path.
    if who.name != id.0 {
        return Ok(crate::auth::refused(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this credential is device {:?}'s, not {:?}'s",
                who.name, id.0
            ),
        ));
    }
    let body = body.map_err(|rejection| {
        metrics::dead_lettered("http", "payload_too_large");
        ApiError {
            status: rejection.status(),
            error: "payload_too_large",
            reason: rejection.body_text(),
        }
    })?;
    if let Some(refused) = over_rate(&s, &id.0, what, &body).await? {
        return Ok(refused);
    }
    ingest(kind, what, State(s.producer), id, &h, body).await
}

/// The 429 answer when the device is over its rate, after dead-lettering the refusal when it
/// is due (the first of a device, then one a second, as the bridges do); `None` within it.
async fn over_rate(
    s: &Ingest,
    device: &str,
    what: &str,
    body: &Bytes,
) -> Result<Option<Response>, ApiError> {
    let Some(rates) = &s.rates else {
        return Ok(None);
    };
    // The device is told and sends again, so an install result is not dead-lettered each time.
    let (verdict, retry_after) = {
        let mut limits = rates
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let verdict = limits.judge(device, std::time::Instant::now(), false);
        (verdict, limits.retry_after_s())
    };
    let Verdict::Refuse { report } = verdict else {
        return Ok(None);
    };
    HTTP_RATE_LIMITED.inc();
    let rejection = rate_limit::rejection(device, report.unwrap_or(1));
    if report.is_some() {
        let channel = format!("/v1/devices/{device}/{what}");
        // Enqueued, not awaited: a flood must not wait on Kafka for its refusals.
        let _ = dead_letter(
            &s.producer,
            &http_origin(&channel),
            device.as_bytes(),
            body,
            &rejection,
        )
        .await;
    }
    let mut response = ApiError {
        status: StatusCode::TOO_MANY_REQUESTS,
        error: rejection.reason,
        reason: format!(
            "device {device:?} sent over its rate (ingest.device_rate_per_s); send again later"
        ),
    }
    .into_response();
    response
        .headers_mut()
        .insert(axum::http::header::RETRY_AFTER, retry_after.into());
    Ok(Some(response))
}

/// Where an HTTP report's dead letter came from: the route it was sent to.
fn http_origin(channel: &str) -> Origin<'_> {
    Origin {
        source: "http",
        channel,
        partition: None,
        offset: None,
    }
}

/// A W3C `traceparent` carries the caller's trace id; otherwise a new one starts here.
fn trace_id(headers: &HeaderMap) -> String {
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split('-').nth(1))
        .filter(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()))
        .map_or_else(new_trace_id, str::to_ascii_lowercase)
}

async fn ingest(
    kind: MessageKind,
    what: &str,
    State(producer): State<EventProducer>,
    Path(device_id): Path<String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    match parse_device_message(kind, &device_id, &body, &trace_id(headers)) {
        Ok(event) => {
            let delivered = producer
                .append(&event)
                .await
                .map_err(|e| ApiError::unavailable(&e))?;
            HTTP_INGESTED.inc();
            let accepted = Accepted {
                event_id: event.meta.event_id.to_string(),
                partition: delivered.partition,
                offset: delivered.offset,
            };
            Ok((StatusCode::ACCEPTED, Json(accepted)).into_response())
        }
        Err(rejection) => {
            let channel = format!("/v1/devices/{device_id}/{what}");
            let origin = http_origin(&channel);
            let pending = dead_letter(&producer, &origin, device_id.as_bytes(), &body, &rejection)
                .await
                .map_err(|e| ApiError::unavailable(&e))?;
            pending
                .acked()
                .await
                .map_err(|e| ApiError::unavailable(&e))?;
            let status = if rejection.reason == "payload_too_large" {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            };
            Err(ApiError {
                status,
                error: rejection.reason,
                reason: rejection.detail,
            })
        }
    }
}

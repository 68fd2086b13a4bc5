//! The API's error: a status and a JSON `{ "error", "reason" }` body that never exposes
//! internals (the cause of a 503 is logged, not answered).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

/// The JSON error body every otaledger endpoint answers with.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody {
    /// A stable word for programs (`invalid_field`, `not_found`, `unavailable`, …).
    pub error: &'static str,
    /// What was wrong, for people.
    pub reason: String,
}

/// The answer of every route that needs PostgreSQL or Kafka while one is down: one definition
/// for the document, named last in each route's `responses(…)`.
#[derive(utoipa::IntoResponses)]
#[response(status = 503, description = "A backing service is unavailable")]
pub struct Unavailable(#[allow(dead_code)] ErrorBody);

/// An HTTP error: a status and a reason that never exposes internals.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: &'static str,
    pub reason: String,
}

impl ApiError {
    pub fn bad_request(error: &'static str, reason: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            error,
            reason: reason.into(),
        }
    }

    pub fn not_found(reason: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            error: "not_found",
            reason: reason.into(),
        }
    }

    /// Logs the cause and answers 503 without naming it.
    pub fn unavailable(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "request failed on a backing service");
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            error: "unavailable",
            reason: "a backing service is unavailable; retry later".into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                error: self.error,
                reason: self.reason,
            }),
        )
            .into_response()
    }
}

/// A query the read models refuse is the caller's error (400); anything else is a backing
/// service's (503, cause logged).
impl From<otaledger_projections::Error> for ApiError {
    fn from(e: otaledger_projections::Error) -> Self {
        match e {
            otaledger_projections::Error::InvalidQuery(reason) => {
                ApiError::bad_request("invalid_parameter", reason)
            }
            e => ApiError::unavailable(&e),
        }
    }
}

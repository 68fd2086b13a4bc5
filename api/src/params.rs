//! Path and query parameters: their checks and, built from the same limits, their OpenAPI
//! schemas.

use otaledger_domain::json_schema;
use otaledger_projections::fleet::MAX_PAGE;
use utoipa::openapi::schema::{ObjectBuilder, Type};

use crate::ApiError;

/// Query parameters; a request whose parameters do not parse is answered `400
/// invalid_parameter` with the reason, in the JSON error body every route answers with.
pub(crate) struct Params<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequestParts<S>
    for Params<T>
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(q)| Params(q))
            .map_err(|e| ApiError::bad_request("invalid_parameter", e.body_text()))
    }
}

/// The longest filter value or cursor, in characters.
pub(crate) const MAX_PARAM_LEN: usize = 256;
/// The page size when `limit` is absent.
pub(crate) const DEFAULT_PAGE: i64 = 100;

/// A filter value or cursor: 1 to [`MAX_PARAM_LEN`] characters without NUL (PostgreSQL cannot
/// compare with one).
pub(crate) fn text(name: &str, v: Option<String>) -> Result<Option<String>, ApiError> {
    match v {
        Some(s) if s.is_empty() || s.chars().count() > MAX_PARAM_LEN || s.contains('\0') => {
            Err(ApiError::bad_request(
                "invalid_parameter",
                format!("{name} must be 1 to {MAX_PARAM_LEN} characters without NUL"),
            ))
        }
        v => Ok(v),
    }
}

/// The `limit` query parameter: [`DEFAULT_PAGE`] when absent, 1 to [`MAX_PAGE`].
pub(crate) fn page_limit(l: Option<&str>) -> Result<i64, ApiError> {
    match l {
        None => Ok(DEFAULT_PAGE),
        Some(l) => match l.parse::<i64>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(
                "invalid_parameter",
                format!("limit must be a whole number from 1 to {MAX_PAGE}, not {l:?}"),
            )),
        },
    }
}

/// A device or rollout id in a path.
pub(crate) fn id(what: &str, id: &str) -> Result<(), ApiError> {
    otaledger_domain::ids::validate_device_id(id)
        .map_err(|e| ApiError::bad_request("invalid_parameter", format!("{what} id: {e}")))
}

pub(crate) fn id_schema() -> ObjectBuilder {
    json_schema::device_id()
}

pub(crate) fn text_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(MAX_PARAM_LEN))
        .pattern(Some(r"^[^\u0000]*$"))
}

pub(crate) fn limit_schema() -> ObjectBuilder {
    json_schema::integer(&(1..=MAX_PAGE)).default(Some(DEFAULT_PAGE.into()))
}

pub(crate) fn position_schema() -> ObjectBuilder {
    json_schema::integer(&(i64::MIN..=i64::MAX))
}

/// `{id}` in a device's path.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // documents the path; the handlers read `Path<String>`
pub(crate) struct DeviceIdPath {
    /// The device's id.
    #[param(schema_with = id_schema, required = true)]
    id: String,
}

/// `{id}` in a rollout's path.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub(crate) struct RolloutIdPath {
    /// The rollout's id.
    #[param(schema_with = id_schema, required = true)]
    id: String,
}

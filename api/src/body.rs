//! JSON request bodies, read once: an object (serde would also read a struct from an array),
//! without a NUL character in its text (PostgreSQL cannot store one, a projector would stop on
//! it), turned into the handler's type with the path of a bad field in the answer.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::ApiError;

/// A body that must be a JSON object of `T`.
pub(crate) fn object<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))?;
    from_object(value)
}

/// A body that may be left out (or `null`) for `T::default()`, an object of `T` otherwise.
pub(crate) fn object_or_none<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Ok(T::default());
    }
    match serde_json::from_slice(body) {
        Ok(Value::Null) => Ok(T::default()),
        Ok(value) => from_object(value),
        Err(e) => Err(ApiError::bad_request("invalid_json", e.to_string())),
    }
}

fn from_object<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "invalid_field",
            "body: must be a JSON object",
        ));
    }
    if let Some(at) = otaledger_domain::device_json::nul_in(&value) {
        return Err(ApiError::bad_request(
            "invalid_text",
            format!("{at} contains a NUL character"),
        ));
    }
    // The path names the field when a value has the wrong type (`strategy.max_retries: …`).
    serde_path_to_error::deserialize(value)
        .map_err(|e| ApiError::bad_request("invalid_field", format!("{}: {}", e.path(), e.inner())))
}

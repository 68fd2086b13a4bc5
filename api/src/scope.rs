//! Scoped tokens (ADR 0031): a token confined to the devices a selector selects reaches only
//! the routes that can answer within that selector, and each of them confines its answer.
//! Every other secured route refuses a scoped token, so a route added later is closed to them
//! until it learns to confine itself.

use axum::http::{Method, StatusCode};
use otaledger_domain::access::scope::{self, DeviceFacts};
use otaledger_domain::events::TargetSelector;
use otaledger_projections::fleet::Device;

use crate::auth::Principal;
use crate::{ApiError, AppState};

/// The routes that confine their answers to a scope.
const SCOPE_AWARE: [(Method, &str); 10] = [
    (Method::POST, "/v1/rollouts"),
    (Method::POST, "/v1/rollouts/{id}/pause"),
    (Method::POST, "/v1/rollouts/{id}/resume"),
    (Method::POST, "/v1/rollouts/{id}/abort"),
    (Method::GET, "/v1/rollouts/{id}"),
    (Method::GET, "/v1/rollouts/{id}/devices"),
    (Method::GET, "/v1/rollouts/{id}/decisions"),
    (Method::GET, "/v1/devices"),
    (Method::GET, "/v1/devices/{id}"),
    (Method::GET, "/v1/devices/{id}/history"),
];

/// Whether a scoped token may use the route at all.
#[must_use]
pub fn scope_aware(method: &Method, path: &str) -> bool {
    let method = if method == Method::HEAD {
        &Method::GET
    } else {
        method
    };
    SCOPE_AWARE.iter().any(|(m, p)| m == method && *p == path)
}

/// The refusal for a route that answers for the whole fleet.
pub(crate) fn fleet_wide(method: &Method, path: &str) -> ApiError {
    ApiError {
        status: StatusCode::FORBIDDEN,
        error: "outside_scope",
        reason: format!(
            "{method} {path} answers for the whole fleet; this token is scoped to a selector"
        ),
    }
}

/// What a caller outside the scope is told: as if the thing did not exist.
fn not_found(what: &str, id: &str) -> ApiError {
    ApiError::not_found(format!("no {what} {id:?}"))
}

/// Whether the caller may see `device`.
#[must_use]
pub fn admits(who: &Principal, device: &Device) -> bool {
    who.scope.as_ref().is_none_or(|s| {
        scope::admits(
            s,
            DeviceFacts {
                device_id: &device.device_id,
                model: device.model.as_deref().unwrap_or_default(),
                site: device.site.as_deref().unwrap_or_default(),
                tags: &device.tags,
                firmware_version: device.firmware_version.as_deref().unwrap_or_default(),
            },
        )
    })
}

/// The rollout's selector narrowed to the caller's scope; a rollout asked wholly outside it
/// is refused.
pub(crate) fn narrow(
    who: &Principal,
    selector: TargetSelector,
) -> Result<TargetSelector, ApiError> {
    let Some(limit) = &who.scope else {
        return Ok(selector);
    };
    scope::narrow(&selector, limit).ok_or_else(|| ApiError {
        status: StatusCode::FORBIDDEN,
        error: "outside_scope",
        reason: "the selector selects no device within this token's scope".into(),
    })
}

/// Succeeds when the caller may act on (or see) rollout `id`: every device it selects is
/// within the caller's scope. Otherwise, and for a rollout the projection does not hold yet,
/// the caller hears that there is no such rollout.
pub(crate) async fn rollout(s: &AppState, who: &Principal, id: &str) -> Result<(), ApiError> {
    let Some(limit) = &who.scope else {
        return Ok(());
    };
    let row = otaledger_projections::rollouts::get_rollout(&s.pool, id)
        .await?
        .ok_or_else(|| not_found("rollout", id))?;
    let selector: TargetSelector =
        serde_json::from_value(row.selector).map_err(|_| not_found("rollout", id))?;
    if scope::within(&selector, limit) {
        Ok(())
    } else {
        Err(not_found("rollout", id))
    }
}

//! Rollout requests: `POST /v1/rollouts` validates every field and appends `UpdateRequested`
//! (202 with the rollout id once Kafka has it); `POST /v1/rollouts/{id}/pause|resume|abort`
//! append operator requests. A bad request gets 400 naming the field and appends nothing.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use otaledger_domain::events::{CatalogueRelease, OperatorRequest, UpdateRequested};
use otaledger_domain::ids::new_trace_id;
use otaledger_domain::rollout_request::RolloutRequest;
pub use otaledger_domain::rollout_request::{
    ReleaseIn, RolloutIn, SelectorIn, StrategyIn, WindowIn,
};
use otaledger_domain::{Event, Payload};
use serde::{Deserialize, Serialize};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Principal;
use crate::params::RolloutIdPath;
use crate::{ApiError, AppState, ErrorBody};

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create))
        .routes(routes!(pause))
        .routes(routes!(resume))
        .routes(routes!(abort))
}

/// The longest reason an operator may give, in characters.
const MAX_REASON_LEN: usize = 1024;

fn bad(field: &str, why: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request("invalid_field", format!("{field}: {why}"))
}

/// Checks every field (the rules live in the domain's `RolloutRequest`) and builds the event.
pub fn validate(input: RolloutIn, operator: &str) -> Result<UpdateRequested, ApiError> {
    RolloutRequest::parse(input, operator)
        .map(UpdateRequested::from)
        .map_err(|e| ApiError::bad_request("invalid_field", e.to_string()))
}

/// A request the ledger holds.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = RolloutAccepted)]
struct Accepted {
    rollout_id: String,
    event_id: String,
}

async fn append(
    state: &AppState,
    rollout_id: String,
    payload: Payload,
) -> Result<Response, ApiError> {
    let e = Event::now(payload, new_trace_id());
    state
        .producer
        .append(&e)
        .await
        .map_err(|err| ApiError::unavailable(&err))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            rollout_id,
            event_id: e.meta.event_id.to_string(),
        }),
    )
        .into_response())
}

/// Start a rollout: appends `UpdateRequested`; the saga takes it from there.
#[utoipa::path(post, path = "/v1/rollouts", operation_id = "createRollout", security(("token" = ["operator"])), tag = "rollouts",
    request_body(content = RolloutIn, content_type = "application/json"),
    responses(
        (status = 202, description = "The ledger holds the request", body = Accepted),
        (status = 400, description = "A bad request, naming the field", body = ErrorBody),
        (status = 403, description = "The selector selects nothing within the token's scope", body = ErrorBody),
        (status = 409, description = "The release names an artifact of otaledger's store that it does not hold with the release's digest and length, or the catalogue release is unknown or not published", body = ErrorBody),
        crate::Unavailable,
    ))]
async fn create(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let mut input: RolloutIn = crate::body::object(&body)?;
    let catalogue = match input.release_id.take() {
        Some(id) => Some(from_catalogue(&s, &mut input, &id).await?),
        None if input.allow_downgrade => {
            return Err(bad(
                "allow_downgrade",
                "applies to a rollout by release_id only",
            ))
        }
        None => None,
    };
    let mut request = validate(input, &who.name)?;
    request.catalogue = catalogue.map(Box::new);
    crate::artifacts::check_release(&s, &request.release).await?;
    // A scoped token's rollout reaches only the devices within its scope.
    request.selector = crate::scope::narrow(&who, request.selector)?;
    append(
        &s,
        request.rollout_id.clone(),
        Payload::UpdateRequested(request),
    )
    .await
}

/// Fills a rollout by catalogue release in: the published release's artifact and version, and
/// its compatible models (narrowed to the request's, if it names some).
async fn from_catalogue(
    s: &AppState,
    input: &mut RolloutIn,
    release_id: &str,
) -> Result<CatalogueRelease, ApiError> {
    if input.release.is_some() {
        return Err(bad(
            "release",
            "give a release in full or a release_id, not both",
        ));
    }
    if !otaledger_domain::release::is_release_id(release_id) {
        return Err(bad("release_id", "not a release id"));
    }
    let row = crate::releases::published(s, release_id).await?;
    let models = otaledger_domain::release::compatible_models(&row.models, &input.selector.models);
    if models.is_empty() {
        return Err(bad(
            "selector.models",
            format!(
                "release {release_id} is for {:?}, none of the models selected",
                row.models
            ),
        ));
    }
    input.selector.models = models;
    input.release = Some(ReleaseIn {
        version: row.version.clone(),
        artifact_uri: format!(
            "{}{}",
            otaledger_domain::rollout_request::ARTIFACT_STORE_PATH,
            row.sha256
        ),
        sha256: row.sha256.clone(),
        size_bytes: row.length,
        signature: format!("tuf:targets.v{}", row.targets_version.unwrap_or(0)),
    });
    Ok(CatalogueRelease {
        release_id: row.release_id,
        hardware_revs: row.hardware_revs,
        allow_downgrade: input.allow_downgrade,
    })
}

/// Why an operator pauses, resumes or aborts.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ReasonIn {
    reason: String,
}

impl utoipa::PartialSchema for ReasonIn {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        otaledger_domain::json_schema::closed_object("Why; recorded in the ledger.")
            .property(
                "reason",
                utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .max_length(Some(MAX_REASON_LEN))
                    .pattern(Some(r"^[^\u0000]*$"))
                    .default(Some("".into())),
            )
            .into()
    }
}
impl utoipa::ToSchema for ReasonIn {}

async fn operator_request(
    s: &AppState,
    id: String,
    who: &Principal,
    body: &Bytes,
    make: fn(OperatorRequest) -> Payload,
) -> Result<Response, ApiError> {
    crate::params::id("rollout", &id)?;
    crate::scope::rollout(s, who, &id).await?;
    // No body, or `null`, gives no reason.
    let reason: ReasonIn = crate::body::object_or_none(body)?;
    if reason.reason.chars().count() > MAX_REASON_LEN {
        return Err(bad(
            "reason",
            format!("must be at most {MAX_REASON_LEN} characters"),
        ));
    }
    let req = OperatorRequest {
        rollout_id: id.clone(),
        requested_by: who.name.clone(),
        reason: reason.reason,
    };
    append(s, id, make(req)).await
}

/// An operator request route: the same answers and body for each, only the path, the
/// operation and the event differ.
macro_rules! operator_route {
    ($(#[doc = $doc:literal])* $name:ident, $path:literal, $operation:literal, $make:path) => {
        $(#[doc = $doc])*
        #[utoipa::path(post, path = $path, operation_id = $operation,
            security(("token" = ["operator"])), tag = "rollouts", params(RolloutIdPath),
            request_body(content = Option<ReasonIn>, content_type = "application/json"),
            responses(
                (status = 202, description = "The ledger holds the request", body = Accepted),
                (status = 400, description = "A bad id or body", body = ErrorBody),
                (status = 404, description = "No such rollout within the token's scope", body = ErrorBody),
                crate::Unavailable,
            ))]
        async fn $name(
            State(s): State<AppState>,
            Extension(who): Extension<Principal>,
            Path(id): Path<String>,
            body: Bytes,
        ) -> Result<Response, ApiError> {
            operator_request(&s, id, &who, &body, $make).await
        }
    };
}

operator_route!(
    /// Pause a rollout: no new commands until it resumes.
    pause, "/v1/rollouts/{id}/pause", "pauseRollout", Payload::PauseRequested
);
operator_route!(
    /// Resume a paused rollout.
    resume, "/v1/rollouts/{id}/resume", "resumeRollout", Payload::ResumeRequested
);
operator_route!(
    /// Abort a rollout: no new commands; its rollback policy decides what is rolled back.
    abort, "/v1/rollouts/{id}/abort", "abortRollout", Payload::AbortRequested
);

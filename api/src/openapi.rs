//! The OpenAPI document's frame: title, version, tags. Paths and schemas come from the
//! routes (`utoipa-axum` registers each handler with its `#[utoipa::path]`) and from the
//! request and response types, whose schemas are built from the limits the server checks.

use utoipa::OpenApi;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "otaledger",
        description = "Event-sourced over-the-air update ledger: fleet views, rollouts and \
                       device ingest. Every error is JSON `{error, reason}`.",
        license(name = "Apache-2.0"),
    ),
    tags(
        (name = "fleet", description = "Devices and fleet counts, from the projections"),
        (name = "rollouts", description = "Rollout requests and their progress"),
        (name = "ingest", description = "Device reports over HTTP (as over MQTT and AMQP)"),
        (name = "access", description = "API tokens and device credentials (admin)"),
        (name = "artifacts", description = "Firmware bytes by SHA-256: upload, download with ranges, signed links"),
        (name = "operations", description = "Health, readiness, metrics, this document"),
    )
)]
pub(crate) struct ApiDoc;

/// Declares the bearer scheme and, on every operation that names a role with it, the answers
/// the authorisation layer gives: 401, 403, and 415 for a body that is not JSON.
pub(crate) fn secure(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        crate::auth::SCHEME,
        SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
    );
    // An artifact download checks its caller itself: a signed link (`expires` and `sig` in the
    // query) or a bearer token of a commanded device, its gateway or an operator (ADR 0037).
    components.add_security_scheme(
        "download_link",
        SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::with_description(
            "sig",
            "A signed download link's signature, with its `expires`; or instead a bearer \
             token of a device a running rollout commanded to install the artifact, of its \
             gateway, or of an operator",
        ))),
    );
    let error = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Error")))
                    .build(),
            )
            .build()
    };
    for item in doc.paths.paths.values_mut() {
        for (op, changes) in [
            (&mut item.get, false),
            (&mut item.post, true),
            (&mut item.delete, true),
        ] {
            let Some(op) = op.as_mut() else { continue };
            if op.security.as_ref().is_none_or(Vec::is_empty) {
                continue;
            }
            let responses = &mut op.responses.responses;
            responses.insert(
                "401".into(),
                error("No valid bearer token (missing, unknown, revoked or expired)").into(),
            );
            responses.insert("403".into(), error("The token's role may not").into());
            if changes {
                responses.insert(
                    "415".into(),
                    error(
                        "A body that is not application/json (an upload: application/octet-stream)",
                    )
                    .into(),
                );
            }
        }
    }
}

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
        (name = "operations", description = "Health, readiness, metrics, this document"),
    )
)]
pub(crate) struct ApiDoc;

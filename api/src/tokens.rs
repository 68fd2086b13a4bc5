//! Issuing and revoking access: API tokens (`/v1/tokens`, admin), device credentials
//! (`POST /v1/devices`, admin) and gateway credentials (`POST /v1/gateways`, admin). Each change is an event in `ota.access-events` (who, what role,
//! by whom) and a row in the credential store, written together: the row commits only once
//! Kafka holds the event. The secret is answered once and kept nowhere.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use otaledger_domain::access::Role;
use otaledger_domain::events::{DeviceAttached, TargetSelector, TokenIssued, TokenRevoked};
use otaledger_domain::ids::new_trace_id;
use otaledger_domain::json_schema;
use otaledger_domain::{Event, Payload};
use otaledger_ledger::amqp_admin::RabbitAdmin;
use otaledger_ledger::kafka::EventProducer;
use otaledger_ledger::mqtt_admin::MqttAdmin;
use otaledger_projections::access::{self, TokenRow};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{RefOr, Schema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Principal;
use crate::{ApiError, AppState, ErrorBody};

/// The prefix of otaledger's own MQTT logins (`otaledger-admin`, `otaledger-service`): no device
/// may take it.
const RESERVED_PREFIX: &str = "otaledger-";

/// The longest token name, in characters.
const MAX_NAME_LEN: usize = 128;
/// The longest lifetime a token may be given (ten years).
const MAX_EXPIRES_IN_S: i64 = 10 * 366 * 86_400;

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(revoke))
        .routes(routes!(provision_gateway_route))
}

/// The brokers whose logins follow the credential store: device logins in Mosquitto (ADR
/// 0026), gateway users in RabbitMQ (ADR 0029). `None`: that broker is not told.
#[derive(Debug, Clone, Copy, Default)]
pub struct Brokers<'a> {
    pub mqtt: Option<&'a MqttAdmin>,
    pub amqp: Option<&'a RabbitAdmin>,
}

/// Why issuing or revoking failed.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error(transparent)]
    Store(#[from] otaledger_projections::Error),
    #[error("appending the access event: {0}")]
    Ledger(#[from] otaledger_ledger::Error),
    /// The MQTT broker did not take the device's login (ADR 0026).
    #[error("the device's MQTT login: {0}")]
    Broker(#[from] otaledger_ledger::mqtt_admin::AdminError),
    /// RabbitMQ did not take the gateway's user (ADR 0029).
    #[error("the gateway's RabbitMQ user: {0}")]
    GatewayBroker(#[from] otaledger_ledger::amqp_admin::AdminError),
    /// A device may only be attached to a gateway that holds a live credential.
    #[error("{0:?} is not a provisioned gateway (provision it first: POST /v1/gateways)")]
    UnknownGateway(String),
}

impl From<AccessError> for ApiError {
    fn from(e: AccessError) -> Self {
        match e {
            AccessError::Store(otaledger_projections::Error::Conflict(reason)) => ApiError {
                status: StatusCode::CONFLICT,
                error: "conflict",
                reason,
            },
            e @ AccessError::UnknownGateway(_) => ApiError {
                status: StatusCode::CONFLICT,
                error: "unknown_gateway",
                reason: e.to_string(),
            },
            e => ApiError::unavailable(&e),
        }
    }
}

/// A token as issued: the secret is here and nowhere else.
#[derive(Serialize, utoipa::ToSchema)]
pub struct IssuedToken {
    /// `Authorization: Bearer <token>`. Shown once.
    pub token: String,
    #[serde(flatten)]
    pub row: TokenRow,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("row", &self.row)
            .finish_non_exhaustive()
    }
}

/// Issues a token (or, with [`Role::Device`], a device credential named by the device id),
/// confined to the devices `scope` selects when given (ADR 0031).
pub async fn issue(
    pool: &PgPool,
    producer: &EventProducer,
    name: &str,
    role: Role,
    expires_at: Option<DateTime<Utc>>,
    issued_by: &str,
    scope: Option<&TargetSelector>,
) -> Result<IssuedToken, AccessError> {
    let minted = access::mint();
    let mut tx = pool
        .begin()
        .await
        .map_err(|source| otaledger_projections::Error::Db {
            context: "beginning to issue a token",
            source,
        })?;
    let row = access::insert(&mut tx, &minted, name, role, expires_at, issued_by, scope).await?;
    let event = Event::now(
        Payload::TokenIssued(TokenIssued {
            token_id: row.token_id.clone(),
            name: row.name.clone(),
            role: row.role.clone(),
            expires_at: row.expires_at.map(|t| t.timestamp_micros()),
            issued_by: issued_by.to_owned(),
            scope: row.scope.as_ref().map(serde_json::Value::to_string),
        }),
        new_trace_id(),
    );
    producer.append(&event).await?;
    tx.commit()
        .await
        .map_err(|source| otaledger_projections::Error::Db {
            context: "committing a token",
            source,
        })?;
    Ok(IssuedToken {
        token: minted.token,
        row,
    })
}

fn reserved(name: &str) -> Result<(), AccessError> {
    // otaledger's own broker logins share the namespace of device and gateway logins.
    if name.starts_with(RESERVED_PREFIX) {
        return Err(otaledger_projections::Error::Conflict(format!(
            "ids starting with {RESERVED_PREFIX:?} are reserved for otaledger's own logins"
        ))
        .into());
    }
    Ok(())
}

fn db(context: &'static str) -> impl FnOnce(sqlx::Error) -> AccessError {
    move |source| otaledger_projections::Error::Db { context, source }.into()
}

/// Provisions `device`: its credential (a token of role `device` named by its id) and, with the
/// broker's admin login, its MQTT login with that credential as the password, so the broker
/// admits it (ADR 0026). When the broker does not take the login the credential is revoked
/// again and the error returned: a device is provisioned on every channel or on none. With
/// `replace`, a live credential of the device is revoked first instead of being a conflict.
/// `gateway` attaches it to the gateway that will report for it (which must be provisioned);
/// `None` makes it a device that reports directly (ADR 0029).
pub async fn provision_device(
    pool: &PgPool,
    producer: &EventProducer,
    brokers: Brokers<'_>,
    device: &str,
    gateway: Option<&str>,
    issued_by: &str,
    replace: bool,
) -> Result<IssuedToken, AccessError> {
    reserved(device)?;
    if let Some(gateway) = gateway {
        let mut conn = pool.acquire().await.map_err(db("checking a gateway"))?;
        if !access::is_live(&mut conn, gateway, Role::Gateway).await? {
            return Err(AccessError::UnknownGateway(gateway.to_owned()));
        }
    }
    if replace {
        revoke_named(pool, producer, brokers, device, issued_by).await?;
    }
    let issued = issue(pool, producer, device, Role::Device, None, issued_by, None).await?;
    if let Some(broker) = brokers.mqtt {
        if let Err(e) = broker.add_device(device, &issued.token).await {
            revoke_named(pool, producer, Brokers::default(), device, issued_by).await?;
            return Err(e.into());
        }
    }
    attach(pool, producer, device, gateway, issued_by).await?;
    Ok(issued)
}

/// Attaches `device` to `gateway` (or makes it direct) and records the change in the ledger;
/// nothing is recorded when nothing changes.
pub async fn attach(
    pool: &PgPool,
    producer: &EventProducer,
    device: &str,
    gateway: Option<&str>,
    by: &str,
) -> Result<(), AccessError> {
    let mut tx = pool
        .begin()
        .await
        .map_err(db("beginning to attach a device"))?;
    if let Some(gateway) = gateway {
        if !access::is_live(&mut tx, gateway, Role::Gateway).await? {
            return Err(AccessError::UnknownGateway(gateway.to_owned()));
        }
    }
    let before = access::attach(&mut tx, device, gateway, by).await?;
    if before.as_deref() == gateway {
        return Ok(());
    }
    let event = Event::now(
        Payload::DeviceAttached(DeviceAttached {
            device_id: device.to_owned(),
            gateway_id: gateway.map(str::to_owned),
            attached_by: by.to_owned(),
        }),
        new_trace_id(),
    );
    producer.append(&event).await?;
    tx.commit().await.map_err(db("committing an attachment"))?;
    Ok(())
}

/// Provisions `gateway`: its credential (a token of role `gateway` named by its id) and its
/// RabbitMQ user with that credential as the password, allowed to publish reports and read
/// its own command queue (ADR 0029). Without RabbitMQ's management login nothing is issued:
/// a gateway credential the broker does not know would be of no use.
pub async fn provision_gateway(
    pool: &PgPool,
    producer: &EventProducer,
    brokers: Brokers<'_>,
    gateway: &str,
    issued_by: &str,
    replace: bool,
) -> Result<IssuedToken, AccessError> {
    reserved(gateway)?;
    let broker = brokers
        .amqp
        .ok_or(otaledger_ledger::amqp_admin::AdminError::NotConfigured)?;
    if replace {
        revoke_named(pool, producer, brokers, gateway, issued_by).await?;
    }
    let issued = issue(
        pool,
        producer,
        gateway,
        Role::Gateway,
        None,
        issued_by,
        None,
    )
    .await?;
    if let Err(e) = broker.add_gateway(gateway, &issued.token).await {
        revoke_named(pool, producer, Brokers::default(), gateway, issued_by).await?;
        return Err(e.into());
    }
    Ok(issued)
}

/// Revokes the live token of `name`; `None` when it has none. A device's credential also loses
/// its MQTT login, a gateway's its RabbitMQ user (each broker closes its connections), before
/// the revocation commits.
pub async fn revoke_named(
    pool: &PgPool,
    producer: &EventProducer,
    brokers: Brokers<'_>,
    name: &str,
    revoked_by: &str,
) -> Result<Option<TokenRow>, AccessError> {
    let mut tx = pool
        .begin()
        .await
        .map_err(|source| otaledger_projections::Error::Db {
            context: "beginning to revoke a token",
            source,
        })?;
    let Some(row) = access::revoke(&mut tx, name).await? else {
        return Ok(None);
    };
    if let (Some(broker), true) = (brokers.mqtt, row.role == Role::Device.as_str()) {
        broker.remove_device(name).await?;
    }
    if let (Some(broker), true) = (brokers.amqp, row.role == Role::Gateway.as_str()) {
        broker.remove_gateway(name).await?;
    }
    let event = Event::now(
        Payload::TokenRevoked(TokenRevoked {
            token_id: row.token_id.clone(),
            name: row.name.clone(),
            revoked_by: revoked_by.to_owned(),
        }),
        new_trace_id(),
    );
    producer.append(&event).await?;
    tx.commit()
        .await
        .map_err(|source| otaledger_projections::Error::Db {
            context: "committing a revocation",
            source,
        })?;
    Ok(Some(row))
}

/// A token to issue.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenIn {
    name: String,
    role: String,
    #[serde(default, deserialize_with = "otaledger_domain::json_number::opt_int")]
    expires_in_s: Option<i64>,
    #[serde(default)]
    scope: Option<otaledger_domain::rollout_request::SelectorIn>,
}

impl utoipa::PartialSchema for TokenIn {
    fn schema() -> RefOr<Schema> {
        let roles = Role::ALL
            .into_iter()
            .filter(|r| !matches!(r, Role::Device | Role::Gateway))
            .map(Role::as_str);
        let object = json_schema::closed_object("An API token to issue.")
            .property(
                "name",
                json_schema::text(MAX_NAME_LEN).description(Some(
                    "Who holds it (a person, a service); recorded as the actor of its requests.",
                )),
            )
            .required("name")
            .property("role", json_schema::one_of_words(roles))
            .required("role")
            .property(
                "expires_in_s",
                json_schema::or_null(json_schema::integer(&(1..=MAX_EXPIRES_IN_S)), Type::Integer)
                    .description(Some("Seconds until it expires; absent or null: never.")),
            )
            // A viewer, operator or approver token confined to the devices this selector
            // selects (a rollout's selector); absent: the whole fleet (ADR 0031).
            .property(
                "scope",
                <otaledger_domain::rollout_request::SelectorIn as utoipa::PartialSchema>::schema(),
            );
        // An admin manages tokens and devices fleet-wide: it takes no scope (`properties`
        // holds only for keys present, so "no scope" reads as "scope, if any, is null").
        let scopable = json_schema::one_of_words(["viewer", "operator", "approver"]);
        let not_admin = utoipa::openapi::schema::ObjectBuilder::new().property("role", scopable);
        let unscoped = utoipa::openapi::schema::ObjectBuilder::new().property(
            "scope",
            utoipa::openapi::schema::ObjectBuilder::new().schema_type(Type::Null),
        );
        utoipa::openapi::schema::AllOfBuilder::new()
            .item(object)
            .item(
                utoipa::openapi::schema::AnyOfBuilder::new()
                    .item(not_admin)
                    .item(unscoped),
            )
            .into()
    }
}
impl utoipa::ToSchema for TokenIn {}

/// Issue an API token; the answer holds it, once.
#[utoipa::path(post, path = "/v1/tokens", operation_id = "createToken",
    security(("token" = ["admin"])), tag = "access",
    request_body(content = TokenIn, content_type = "application/json"),
    responses(
        (status = 201, description = "Issued; the token is shown this once", body = IssuedToken),
        (status = 400, description = "A bad request", body = ErrorBody),
        (status = 409, description = "The name has a live token", body = ErrorBody),
        crate::Unavailable,
    ))]
async fn create(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let input: TokenIn = crate::body::object(&body)?;
    let blank = input.name.trim().is_empty();
    if blank || input.name.chars().count() > MAX_NAME_LEN || input.name.contains('\0') {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!("name: must be 1 to {MAX_NAME_LEN} characters, not blank"),
        ));
    }
    let role: Role = input
        .role
        .parse()
        .ok()
        .filter(|r| !matches!(r, Role::Device | Role::Gateway))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_field",
                "role: must be viewer, operator, approver or admin",
            )
        })?;
    let expires_at = match input.expires_in_s {
        None => None,
        Some(s) if (1..=MAX_EXPIRES_IN_S).contains(&s) => {
            Some(Utc::now() + chrono::Duration::seconds(s))
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_field",
                format!("expires_in_s: must be 1 to {MAX_EXPIRES_IN_S}"),
            ))
        }
    };
    let scope = match input.scope {
        None => None,
        Some(_) if role == Role::Admin => {
            return Err(ApiError::bad_request(
                "invalid_field",
                "scope: an admin manages tokens and devices fleet-wide, so it cannot be scoped",
            ))
        }
        Some(sel) => Some(
            otaledger_domain::rollout_request::parse_selector(sel)
                .map_err(|e| ApiError::bad_request("invalid_field", format!("scope: {e}")))?,
        ),
    };
    let issued = issue(
        &s.pool,
        &s.producer,
        &input.name,
        role,
        expires_at,
        &who.name,
        scope.as_ref(),
    )
    .await?;
    Ok((StatusCode::CREATED, Json(issued)).into_response())
}

/// List the tokens and device credentials (never their secrets).
#[utoipa::path(get, path = "/v1/tokens", operation_id = "listTokens",
    security(("token" = ["admin"])), tag = "access",
    responses(
        (status = 200, description = "Every token, newest first", body = Vec<TokenRow>),
        crate::Unavailable,
    ))]
async fn list(State(s): State<AppState>) -> Result<Json<Vec<TokenRow>>, ApiError> {
    Ok(Json(access::list(&s.pool, false).await?))
}

fn name_schema() -> ObjectBuilder {
    json_schema::text(MAX_NAME_LEN)
}

/// `{name}` of a token.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // documents the path; the handler reads `Path<String>`
struct TokenName {
    /// The token's name (a device's id for its credential).
    #[param(schema_with = name_schema, required = true)]
    name: String,
}

/// Revoke the live token of a name (a device's credential by its id); within a second every
/// API instance refuses it.
#[utoipa::path(delete, path = "/v1/tokens/{name}", operation_id = "revokeToken",
    security(("token" = ["admin"])), tag = "access", params(TokenName),
    responses(
        (status = 200, description = "Revoked", body = TokenRow),
        (status = 404, description = "No live token of that name", body = ErrorBody),
        crate::Unavailable,
    ))]
async fn revoke(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Json<TokenRow>, ApiError> {
    revoke_named(&s.pool, &s.producer, s.brokers(), &name, &who.name)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no live token named {name:?}")))
}

/// A device to provision.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeviceIn {
    device_id: String,
    #[serde(default)]
    gateway_id: Option<String>,
}

impl utoipa::PartialSchema for DeviceIn {
    fn schema() -> RefOr<Schema> {
        json_schema::closed_object("A device to give a credential.")
            .property("device_id", json_schema::device_id())
            .required("device_id")
            .property(
                "gateway_id",
                json_schema::or_null(json_schema::device_id(), Type::String).description(Some(
                    "The provisioned gateway that reports for it; absent or null: it reports \
                     directly.",
                )),
            )
            .into()
    }
}
impl utoipa::ToSchema for DeviceIn {}

/// Provision a device: its credential (a token of role `device`, named by its id), once. Its
/// reports over HTTP need it; revoke it with `DELETE /v1/tokens/{device id}`.
#[utoipa::path(post, path = "/v1/devices", operation_id = "provisionDevice",
    security(("token" = ["admin"])), tag = "access",
    request_body(content = DeviceIn, content_type = "application/json"),
    responses(
        (status = 201, description = "Provisioned; the credential is shown this once", body = IssuedToken),
        (status = 400, description = "A bad device id", body = ErrorBody),
        (status = 409, description = "The device has a live credential", body = ErrorBody),
        crate::Unavailable,
    ))]
pub(crate) async fn provision(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let input: DeviceIn = crate::body::object(&body)?;
    crate::params::id("device", &input.device_id)?;
    if let Some(g) = &input.gateway_id {
        crate::params::id("gateway", g)?;
    }
    let issued = provision_device(
        &s.pool,
        &s.producer,
        s.brokers(),
        &input.device_id,
        input.gateway_id.as_deref(),
        &who.name,
        false,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(issued)).into_response())
}

/// A gateway to provision.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GatewayIn {
    gateway_id: String,
}

impl utoipa::PartialSchema for GatewayIn {
    fn schema() -> RefOr<Schema> {
        json_schema::closed_object("An edge gateway to give a credential and a RabbitMQ user.")
            .property("gateway_id", json_schema::device_id())
            .required("gateway_id")
            .into()
    }
}
impl utoipa::ToSchema for GatewayIn {}

/// Provision an edge gateway: its credential (a token of role `gateway`, named by its id),
/// once, which is also the password of its RabbitMQ user. It may publish report batches for
/// the devices attached to it and read its own command queue; revoke it with
/// `DELETE /v1/tokens/{gateway id}`.
#[utoipa::path(post, path = "/v1/gateways", operation_id = "provisionGateway",
    security(("token" = ["admin"])), tag = "access",
    request_body(content = GatewayIn, content_type = "application/json"),
    responses(
        (status = 201, description = "Provisioned; the credential is shown this once", body = IssuedToken),
        (status = 400, description = "A bad gateway id", body = ErrorBody),
        (status = 409, description = "The gateway has a live credential", body = ErrorBody),
        crate::Unavailable,
    ))]
async fn provision_gateway_route(
    State(s): State<AppState>,
    Extension(who): Extension<Principal>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let input: GatewayIn = crate::body::object(&body)?;
    crate::params::id("gateway", &input.gateway_id)?;
    let issued = provision_gateway(
        &s.pool,
        &s.producer,
        s.brokers(),
        &input.gateway_id,
        &who.name,
        false,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(issued)).into_response())
}

//! Who is asking, and may they: every route that the OpenAPI document marks with the `token`
//! security scheme needs a bearer token whose role allows the role the route names (one list:
//! the document is derived from the routes, and this layer reads its roles from the document).
//! 401 without a valid token, 403 for a role that may not; both JSON, both counted. A
//! state-changing request with a body must be JSON (415 otherwise): no form post can reach it.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use otaledger_domain::access::Role;
use otaledger_ledger::metrics::REGISTRY;
use otaledger_projections::access::{self, Holder, Refusal};
use sqlx::PgPool;

use crate::{ApiError, AppState};

/// The name of the bearer scheme in the OpenAPI document.
pub const SCHEME: &str = "token";

/// How long a verified (or refused) token is believed without asking the store again: a
/// revocation reaches every API instance within this time.
const FRESH_FOR: Duration = Duration::from_millis(500);
/// Most tokens remembered; past it the memory starts afresh.
const MAX_REMEMBERED: usize = 10_000;

/// The authenticated caller of a request, in its extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's name (an operator, a service) or, for a device credential, the device id.
    pub name: String,
    pub role: Role,
    pub token_id: String,
    /// The devices the token is confined to (ADR 0031); `None`: the whole fleet.
    pub scope: Option<otaledger_domain::events::TargetSelector>,
}

/// What the store answered for a token, and when.
type Remembered = (Instant, Result<Holder, Refusal>);

/// Checks presented tokens against the credential store, remembering answers briefly, and
/// OIDC bearer tokens against their issuer's keys when configured (ADR 0030).
pub struct Authenticator {
    pool: PgPool,
    recent: Mutex<HashMap<String, Remembered>>,
    oidc: Option<crate::oidc::OidcVerifier>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").finish_non_exhaustive()
    }
}

impl Authenticator {
    #[must_use]
    pub fn new(pool: PgPool) -> Self {
        Authenticator {
            pool,
            recent: Mutex::new(HashMap::new()),
            oidc: None,
        }
    }

    /// Also accepts OIDC bearer tokens that `verifier` verifies.
    #[must_use]
    pub fn with_oidc(mut self, verifier: crate::oidc::OidcVerifier) -> Self {
        self.oidc = Some(verifier);
        self
    }

    async fn check(&self, token: &str) -> Result<Result<Holder, Refusal>, ApiError> {
        if let Ok(recent) = self.recent.lock() {
            if let Some((at, answer)) = recent.get(token) {
                if at.elapsed() < FRESH_FOR {
                    return Ok(answer.clone());
                }
            }
        }
        let answer = access::verify(&self.pool, token)
            .await
            .map_err(|e| ApiError::unavailable(&e))?;
        // Only answers for tokens of our form are remembered: junk needs no database call, and
        // remembering it would let anyone flood the cache out.
        if access::split(token).is_none() {
            return Ok(answer);
        }
        if let Ok(mut recent) = self.recent.lock() {
            if recent.len() >= MAX_REMEMBERED {
                recent.clear();
            }
            recent.insert(token.to_owned(), (Instant::now(), answer.clone()));
        }
        Ok(answer)
    }
}

/// A path's documented methods and the role each needs (`None`: open).
type Operations = Vec<(Method, Option<Role>)>;

/// The role each documented operation needs (`None`: open), by path and then method, read from
/// the document (keyed so that a request's lookup allocates nothing).
static REQUIRED: LazyLock<HashMap<String, Operations>> = LazyLock::new(|| {
    let doc = serde_json::to_value(crate::openapi()).unwrap_or_default();
    let mut required: HashMap<String, Operations> = HashMap::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for (method, op) in item.as_object().into_iter().flatten() {
            let role = op["security"][0][SCHEME][0]
                .as_str()
                .and_then(|r| r.parse().ok());
            if let Ok(method) = Method::from_bytes(method.to_ascii_uppercase().as_bytes()) {
                required
                    .entry(path.clone())
                    .or_default()
                    .push((method, role));
            }
        }
    }
    required
});

/// What the document says of a request: `None` when it does not have the path at all,
/// `Some(None)` when the request may pass without a token (an open operation, or a method the
/// path does not have, which the router answers 405 without running a handler),
/// `Some(Some(role))` for a secured operation. HEAD is GET's.
fn documented(method: &Method, path: &str) -> Option<Option<Role>> {
    let method = if method == Method::HEAD {
        &Method::GET
    } else {
        method
    };
    Some(
        REQUIRED
            .get(path)?
            .iter()
            .find(|(m, _)| m == method)
            .and_then(|(_, role)| *role),
    )
}

/// Whether the document has `method` (HEAD as GET) on `path`.
fn has_method(method: &Method, path: &str) -> bool {
    let method = if method == Method::HEAD {
        &Method::GET
    } else {
        method
    };
    REQUIRED
        .get(path)
        .is_some_and(|ops| ops.iter().any(|(m, _)| m == method))
}

/// The role a route needs; `None` for an open route.
#[must_use]
pub fn required_role(method: &Method, path: &str) -> Option<Role> {
    documented(method, path).flatten()
}

/// A refusal, counted by status and error.
pub(crate) fn refused(status: StatusCode, error: &'static str, reason: String) -> Response {
    REGISTRY
        .counter(
            "otaledger_http_auth_refused_total",
            "Requests refused by authentication (401), authorisation (403) or media type (415)",
            &[("status", status.as_str()), ("error", error)],
        )
        .inc();
    let mut response = ApiError {
        status,
        error,
        reason,
    }
    .into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"otaledger\""),
        );
    }
    response
}

/// Whether a request carries a body (a form post always does).
fn has_body(req: &Request) -> bool {
    use axum::body::HttpBody;
    let headers = req.headers();
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .is_some_and(|n| n > 0)
        || req.body().size_hint().lower() > 0
}

/// The media type each operation's body is documented with, by path and then method, read
/// from the document as the roles are (an artifact upload: `application/octet-stream`). Never a
/// type an HTML form can send (`application/x-www-form-urlencoded`, `multipart/form-data`,
/// `text/plain`): such a route would be reachable by a cross-site form post, so its body is
/// taken as JSON instead.
static BODY_TYPES: LazyLock<HashMap<String, Vec<(Method, String)>>> = LazyLock::new(|| {
    const FORM_TYPES: [&str; 3] = [
        "application/x-www-form-urlencoded",
        "multipart/form-data",
        "text/plain",
    ];
    let doc = serde_json::to_value(crate::openapi()).unwrap_or_default();
    let mut types: HashMap<String, Vec<(Method, String)>> = HashMap::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for (method, op) in item.as_object().into_iter().flatten() {
            let declared = op["requestBody"]["content"]
                .as_object()
                .and_then(|c| c.keys().next())
                .filter(|t| !FORM_TYPES.contains(&t.as_str()));
            if let (Some(t), Ok(m)) = (
                declared,
                Method::from_bytes(method.to_ascii_uppercase().as_bytes()),
            ) {
                types.entry(path.clone()).or_default().push((m, t.clone()));
            }
        }
    }
    types
});

fn media_type(req: &Request) -> Option<&str> {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::trim)
}

/// Whether the body's declared type is the one the operation documents (JSON by default).
fn is_json(req: &Request) -> bool {
    let documented = req
        .extensions()
        .get::<MatchedPath>()
        .and_then(|p| BODY_TYPES.get(p.as_str()))
        .and_then(|ops| ops.iter().find(|(m, _)| m == req.method()))
        .map(|(_, t)| t.as_str());
    let wanted = documented.unwrap_or("application/json");
    media_type(req).is_some_and(|m| m.eq_ignore_ascii_case(wanted))
}

/// The refusal of a request that is not GET and carries something other than JSON: a
/// declared type must be JSON, an undeclared one is allowed only on an empty body.
fn not_json(req: &Request) -> Option<Response> {
    let declared = req.headers().contains_key(header::CONTENT_TYPE);
    (req.method() != Method::GET && (declared || has_body(req)) && !is_json(req)).then(|| {
        refused(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "a request body must be of the type /openapi.json documents for the operation \
             (application/json; an artifact upload: application/octet-stream)"
                .into(),
        )
    })
}

/// Who presents the bearer token of `headers` (an otaledger token, or an OIDC token when an
/// issuer is configured); the refusal (401, or 503 when the store cannot be asked) otherwise.
/// The layer's first step, and the whole of it for a route that checks its caller itself (an
/// artifact download, which a signed link opens too).
pub(crate) async fn identify(s: &AppState, headers: &HeaderMap) -> Result<Holder, Response> {
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let Some(token) = presented else {
        return Err(refused(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "this route needs a bearer token (Authorization: Bearer …)".into(),
        ));
    };
    match (
        &s.auth.oidc,
        crate::oidc::OidcVerifier::looks_like_jwt(token),
    ) {
        (Some(oidc), true) => match oidc.verify(token) {
            Ok(subject) => Ok(Holder {
                token_id: subject.token_id,
                name: subject.name,
                role: subject.role,
                scope: None,
            }),
            Err(reason) => Err(refused(StatusCode::UNAUTHORIZED, "unauthenticated", reason)),
        },
        _ => match s.auth.check(token).await {
            Ok(Ok(holder)) => Ok(holder),
            Ok(Err(why)) => {
                let reason = match why {
                    Refusal::Malformed => "the bearer token is not an otaledger token",
                    Refusal::Unknown => "the bearer token is not known",
                    Refusal::Revoked => "the bearer token was revoked",
                    Refusal::Expired => "the bearer token has expired",
                };
                Err(refused(
                    StatusCode::UNAUTHORIZED,
                    "unauthenticated",
                    reason.into(),
                ))
            }
            Err(e) => Err(e.into_response()),
        },
    }
}

/// The layer: authenticates and authorises a request for a secured route.
pub(crate) async fn authorize(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    let path = req.extensions().get::<MatchedPath>().map(|p| p.as_str());
    let required = match path.map(|p| documented(req.method(), p)) {
        Some(Some(Some(role))) => role,
        // An open route that changes state (a device asking to be admitted, ADR 0032) takes
        // JSON only, like every other.
        Some(Some(None)) => {
            // A method the path does not have goes on to the router's 405.
            let undocumented = path.is_some_and(|p| !has_method(req.method(), p));
            return match not_json(&req).filter(|_| !undocumented) {
                Some(refusal) => refusal,
                None => next.run(req).await,
            };
        }
        // Closed unless documented: a route added without `routes!` has no role in the
        // document, so no one may use it (and the route matrix test would not see it).
        _ => {
            tracing::error!(method = %req.method(), path = ?path, "a route missing from the OpenAPI document was refused");
            return refused(
                StatusCode::FORBIDDEN,
                "undocumented_route",
                "this route is not in /openapi.json, so no role may use it".into(),
            );
        }
    };
    if !s.authenticate {
        req.extensions_mut().insert(Principal {
            name: "unauthenticated".into(),
            role: Role::Admin,
            token_id: String::new(),
            scope: None,
        });
        return next.run(req).await;
    }
    let holder = match identify(&s, req.headers()).await {
        Ok(holder) => holder,
        Err(refusal) => return refusal,
    };
    if !holder.role.allows(required) {
        let path = req
            .extensions()
            .get::<MatchedPath>()
            .map_or("", MatchedPath::as_str);
        return refused(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "{} {path} needs the {required} role; this token has {}",
                req.method(),
                holder.role
            ),
        );
    }
    if holder.scope.is_some() {
        let path = req
            .extensions()
            .get::<MatchedPath>()
            .map_or("", MatchedPath::as_str);
        if !crate::scope::scope_aware(req.method(), path) {
            let refusal = crate::scope::fleet_wide(req.method(), path);
            return refused(refusal.status, refusal.error, refusal.reason);
        }
    }
    // Checked once the caller and its reach are known, so a stranger learns only that it needs
    // a token, and a scoped token that the route is outside its scope.
    if let Some(refusal) = not_json(&req) {
        return refusal;
    }
    req.extensions_mut().insert(Principal {
        name: holder.name,
        role: holder.role,
        token_id: holder.token_id,
        scope: holder.scope,
    });
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_documented_operations_are_open_or_secured() {
        assert_eq!(documented(&Method::GET, "/healthz"), Some(None));
        assert_eq!(documented(&Method::HEAD, "/healthz"), Some(None));
        assert_eq!(
            documented(&Method::POST, "/v1/rollouts"),
            Some(Some(Role::Operator))
        );
        assert_eq!(required_role(&Method::GET, "/metrics"), Some(Role::Viewer));
        // A method the path lacks passes to the router's 405.
        assert_eq!(documented(&Method::DELETE, "/healthz"), Some(None));
        // A path not in the document: closed, not open.
        assert_eq!(documented(&Method::GET, "/v1/undocumented"), None);
        assert!(has_method(&Method::HEAD, "/v1/artifacts/{sha256}"));
        assert!(has_method(&Method::POST, "/v1/artifacts"));
        assert!(!has_method(&Method::TRACE, "/v1/artifacts"));
        assert!(!has_method(&Method::GET, "/v1/undocumented"));
        // Body types come from the document: raw bytes for an upload, JSON elsewhere.
        let body_type = |m: Method, p: &str| {
            BODY_TYPES
                .get(p)
                .and_then(|ops| ops.iter().find(|(om, _)| *om == m))
                .map(|(_, t)| t.clone())
        };
        assert_eq!(
            body_type(Method::POST, "/v1/artifacts").as_deref(),
            Some("application/octet-stream")
        );
        assert_eq!(
            body_type(Method::POST, "/v1/rollouts").as_deref(),
            Some("application/json")
        );
    }
}

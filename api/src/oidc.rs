//! OpenID Connect bearer tokens (ADR 0030): a JWT signed by the configured issuer with one of
//! the keys of its JWKS, for the configured audience, unexpired, whose role claim names an
//! operator role. Only asymmetric algorithms: a key set never holds a shared secret, and a
//! token cannot choose to be checked against a public key used as an HMAC secret (the key's
//! family must match the token's algorithm).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use otaledger_domain::access::Role;
use otaledger_ledger::config::OidcConfig;
use tokio::sync::Notify;

/// Clock skew allowed between the issuer and this server.
const LEEWAY_S: u64 = 30;

/// Most bytes of a fetched key set.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// How long one fetch of the key set may take.
const FETCH_WITHIN: Duration = Duration::from_secs(10);
/// The least time between two fetches asked for by tokens naming an unknown key: a stranger
/// sending made-up key ids must not turn the API into a client hammering the issuer.
const MIN_REFETCH: Duration = Duration::from_secs(10);

/// Why an OIDC configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OidcSetupError {
    #[error("oidc.{0} must be set when oidc.issuer is")]
    Missing(&'static str),
    #[error("oidc.jwks_file and oidc.jwks_url are two sources of the same keys: set one")]
    TwoSources,
    #[error("reading the JWKS {path}: {error}")]
    Jwks { path: String, error: String },
}

/// Who a verified token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub name: String,
    pub role: Role,
    pub token_id: String,
}

/// The issuer's keys, as last read, and when the file was written.
struct Keys {
    set: Arc<JwkSet>,
    modified: Option<SystemTime>,
}

/// Where the issuer's keys come from.
enum Source {
    /// A file, read again when its modification time changes.
    File(PathBuf),
    /// The issuer's `jwks_uri`, fetched by a task; a token naming an unknown key wakes it.
    Url { refetch: Arc<Notify> },
}

/// Verifies OIDC bearer tokens against the configured issuer.
pub struct OidcVerifier {
    issuer: String,
    audience: String,
    role_claim: String,
    source: Source,
    keys: Arc<Mutex<Keys>>,
}

impl std::fmt::Debug for OidcVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcVerifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

fn read_keys(path: &PathBuf) -> Result<Keys, OidcSetupError> {
    let failed = |error: String| OidcSetupError::Jwks {
        path: path.display().to_string(),
        error,
    };
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let text = std::fs::read_to_string(path).map_err(|e| failed(e.to_string()))?;
    let set: JwkSet = serde_json::from_str(&text).map_err(|e| failed(e.to_string()))?;
    Ok(Keys {
        set: Arc::new(set),
        modified,
    })
}

async fn fetch_keys(url: &str, ca: Option<&str>) -> Result<Keys, OidcSetupError> {
    let failed = |error: String| OidcSetupError::Jwks {
        path: otaledger_ledger::config::redact_url(url),
        error,
    };
    let body = otaledger_ledger::http_get::get(url, ca, MAX_JWKS_BYTES, FETCH_WITHIN)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let set: JwkSet = serde_json::from_slice(&body).map_err(|e| failed(e.to_string()))?;
    Ok(Keys {
        set: Arc::new(set),
        modified: None,
    })
}

/// Fetches the key set every `every`, and when woken (not sooner than [`MIN_REFETCH`] after
/// the last fetch), until the verifier is dropped. A failed fetch keeps the keys it had.
async fn refresh(
    keys: std::sync::Weak<Mutex<Keys>>,
    refetch: Arc<Notify>,
    url: String,
    ca: Option<String>,
    every: Duration,
) {
    let mut last = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = refetch.notified() => {
                tokio::time::sleep_until(last + MIN_REFETCH).await;
            }
        }
        last = tokio::time::Instant::now();
        let fetched = fetch_keys(&url, ca.as_deref()).await;
        let Some(keys) = keys.upgrade() else { return };
        match fetched {
            Ok(fresh) => {
                if let Ok(mut k) = keys.lock() {
                    *k = fresh;
                }
            }
            Err(e) => tracing::warn!(error = %e, "kept the previous OIDC keys"),
        }
    }
}

impl OidcVerifier {
    /// `None` while `issuer` is empty (OIDC off). With `jwks_url`, the keys are fetched before
    /// this returns (an issuer that cannot be reached at start is an error, as an unreadable
    /// file is) and then kept fresh by a task of the current Tokio runtime.
    pub async fn new(cfg: &OidcConfig) -> Result<Option<Self>, OidcSetupError> {
        if cfg.issuer.is_empty() {
            return Ok(None);
        }
        if cfg.audience.is_empty() {
            return Err(OidcSetupError::Missing("audience"));
        }
        let (source, keys) = match (cfg.jwks_file.is_empty(), cfg.jwks_url.is_empty()) {
            (true, true) => return Err(OidcSetupError::Missing("jwks_file or oidc.jwks_url")),
            (false, false) => return Err(OidcSetupError::TwoSources),
            (false, true) => {
                let path = PathBuf::from(&cfg.jwks_file);
                let keys = read_keys(&path)?;
                (Source::File(path), Arc::new(Mutex::new(keys)))
            }
            (true, false) => {
                let ca = (!cfg.jwks_ca.is_empty()).then(|| cfg.jwks_ca.clone());
                let keys = Arc::new(Mutex::new(fetch_keys(&cfg.jwks_url, ca.as_deref()).await?));
                let refetch = Arc::new(Notify::new());
                tokio::spawn(refresh(
                    Arc::downgrade(&keys),
                    refetch.clone(),
                    cfg.jwks_url.clone(),
                    ca,
                    Duration::from_secs(cfg.jwks_refresh_s.max(1)),
                ));
                (Source::Url { refetch }, keys)
            }
        };
        Ok(Some(OidcVerifier {
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            role_claim: cfg.role_claim.clone(),
            source,
            keys,
        }))
    }

    /// Whether a presented bearer string is a JWT (three dot-separated parts) at all.
    #[must_use]
    pub fn looks_like_jwt(token: &str) -> bool {
        token.split('.').count() == 3 && token.starts_with("ey")
    }

    /// The key set: a file's is read again when the file changed (keys rotate without a
    /// restart), seen by its modification time (one `stat` a token, a microsecond beside the
    /// signature check); a URL's is what the refresh task fetched last.
    fn key_set(&self) -> Arc<JwkSet> {
        let Ok(mut keys) = self.keys.lock() else {
            return Arc::new(JwkSet { keys: Vec::new() });
        };
        if let Source::File(path) = &self.source {
            let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
            if modified != keys.modified {
                match read_keys(path) {
                    Ok(fresh) => *keys = fresh,
                    Err(e) => tracing::warn!(error = %e, "kept the previous OIDC keys"),
                }
            }
        }
        Arc::clone(&keys.set)
    }

    /// The token's subject and role, or why it is refused (said to the caller, so it names
    /// the check that failed and nothing of the keys).
    pub fn verify(&self, token: &str) -> Result<Subject, String> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| "the JWT's header does not read")?;
        if !matches!(
            header.alg,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
                | Algorithm::ES256
                | Algorithm::ES384
                | Algorithm::EdDSA
        ) {
            return Err(format!(
                "the JWT's algorithm {:?} is not accepted (only the issuer's public-key signatures are)",
                header.alg
            ));
        }
        let set = self.key_set();
        let jwk = match &header.kid {
            Some(kid) => set.find(kid),
            None if set.keys.len() == 1 => set.keys.first(),
            None => None,
        }
        .ok_or_else(|| {
            // The issuer may have rotated its keys: fetch them again (the task limits how often).
            if let Source::Url { refetch } = &self.source {
                refetch.notify_one();
            }
            "the JWT names no key of the issuer"
        })?;
        let key = DecodingKey::from_jwk(jwk).map_err(|_| "the issuer's key does not read")?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = LEEWAY_S;
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &key,
            &validation,
        )
        .map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::InvalidSignature => "the JWT's signature does not verify".to_owned(),
                ErrorKind::ExpiredSignature => "the JWT has expired".to_owned(),
                ErrorKind::ImmatureSignature => "the JWT is not valid yet".to_owned(),
                ErrorKind::InvalidAudience => "the JWT is for another audience".to_owned(),
                ErrorKind::InvalidIssuer => "the JWT is from another issuer".to_owned(),
                ErrorKind::MissingRequiredClaim(c) => format!("the JWT has no {c} claim"),
                ErrorKind::InvalidAlgorithm => {
                    "the JWT's algorithm does not match the issuer's key".to_owned()
                }
                _ => "the JWT does not verify".to_owned(),
            }
        })?;
        let claims = data.claims;
        let sub = claims
            .get("sub")
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty() && s.len() <= 256 && !s.contains('\0'))
            .ok_or("the JWT's sub claim is not a name")?;
        let role: Role = claims
            .get(&self.role_claim)
            .and_then(|v| v.as_str())
            .and_then(|r| r.parse().ok())
            .filter(|r| !matches!(r, Role::Device | Role::Gateway))
            .ok_or_else(|| {
                format!(
                    "the JWT's {} claim names no operator role (viewer, operator, approver, admin)",
                    self.role_claim
                )
            })?;
        Ok(Subject {
            // The actor recorded in the ledger: the issuer's subject, marked as such, so it
            // never collides with an otaledger token's name.
            name: format!("oidc:{sub}"),
            role,
            token_id: claims
                .get("jti")
                .and_then(|v| v.as_str())
                .unwrap_or_default()
                .chars()
                .take(128)
                .collect(),
        })
    }
}

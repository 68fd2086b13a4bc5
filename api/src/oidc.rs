//! OpenID Connect bearer tokens (ADR 0030): a JWT signed by the configured issuer with one of
//! the keys of its JWKS, for the configured audience, unexpired, whose role claim names an
//! operator role. Only asymmetric algorithms: a key set never holds a shared secret, and a
//! token cannot choose to be checked against a public key used as an HMAC secret (the key's
//! family must match the token's algorithm).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use otaledger_domain::access::Role;
use otaledger_ledger::config::OidcConfig;

/// Clock skew allowed between the issuer and this server.
const LEEWAY_S: u64 = 30;

/// Why an OIDC configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OidcSetupError {
    #[error("oidc.{0} must be set when oidc.issuer is")]
    Missing(&'static str),
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

/// Verifies OIDC bearer tokens against the configured issuer.
pub struct OidcVerifier {
    issuer: String,
    audience: String,
    role_claim: String,
    jwks_file: PathBuf,
    keys: Mutex<Keys>,
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

impl OidcVerifier {
    /// `None` while `issuer` is empty (OIDC off).
    pub fn new(cfg: &OidcConfig) -> Result<Option<Self>, OidcSetupError> {
        if cfg.issuer.is_empty() {
            return Ok(None);
        }
        if cfg.audience.is_empty() {
            return Err(OidcSetupError::Missing("audience"));
        }
        if cfg.jwks_file.is_empty() {
            return Err(OidcSetupError::Missing("jwks_file"));
        }
        let jwks_file = PathBuf::from(&cfg.jwks_file);
        let keys = read_keys(&jwks_file)?;
        Ok(Some(OidcVerifier {
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            role_claim: cfg.role_claim.clone(),
            jwks_file,
            keys: Mutex::new(keys),
        }))
    }

    /// Whether a presented bearer string is a JWT (three dot-separated parts) at all.
    #[must_use]
    pub fn looks_like_jwt(token: &str) -> bool {
        token.split('.').count() == 3 && token.starts_with("ey")
    }

    /// The key set, read again when its file changed (keys rotate without a restart). The
    /// change is seen by the file's modification time: one `stat` a token, a microsecond beside
    /// the signature check.
    fn key_set(&self) -> Arc<JwkSet> {
        let Ok(mut keys) = self.keys.lock() else {
            return Arc::new(JwkSet { keys: Vec::new() });
        };
        let modified = std::fs::metadata(&self.jwks_file)
            .and_then(|m| m.modified())
            .ok();
        if modified != keys.modified {
            match read_keys(&self.jwks_file) {
                Ok(fresh) => *keys = fresh,
                Err(e) => tracing::warn!(error = %e, "kept the previous OIDC keys"),
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
        .ok_or("the JWT names no key of the issuer")?;
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

//! The credential store: API tokens and device credentials, each kept as the SHA-256 of its
//! secret. A token reads `otl_<token id>_<secret>`: the id (64 random bits, public) finds the
//! row, the secret (256 random bits) proves possession; only its hash is stored.

use chrono::{DateTime, Utc};
use otaledger_domain::access::Role;
use otaledger_domain::events::TargetSelector;
use rand::{RngCore, SeedableRng};
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool, Row};

use crate::{DbContext, Error, Result};

const PREFIX: &str = "otl_";

/// A token as its holder receives it, once. `Debug` shows the id alone.
pub struct Minted {
    pub token_id: String,
    pub token: String,
    secret_sha256: [u8; 32],
}

impl std::fmt::Debug for Minted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minted")
            .field("token_id", &self.token_id)
            .finish_non_exhaustive()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// A new token from the operating system's random source.
#[must_use]
pub fn mint() -> Minted {
    // ChaCha, seeded from the operating system for every token.
    let mut rng = rand::rngs::StdRng::from_os_rng();
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    rng.fill_bytes(&mut id);
    rng.fill_bytes(&mut secret);
    let (token_id, secret) = (hex(&id), hex(&secret));
    Minted {
        token: format!("{PREFIX}{token_id}_{secret}"),
        secret_sha256: digest(&secret),
        token_id,
    }
}

/// Splits a presented token into its id and secret; `None` when it is not of our form.
#[must_use]
pub fn split(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.strip_prefix(PREFIX)?.split_once('_')?;
    let hex_of = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex_of(id, 16) && hex_of(secret, 64)).then_some((id, secret))
}

row_type! {
    /// A token's row, as listed (never the secret or its hash).
    #[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
    pub struct TokenRow {
        pub token_id: String,
        pub name: String,
        pub role: String,
        pub issued_by: String,
        pub issued_at: DateTime<Utc>,
        pub expires_at: Option<DateTime<Utc>>,
        pub revoked_at: Option<DateTime<Utc>>,
        /// The device selector the token is confined to (ADR 0031); null: the whole fleet.
        pub scope: Option<serde_json::Value>,
    }
}

const COLUMNS: &str = "token_id, name, role, issued_by, issued_at, expires_at, revoked_at, scope";

/// Stores a minted token in the caller's transaction. A live token of the same name is a
/// conflict.
pub async fn insert(
    tx: &mut PgConnection,
    minted: &Minted,
    name: &str,
    role: Role,
    expires_at: Option<DateTime<Utc>>,
    issued_by: &str,
    scope: Option<&TargetSelector>,
) -> Result<TokenRow> {
    let row = sqlx::query_as::<_, TokenRow>(&format!(
        "INSERT INTO access_tokens (token_id, name, role, secret_sha256, issued_by, expires_at,
                                    scope)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}"
    ))
    .bind(&minted.token_id)
    .bind(name)
    .bind(role.as_str())
    .bind(&minted.secret_sha256[..])
    .bind(issued_by)
    .bind(expires_at)
    .bind(scope.map(|s| serde_json::to_value(s).unwrap_or_default()))
    .fetch_one(&mut *tx)
    .await;
    match row {
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(Error::Conflict(format!(
            "{name:?} already has a live token; revoke it first"
        ))),
        other => other.db("storing a token"),
    }
}

/// Revokes the live token of `name` in the caller's transaction; `None` when there is none.
pub async fn revoke(tx: &mut PgConnection, name: &str) -> Result<Option<TokenRow>> {
    sqlx::query_as::<_, TokenRow>(&format!(
        "UPDATE access_tokens SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL
         RETURNING {COLUMNS}"
    ))
    .bind(name)
    .fetch_optional(&mut *tx)
    .await
    .db("revoking a token")
}

/// Every token, newest first; `live` leaves out revoked and expired ones.
pub async fn list(pool: &PgPool, live: bool) -> Result<Vec<TokenRow>> {
    sqlx::query_as::<_, TokenRow>(&format!(
        "SELECT {COLUMNS} FROM access_tokens
         WHERE NOT $1 OR (revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now()))
         ORDER BY issued_at DESC, token_id"
    ))
    .bind(live)
    .fetch_all(pool)
    .await
    .db("listing tokens")
}

/// Whether `name` holds a live credential of `role` (a gateway a device is attached to must).
pub async fn is_live(tx: &mut PgConnection, name: &str, role: Role) -> Result<bool> {
    sqlx::query_scalar::<_, bool>(
        "SELECT EXISTS (SELECT 1 FROM access_tokens WHERE name = $1 AND role = $2
             AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now()))",
    )
    .bind(name)
    .bind(role.as_str())
    .fetch_one(&mut *tx)
    .await
    .db("reading a credential")
}

/// Attaches `device` to `gateway` (`None`: it reports directly), in the caller's transaction;
/// answers the gateway it was attached to before.
pub async fn attach(
    tx: &mut PgConnection,
    device: &str,
    gateway: Option<&str>,
    by: &str,
) -> Result<Option<String>> {
    let before: Option<String> = sqlx::query_scalar(
        "SELECT gateway_id FROM device_gateways WHERE device_id = $1 FOR UPDATE",
    )
    .bind(device)
    .fetch_optional(&mut *tx)
    .await
    .db("reading a device's gateway")?;
    if before.as_deref() == gateway {
        return Ok(before);
    }
    match gateway {
        Some(gateway) => sqlx::query(
            "INSERT INTO device_gateways (device_id, gateway_id, attached_by) VALUES ($1, $2, $3)
             ON CONFLICT (device_id) DO UPDATE
             SET gateway_id = excluded.gateway_id, attached_by = excluded.attached_by,
                 attached_at = now()",
        )
        .bind(device)
        .bind(gateway)
        .bind(by),
        None => sqlx::query("DELETE FROM device_gateways WHERE device_id = $1").bind(device),
    }
    .execute(&mut *tx)
    .await
    .db("attaching a device to its gateway")?;
    Ok(before)
}

/// Which of `devices` are attached to `gateway` (one query for a whole batch).
pub async fn attached_to(
    pool: &PgPool,
    gateway: &str,
    devices: &[&str],
) -> Result<std::collections::HashSet<String>> {
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT device_id FROM device_gateways WHERE gateway_id = $1 AND device_id = ANY($2)",
    )
    .bind(gateway)
    .bind(devices)
    .fetch_all(pool)
    .await
    .db("reading a gateway's devices")?;
    Ok(rows.into_iter().collect())
}

/// Who a presented token's secret proves, if it is live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub token_id: String,
    pub name: String,
    pub role: Role,
    /// The devices it is confined to; `None`: the whole fleet.
    pub scope: Option<TargetSelector>,
}

/// Why a presented token was refused (the answer names it; the log does not carry the token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Malformed,
    Unknown,
    Revoked,
    Expired,
}

/// Checks a presented token against the store.
pub async fn verify(pool: &PgPool, token: &str) -> Result<Result<Holder, Refusal>> {
    let Some((token_id, secret)) = split(token) else {
        return Ok(Err(Refusal::Malformed));
    };
    let row = sqlx::query(
        "SELECT name, role, secret_sha256, scope, revoked_at IS NOT NULL AS revoked,
                coalesce(expires_at <= now(), false) AS expired
         FROM access_tokens WHERE token_id = $1",
    )
    .bind(token_id)
    .fetch_optional(pool)
    .await
    .db("reading a token")?;
    let Some(row) = row else {
        return Ok(Err(Refusal::Unknown));
    };
    let stored: Vec<u8> = row.try_get("secret_sha256").db("reading a token")?;
    // Compared without an early exit, so the time taken says nothing about the secret.
    let presented = digest(secret);
    let same = stored.len() == presented.len()
        && stored
            .iter()
            .zip(presented.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        return Ok(Err(Refusal::Unknown));
    }
    if row.try_get::<bool, _>("revoked").db("reading a token")? {
        return Ok(Err(Refusal::Revoked));
    }
    if row.try_get::<bool, _>("expired").db("reading a token")? {
        return Ok(Err(Refusal::Expired));
    }
    let role: String = row.try_get("role").db("reading a token")?;
    let role = role
        .parse()
        .map_err(|e: otaledger_domain::access::UnknownRole| Error::Other(e.to_string()))?;
    let scope: Option<serde_json::Value> = row.try_get("scope").db("reading a token")?;
    let scope = scope
        .map(serde_json::from_value::<TargetSelector>)
        .transpose()
        .map_err(|e| Error::Other(format!("a token's scope does not read: {e}")))?;
    Ok(Ok(Holder {
        token_id: token_id.to_owned(),
        name: row.try_get("name").db("reading a token")?,
        role,
        scope,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_split_back_into_their_id_and_a_secret_whose_hash_is_kept() {
        let m = mint();
        let (id, secret) = split(&m.token).expect("our own form");
        assert_eq!(id, m.token_id);
        assert_eq!(digest(secret), m.secret_sha256);
        assert_ne!(mint().token, m.token);
        assert!(
            !format!("{m:?}").contains(secret),
            "Debug never shows the secret"
        );
    }

    #[test]
    fn only_tokens_of_our_exact_form_split() {
        let m = mint();
        let (id, secret) = split(&m.token).unwrap_or_default();
        for bad in [
            String::new(),
            format!("{id}_{secret}"),
            format!("otl_{id}{secret}"),
            format!("otl_{}_{secret}", &id[1..]),
            format!("otl_{id}_{}", &secret[1..]),
            format!("otl_{id}_{secret}0"),
            format!("otl_{id}_{}g", &secret[1..]),
        ] {
            assert_eq!(split(&bad), None, "{bad}");
        }
    }
}

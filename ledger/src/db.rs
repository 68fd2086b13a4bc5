//! PostgreSQL pools scoped to one schema, so tests, shadow rebuilds and tenants never collide.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

use crate::{DbContext, Error, Result};

/// Checks a schema name: lowercase letters, digits and `_`, starting with a letter.
pub fn validate_schema(schema: &str) -> Result<()> {
    let ok = schema.len() <= 63
        && schema
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase())
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(Error::Other(format!(
            "invalid schema name {schema:?}: use [a-z][a-z0-9_]*"
        )))
    }
}

/// Connection options whose `search_path` is `schema`.
pub fn options(url: &str, schema: &str) -> Result<PgConnectOptions> {
    validate_schema(schema)?;
    // A catch-up transaction merges tens of thousands of rows in one statement and takes
    // seconds by design; only statements slower than that are worth a warning.
    Ok(PgConnectOptions::from_str(url)
        .db("parsing database url")?
        .options([("search_path", schema)])
        .log_slow_statements(log::LevelFilter::Warn, Duration::from_secs(30)))
}

/// Creates the schema if needed and returns a pool whose connections use it.
pub async fn pool(url: &str, schema: &str, max_connections: u32) -> Result<PgPool> {
    let opts = options(url, schema)?;
    let mut conn = PgConnection::connect_with(&opts).await.db("connecting")?;
    // `IF NOT EXISTS` is not safe against a concurrent creator (it fails on the catalog's
    // unique index), so processes starting together take turns.
    let mut tx = conn.begin().await.db("beginning schema creation")?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('otaledger: create schema'))")
        .execute(&mut *tx)
        .await
        .db("locking for schema creation")?;
    sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
        .execute(&mut *tx)
        .await
        .db("creating schema")?;
    tx.commit().await.db("committing schema creation")?;
    conn.close().await.db("closing")?;
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(opts)
        .await
        .db("opening pool")
}

/// Runs `CREATE … IF NOT EXISTS` statements in the pool's schema, one process at a time (the
/// same lock the migrations take), since concurrent creators of one table collide.
pub async fn create_if_missing(pool: &PgPool, ddl: &str) -> Result<()> {
    let mut tx = pool.begin().await.db("beginning table creation")?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext(current_schema()))")
        .execute(&mut *tx)
        .await
        .db("locking for table creation")?;
    sqlx::query(ddl)
        .execute(&mut *tx)
        .await
        .db("creating table")?;
    tx.commit().await.db("committing table creation")
}

/// A 32-byte secret kept in the one row of `table` in the pool's schema (created when missing):
/// made the first time from the operating system's random source (two version-4 UUIDs), then
/// found by every process on the schema, and by the same one after a restart. The saga's key
/// for command ids (ADR 0027) and the API's for download links (ADR 0037) live so.
pub async fn stored_secret(pool: &PgPool, table: &'static str) -> Result<[u8; 32]> {
    create_if_missing(
        pool,
        &format!(
            "CREATE TABLE IF NOT EXISTS {table} (
                 id  int PRIMARY KEY CHECK (id = 1),
                 key bytea NOT NULL CHECK (length(key) = 32)
             )"
        ),
    )
    .await?;
    let fresh = [
        uuid::Uuid::new_v4().into_bytes(),
        uuid::Uuid::new_v4().into_bytes(),
    ]
    .concat();
    sqlx::query(&format!(
        "INSERT INTO {table} (id, key) VALUES (1, $1) ON CONFLICT (id) DO NOTHING"
    ))
    .bind(&fresh)
    .execute(pool)
    .await
    .db("storing a secret")?;
    let key: Vec<u8> = sqlx::query_scalar(&format!("SELECT key FROM {table} WHERE id = 1"))
        .fetch_one(pool)
        .await
        .db("reading a secret")?;
    let mut bytes = [0u8; 32];
    bytes.copy_from_slice(&key);
    Ok(bytes)
}

/// A connection of its own (advisory locks live as long as it does).
pub async fn connection(url: &str, schema: &str) -> Result<PgConnection> {
    PgConnection::connect_with(&options(url, schema)?)
        .await
        .db("connecting")
}

/// PostgreSQL's TCP keepalive settings (idle, interval, count, in seconds) that notice a peer
/// gone silent within about `within`: half of it idle, then two probes a quarter apart; one
/// second at least each.
#[must_use]
pub fn keepalives(within: Duration) -> (u64, u64, u64) {
    let s = within.as_secs();
    ((s / 2).max(1), (s / 4).max(1), 2)
}

/// How long a lock connection may stay silent before PostgreSQL ends it, and its locks with
/// it (ADR 0039): the rebalance interval, one second at least. The owner renews it four times
/// as often from a task of its own ([`crate::ownership::Ownership`]), so a process that is
/// busy keeps its locks and one that is frozen (SIGSTOP, a hung host whose kernel still answers
/// keepalives) loses them.
#[must_use]
pub fn lease(within: Duration) -> Duration {
    within.max(Duration::from_secs(1))
}

/// A connection for advisory locks, which live as long as it does. PostgreSQL probes it with
/// TCP keepalives, so the locks of a host that died or was cut off (no FIN or RST ever comes)
/// are released within about `detect_within` (the rebalance interval, ADR 0001), not after the
/// kernel's default of two hours and more.
pub async fn lock_connection(
    url: &str,
    schema: &str,
    detect_within: Duration,
) -> Result<PgConnection> {
    let (idle, interval, count) = keepalives(detect_within);
    let (idle, interval, count) = (idle.to_string(), interval.to_string(), count.to_string());
    let lease = lease(detect_within).as_millis().to_string();
    let opts = options(url, schema)?.options([
        ("tcp_keepalives_idle", idle.as_str()),
        ("tcp_keepalives_interval", interval.as_str()),
        ("tcp_keepalives_count", count.as_str()),
        ("idle_session_timeout", lease.as_str()),
    ]);
    PgConnection::connect_with(&opts).await.db("connecting")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keepalives_notice_a_silent_peer_within_about_the_interval() {
        assert_eq!(keepalives(Duration::from_secs(2)), (1, 1, 2));
        assert_eq!(keepalives(Duration::from_secs(8)), (4, 2, 2));
        assert_eq!(keepalives(Duration::from_secs(60)), (30, 15, 2));
        // Below a second: one second each, the least PostgreSQL takes.
        assert_eq!(keepalives(Duration::from_millis(500)), (1, 1, 2));
        for s in [4, 8, 20, 60, 600] {
            let (idle, interval, count) = keepalives(Duration::from_secs(s));
            assert!(idle + interval * count <= s, "{s}");
        }
    }

    #[test]
    fn a_lease_is_the_rebalance_interval_and_a_second_at_least() {
        assert_eq!(lease(Duration::from_secs(2)), Duration::from_secs(2));
        assert_eq!(
            lease(Duration::from_millis(1500)),
            Duration::from_millis(1500)
        );
        assert_eq!(lease(Duration::from_millis(999)), Duration::from_secs(1));
    }
}

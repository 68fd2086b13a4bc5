//! Schema migrations, compiled in and applied in order, once, under a lock.

use sqlx::PgPool;

use crate::{DbContext, Result};

/// Every migration, in order. Never edit or remove one that has shipped.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "fleet", include_str!("../migrations/0001_fleet.sql")),
    (
        2,
        "rollouts",
        include_str!("../migrations/0002_rollouts.sql"),
    ),
    (
        3,
        "snapshots",
        include_str!("../migrations/0003_snapshots.sql"),
    ),
    (
        4,
        "device_history",
        include_str!("../migrations/0004_device_history.sql"),
    ),
    (
        5,
        "heartbeats_update_in_place",
        include_str!("../migrations/0005_heartbeats_update_in_place.sql"),
    ),
    (
        6,
        "access_tokens",
        include_str!("../migrations/0006_access_tokens.sql"),
    ),
    (
        7,
        "device_gateways",
        include_str!("../migrations/0007_device_gateways.sql"),
    ),
    (
        8,
        "token_scopes",
        include_str!("../migrations/0008_token_scopes.sql"),
    ),
    (
        9,
        "admission_requests",
        include_str!("../migrations/0009_admission_requests.sql"),
    ),
    (
        10,
        "releases",
        include_str!("../migrations/0010_releases.sql"),
    ),
];

/// A pool on `schema` (created when missing) with every migration applied: where each process
/// that reads or writes the projection tables starts.
pub async fn migrated_pool(url: &str, schema: &str, max_connections: u32) -> Result<PgPool> {
    let pool = otaledger_ledger::db::pool(url, schema, max_connections).await?;
    migrate(&pool).await?;
    Ok(pool)
}

/// Applies the migrations missing from the pool's schema (its `search_path`).
pub async fn migrate(pool: &PgPool) -> Result<()> {
    let mut tx = pool.begin().await.db("beginning migration")?;
    // Serialise concurrent starters of the same schema.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext(current_schema()))")
        .execute(&mut *tx)
        .await
        .db("locking for migration")?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&mut *tx)
    .await
    .db("creating schema_migrations")?;
    let applied: Vec<i32> = sqlx::query_scalar("SELECT version FROM schema_migrations")
        .fetch_all(&mut *tx)
        .await
        .db("reading schema_migrations")?;
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tracing::info!(version, name, "applying migration");
        // A plain &str runs unprepared, so one migration may hold several statements.
        sqlx::Executor::execute(&mut *tx, *sql)
            .await
            .db("applying migration")?;
        sqlx::query("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)")
            .bind(version)
            .bind(name)
            .execute(&mut *tx)
            .await
            .db("recording migration")?;
    }
    tx.commit().await.db("committing migration")?;
    Ok(())
}

//! Partition ownership through PostgreSQL advisory locks.
//!
//! Each instance holds, on one dedicated connection, a shared "member" lock and an exclusive
//! lock per partition it owns. `pg_locks` then tells every instance how many members are alive,
//! each takes at most its fair share, and a dead instance's locks vanish with its connection,
//! so the survivors take its partitions over at their next rebalance. Every acquisition bumps
//! the partition's epoch in `consumer_offsets`; writes carry the epoch they were read with, so
//! an instance that lost its lock without noticing can never overwrite the new owner's work.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};

use crate::fence::Fences;
use crate::{DbContext, Result};

/// Created in the consumer's schema on start.
pub const OFFSETS_DDL: &str = "
CREATE TABLE IF NOT EXISTS consumer_offsets (
    consumer    text        NOT NULL,
    topic       text        NOT NULL,
    partition   int         NOT NULL,
    next_offset bigint      NOT NULL,
    epoch       bigint      NOT NULL,
    owner       text        NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    fences      jsonb       NOT NULL DEFAULT '{}',
    PRIMARY KEY (consumer, topic, partition)
)";

/// Tables made before ADR 0039 gain the fences read up to `next_offset`.
const FENCES_DDL: &str =
    "ALTER TABLE consumer_offsets ADD COLUMN IF NOT EXISTS fences jsonb NOT NULL DEFAULT '{}'";

/// The member lock's second key; partition locks use the partition number.
const MEMBER_KEY: i32 = i32::MAX;

/// What an owner knows about a partition it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owned {
    pub epoch: i64,
    pub next_offset: i64,
    /// The writers' fences in force at `next_offset` (ADR 0039).
    pub fences: Fences,
}

/// A stable 31-bit key for (schema, consumer, topic): FNV-1a, the same in every process.
#[must_use]
pub fn lock_key(schema: &str, consumer: &str, topic: &str) -> i32 {
    let h = otaledger_domain::stable_hash::fnv1a_32(&[schema, consumer, topic]);
    i32::try_from(h & 0x7fff_ffff).unwrap_or(0)
}

#[derive(Debug)]
pub struct Ownership {
    pool: PgPool,
    /// Shared with the task that renews its lease ([`crate::db::lease`]).
    lock_conn: Arc<tokio::sync::Mutex<PgConnection>>,
    renewer: tokio::task::JoinHandle<()>,
    consumer: String,
    topic: String,
    member: String,
    key: i32,
    partitions: i32,
    owned: BTreeMap<i32, Owned>,
}

impl Ownership {
    /// Joins as a member. `lock_conn` must be a connection of its own: the locks live with it.
    /// A task touches it every quarter of `lease` (the connection's `idle_session_timeout`,
    /// [`crate::db::lock_connection`]): while this process runs its locks stay; once it stops
    /// running, PostgreSQL ends the connection and the locks go with it.
    #[allow(clippy::too_many_arguments)]
    pub async fn join(
        pool: PgPool,
        mut lock_conn: PgConnection,
        lease: Duration,
        schema: &str,
        consumer: &str,
        topic: &str,
        member: &str,
        partitions: i32,
    ) -> Result<Self> {
        crate::db::create_if_missing(&pool, OFFSETS_DDL).await?;
        crate::db::create_if_missing(&pool, FENCES_DDL).await?;
        let key = lock_key(schema, consumer, topic);
        sqlx::query("SELECT pg_advisory_lock_shared($1, $2)")
            .bind(key)
            .bind(MEMBER_KEY)
            .execute(&mut lock_conn)
            .await
            .db("taking the member lock")?;
        let lock_conn = Arc::new(tokio::sync::Mutex::new(lock_conn));
        let renewer = tokio::spawn(renew(Arc::downgrade(&lock_conn), lease / 4));
        Ok(Ownership {
            pool,
            lock_conn,
            renewer,
            consumer: consumer.to_owned(),
            topic: topic.to_owned(),
            member: member.to_owned(),
            key,
            partitions,
            owned: BTreeMap::new(),
        })
    }

    #[must_use]
    pub fn owned(&self) -> &BTreeMap<i32, Owned> {
        &self.owned
    }

    pub fn owned_mut(&mut self) -> &mut BTreeMap<i32, Owned> {
        &mut self.owned
    }

    /// Live members, from the shared member locks their connections hold.
    pub async fn live_members(&mut self) -> Result<i64> {
        sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks
             WHERE locktype = 'advisory' AND granted AND objsubid = 2
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND classid = $1::bigint::oid AND objid = $2::bigint::oid",
        )
        .bind(i64::from(self.key))
        .bind(i64::from(MEMBER_KEY))
        .fetch_one(&mut *self.lock_conn.lock().await)
        .await
        .db("counting members")
    }

    /// Takes or gives up partitions until this member holds its fair share.
    /// Returns whether the owned set changed.
    pub async fn rebalance(&mut self) -> Result<bool> {
        let members = self.live_members().await?.max(1);
        let share = i32::try_from((i64::from(self.partitions) + members - 1) / members)
            .unwrap_or(self.partitions);
        let mut changed = false;
        while i32::try_from(self.owned.len()).unwrap_or(i32::MAX) > share {
            if let Some((&p, _)) = self.owned.iter().next_back() {
                self.release(p).await?;
                changed = true;
            }
        }
        if i32::try_from(self.owned.len()).unwrap_or(i32::MAX) < share {
            // Start at a member-specific partition so that members rarely race for the same one.
            let start = lock_key("", &self.member, "").rem_euclid(self.partitions.max(1));
            for i in 0..self.partitions {
                if i32::try_from(self.owned.len()).unwrap_or(i32::MAX) >= share {
                    break;
                }
                let p = (start + i) % self.partitions;
                if !self.owned.contains_key(&p) && self.try_acquire(p).await? {
                    changed = true;
                }
            }
        }
        if changed {
            tracing::info!(consumer = %self.consumer, topic = %self.topic, member = %self.member,
                members, share, owned = ?self.owned.keys().collect::<Vec<_>>(), "partition ownership changed");
        }
        Ok(changed)
    }

    async fn try_acquire(&mut self, partition: i32) -> Result<bool> {
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
            .bind(self.key)
            .bind(partition)
            .fetch_one(&mut *self.lock_conn.lock().await)
            .await
            .db("trying a partition lock")?;
        if !got {
            return Ok(false);
        }
        let (next_offset, epoch, Json(fences)): (i64, i64, Json<Fences>) = sqlx::query_as(
            "INSERT INTO consumer_offsets (consumer, topic, partition, next_offset, epoch, owner)
             VALUES ($1, $2, $3, 0, 1, $4)
             ON CONFLICT (consumer, topic, partition) DO UPDATE
                SET epoch = consumer_offsets.epoch + 1, owner = EXCLUDED.owner, updated_at = now()
             RETURNING next_offset, epoch, fences",
        )
        .bind(&self.consumer)
        .bind(&self.topic)
        .bind(partition)
        .bind(&self.member)
        .fetch_one(&self.pool)
        .await
        .db("claiming a partition")?;
        self.owned.insert(
            partition,
            Owned {
                epoch,
                next_offset,
                fences,
            },
        );
        Ok(true)
    }

    /// Gives a partition up (after the caller stopped reading it).
    pub async fn release(&mut self, partition: i32) -> Result<()> {
        self.owned.remove(&partition);
        sqlx::query("SELECT pg_advisory_unlock($1, $2)")
            .bind(self.key)
            .bind(partition)
            .execute(&mut *self.lock_conn.lock().await)
            .await
            .db("releasing a partition lock")?;
        Ok(())
    }

    /// Forgets every partition (after being fenced): the locks go, the epochs tell the rest.
    pub async fn release_all(&mut self) -> Result<()> {
        let parts: Vec<i32> = self.owned.keys().copied().collect();
        for p in parts {
            self.release(p).await?;
        }
        Ok(())
    }

    /// Stores the next offsets of the given partitions inside the caller's transaction, if and
    /// only if this member still holds each partition's epoch. Returns false when fenced.
    /// `fences` holds the writers' fences read up to those offsets, for the partitions that
    /// have any (ADR 0039); the others keep theirs.
    pub async fn store_offsets(
        &self,
        tx: &mut PgConnection,
        next: &BTreeMap<i32, i64>,
        fences: &BTreeMap<i32, Fences>,
    ) -> Result<bool> {
        let mut parts = Vec::with_capacity(next.len());
        let mut offsets = Vec::with_capacity(next.len());
        let mut epochs = Vec::with_capacity(next.len());
        let mut fenced = Vec::with_capacity(next.len());
        for (p, o) in next {
            let Some(owned) = self.owned.get(p) else {
                return Ok(false);
            };
            parts.push(*p);
            offsets.push(*o);
            epochs.push(owned.epoch);
            fenced.push(Json(fences.get(p).unwrap_or(&owned.fences)));
        }
        let updated = sqlx::query(
            "UPDATE consumer_offsets c
                SET next_offset = v.next_offset, fences = v.fences, updated_at = now()
             FROM UNNEST($3::int[], $4::bigint[], $5::bigint[], $6::jsonb[])
                AS v(partition, next_offset, epoch, fences)
             WHERE c.consumer = $1 AND c.topic = $2 AND c.partition = v.partition AND c.epoch = v.epoch",
        )
        .bind(&self.consumer)
        .bind(&self.topic)
        .bind(&parts)
        .bind(&offsets)
        .bind(&epochs)
        .bind(&fenced)
        .execute(&mut *tx)
        .await
        .db("storing offsets")?
        .rows_affected();
        Ok(updated == parts.len() as u64)
    }
}

impl Drop for Ownership {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

/// Touches the lock connection every `every` until the ownership is gone or the connection
/// fails (the owner's next call then reports it).
async fn renew(conn: std::sync::Weak<tokio::sync::Mutex<PgConnection>>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(conn) = conn.upgrade() else { return };
        let mut conn = conn.lock().await;
        if let Err(e) = sqlx::query("SELECT 1").execute(&mut *conn).await {
            tracing::warn!(error = %e, "the lock connection failed: its locks are gone");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_are_stable_positive_and_distinct() {
        let a = lock_key("s", "projector", "ota.device-events");
        assert_eq!(a, lock_key("s", "projector", "ota.device-events"));
        assert!(a >= 0);
        assert_ne!(a, lock_key("t", "projector", "ota.device-events"));
        assert_ne!(lock_key("ab", "c", ""), lock_key("a", "bc", ""));
    }
}

//! Rebuild, verify and snapshots: every projection folded again from offset 0 into a shadow
//! schema, then swapped in atomically (rebuild), diffed against the live one (verify), or kept
//! as the fleet as of a time (snapshot, `--until`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use otaledger_domain::time::Micros;
use otaledger_ledger::config::KafkaConfig;
use otaledger_ledger::fence::Fences;
use otaledger_ledger::kafka::EventProducer;
use otaledger_ledger::reader::{Body, Decode, LedgerReader, ReaderConfig, Start};
use otaledger_ledger::shutdown::Shutdown;
use otaledger_ledger::unappliable::apply_leaving_out;
use otaledger_ledger::{FoldWindow, Positioned, Projection, Runner, RunnerConfig};
use sqlx::{PgConnection, PgPool};

use crate::history::HistoryProjector;
use crate::projector::{FleetProjector, UNKNOWN};
use crate::rollouts::RolloutProjector;
use crate::{DbContext, Error, Result};

/// The projections a rebuild folds: (consumer name, which topic).
pub const PROJECTIONS: [(&str, Topic); 3] = [
    ("projector", Topic::DeviceEvents),
    ("rollout-projector", Topic::RolloutEvents),
    ("history", Topic::DeviceEvents),
];

/// The tables projections own; everything else in a live schema (offsets of other consumers,
/// the dispatcher's and router's state, snapshots) moves over on a swap.
pub const PROJECTION_TABLES: [&str; 7] = [
    "devices",
    "device_history",
    "fleet_counts",
    "rollouts",
    "rollout_devices",
    "rollout_decisions",
    "schema_migrations",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Topic {
    DeviceEvents,
    RolloutEvents,
}

/// Where a rebuild reads and writes.
#[derive(Debug, Clone)]
pub struct RebuildPlan {
    pub database_url: String,
    pub kafka: KafkaConfig,
    pub shadow: String,
    /// Only events that occurred at or before this time are applied (a snapshot).
    pub until: Option<Micros>,
    /// Per projection consumer: partition → offset to stop at (exclusive). `None`: the end of
    /// the topic as far as it can be seen (high watermark, then quiet).
    pub stop_at: Option<BTreeMap<String, BTreeMap<i32, i64>>>,
}

/// Applies only the events that occurred at or before a time.
#[derive(Debug)]
pub struct Until<P> {
    inner: P,
    until: Micros,
}

impl<P: Projection> Projection for Until<P> {
    async fn apply(
        &mut self,
        tx: &mut PgConnection,
        events: &[Positioned],
    ) -> otaledger_ledger::Result<()> {
        let kept: Vec<Positioned> = events
            .iter()
            .filter(|p| p.event.meta.occurred_at <= self.until)
            .cloned()
            .collect();
        self.inner.apply(tx, &kept).await
    }

    fn committed(&mut self, events: &[Positioned]) {
        self.inner.committed(events);
    }

    fn ownership_changed(&mut self) {
        self.inner.ownership_changed();
    }

    fn fold(&mut self, events: &[Positioned]) -> bool {
        let kept: Vec<Positioned> = events
            .iter()
            .filter(|p| p.event.meta.occurred_at <= self.until)
            .cloned()
            .collect();
        // A projection that does not fold gets the events in `apply`, filtered there.
        self.inner.fold(&kept)
    }

    fn folded_rows(&self) -> usize {
        self.inner.folded_rows()
    }
}

/// The fleet view and the device history fed by one reader of the device events, written in
/// the same transactions.
#[derive(Debug)]
struct DeviceProjections {
    fleet: FleetProjector,
    history: HistoryProjector,
}

impl Default for DeviceProjections {
    fn default() -> Self {
        DeviceProjections {
            fleet: FleetProjector::new(),
            history: HistoryProjector::new(),
        }
    }
}

impl Projection for DeviceProjections {
    /// With events at hand (the runner reads without folding after a refusal, ADR 0021), each
    /// projection leaves out only what it refuses itself, as the live projector and history
    /// do: an event only one of them refuses is still applied by the other. The live
    /// consumers dead-lettered those events already; the rebuild only logs them.
    async fn apply(
        &mut self,
        tx: &mut PgConnection,
        events: &[Positioned],
    ) -> otaledger_ledger::Result<()> {
        if events.is_empty() {
            self.fleet.apply(tx, events).await?;
            return self.history.apply(tx, events).await;
        }
        for (consumer, refused) in [
            (
                "projector",
                apply_leaving_out(&mut self.fleet, tx, events).await?,
            ),
            (
                "history",
                apply_leaving_out(&mut self.history, tx, events).await?,
            ),
        ] {
            for (i, e) in refused {
                let p = &events[i].position;
                tracing::warn!(consumer, partition = p.partition, offset = p.offset, error = %e,
                    "rebuild left out an event the projection cannot apply");
            }
        }
        Ok(())
    }

    fn committed(&mut self, events: &[Positioned]) {
        self.fleet.committed(events);
        self.history.committed(events);
    }

    fn ownership_changed(&mut self) {
        self.fleet.ownership_changed();
        self.history.ownership_changed();
    }

    fn fold(&mut self, events: &[Positioned]) -> bool {
        // Both always fold (so neither sees these events again in `apply`).
        let fleet = self.fleet.fold(events);
        let history = self.history.fold(events);
        fleet && history
    }

    fn folded_rows(&self) -> usize {
        self.fleet.folded_rows() + self.history.folded_rows()
    }
}

/// Runs one projection's rebuild, filtered by `until` when given.
async fn fold<P: Projection + std::fmt::Debug>(
    rc: RunnerConfig,
    inner: P,
    until: Option<Micros>,
    producer: EventProducer,
    pool: PgPool,
    signal: otaledger_ledger::shutdown::ShutdownSignal,
) -> otaledger_ledger::Result<()> {
    match until {
        None => Runner::new(rc, inner, producer, pool).run(signal).await,
        Some(u) => {
            Runner::new(rc, Until { inner, until: u }, producer, pool)
                .run(signal)
                .await
        }
    }
}

/// Progress of a rebuild, reported while it runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    pub applied_offsets: i64,
    pub target_offsets: i64,
    pub elapsed: Duration,
}

fn topic_name(kafka: &KafkaConfig, t: Topic) -> String {
    let topics = kafka.topics();
    match t {
        Topic::DeviceEvents => topics.device_events,
        Topic::RolloutEvents => topics.rollout_events,
    }
}

/// Folds every projection into `plan.shadow` (created fresh) from offset 0, reporting progress,
/// until each partition reached its stop offset, or its high watermark and a second of quiet.
pub async fn build_shadow(
    plan: &RebuildPlan,
    mut report: impl FnMut(Progress),
) -> Result<Progress> {
    otaledger_ledger::db::validate_schema(&plan.shadow)?;
    let pool = crate::migrations::migrated_pool(&plan.database_url, &plan.shadow, 8).await?;
    otaledger_ledger::db::create_if_missing(&pool, otaledger_ledger::ownership::OFFSETS_DDL)
        .await?;
    let deferred = defer_indexes(&pool, &plan.shadow).await?;
    let producer = EventProducer::new(&plan.kafka)?;
    let shutdown = Shutdown::new();
    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut targets: BTreeMap<String, (String, BTreeMap<i32, i64>)> = BTreeMap::new();
    // The fleet view and the history read the same topic: when they stop at the same place
    // (always, except a verify racing live projectors), one reader feeds both and the
    // history's offsets are the fleet view's (they commit in the same transactions).
    let stop_of = |c: &str| {
        plan.stop_at
            .as_ref()
            .map(|s| s.get(c).cloned().unwrap_or_default())
    };
    let shared = stop_of("projector") == stop_of("history");
    for (consumer, t) in PROJECTIONS {
        if shared && consumer == "history" {
            continue;
        }
        let topic = topic_name(&plan.kafka, t);
        let stop = plan
            .stop_at
            .as_ref()
            .map(|s| s.get(consumer).cloned().unwrap_or_default());
        let ends = match &stop {
            Some(s) => s.clone(),
            None => otaledger_ledger::reader::high_watermarks(&plan.kafka, &topic).await?,
        };
        targets.insert(consumer.to_owned(), (topic.clone(), ends));
        let rc = RunnerConfig {
            consumer: consumer.to_owned(),
            topic,
            database_url: plan.database_url.clone(),
            schema: plan.shadow.clone(),
            member: format!("rebuild-{}", std::process::id()),
            batch_max: 20_000,
            batch_wait: Duration::from_millis(20),
            // A rebuild folds far more per transaction than a live projector: nobody waits
            // for its rows, and each device's row is written once per window, not per batch.
            fold: FoldWindow {
                when_behind: Duration::ZERO,
                max_events: 1_000_000,
                max_rows: 500_000,
                max_wait: Duration::from_secs(30),
            },
            deep_fold: None,
            rebalance_every: Duration::from_secs(3600),
            kafka: plan.kafka.clone(),
            stop_at: stop,
        };
        let signal = shutdown.signal();
        let (p, pool, until) = (producer.clone(), pool.clone(), plan.until);
        tasks.push(tokio::spawn(async move {
            match (consumer, t) {
                ("history", _) => fold(rc, HistoryProjector::new(), until, p, pool, signal).await,
                (_, Topic::DeviceEvents) if shared => {
                    let both = DeviceProjections::default();
                    fold(rc, both, until, p, pool, signal).await
                }
                (_, Topic::DeviceEvents) => {
                    fold(rc, FleetProjector::new(), until, p, pool, signal).await
                }
                (_, Topic::RolloutEvents) => {
                    fold(rc, RolloutProjector, until, p, pool, signal).await
                }
            }
        }));
    }
    let target: i64 = targets.values().flat_map(|(_, e)| e.values()).sum();
    let mut last_total = -1;
    let mut quiet_since = Instant::now();
    let progress = loop {
        let mut total = 0;
        let mut reached = true;
        for (consumer, (topic, ends)) in &targets {
            let done = otaledger_ledger::runner::committed_offsets(&pool, consumer, topic).await?;
            total += done.values().sum::<i64>();
            reached &= ends.iter().all(|(p, e)| *e == 0 || done.get(p) >= Some(e));
        }
        let p = Progress {
            applied_offsets: total,
            target_offsets: target.max(total),
            elapsed: started.elapsed(),
        };
        report(p);
        if total != last_total {
            last_total = total;
            quiet_since = Instant::now();
        }
        // With explicit stops the targets are exact; otherwise watermarks are a lower bound,
        // so the rebuild also waits for a second without progress.
        let quiet = plan.stop_at.is_some() || quiet_since.elapsed() >= Duration::from_secs(1);
        if reached && quiet {
            break p;
        }
        if tasks.iter().any(tokio::task::JoinHandle::is_finished) {
            return Err(Error::Other("a rebuild projector stopped early".into()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    shutdown.trigger();
    for t in tasks {
        let _ = t.await;
    }
    create_indexes(&pool, deferred).await?;
    if shared {
        sqlx::query(
            "INSERT INTO consumer_offsets
                (consumer, topic, partition, next_offset, epoch, owner, fences)
             SELECT 'history', topic, partition, next_offset, epoch, owner, fences
             FROM consumer_offsets WHERE consumer = 'projector'
             ON CONFLICT (consumer, topic, partition) DO UPDATE
                SET next_offset = EXCLUDED.next_offset, fences = EXCLUDED.fences",
        )
        .execute(&pool)
        .await
        .db("recording the history's offsets")?;
    }
    pool.close().await;
    Ok(progress)
}

/// Drops the shadow's secondary indexes (those no constraint needs: the merges' `ON CONFLICT`
/// keys stay) and returns their definitions. Building an index once over the finished table
/// costs a fraction of maintaining it through every row write of a rebuild.
async fn defer_indexes(pool: &PgPool, schema: &str) -> Result<Vec<String>> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT i.indexname, i.indexdef FROM pg_indexes i
         WHERE i.schemaname = $1
           AND NOT EXISTS (SELECT 1 FROM pg_constraint c
                           JOIN pg_namespace n ON n.oid = c.connamespace
                           WHERE n.nspname = $1 AND c.conname = i.indexname)",
    )
    .bind(schema)
    .fetch_all(pool)
    .await
    .db("listing the shadow's indexes")?;
    for (name, _) in &rows {
        sqlx::query(&format!("DROP INDEX {schema}.{name}"))
            .execute(pool)
            .await
            .db("deferring an index")?;
    }
    Ok(rows.into_iter().map(|(_, def)| def).collect())
}

/// Builds the deferred indexes, two at a time (one per core here).
async fn create_indexes(pool: &PgPool, definitions: Vec<String>) -> Result<()> {
    let mut pending = definitions.into_iter();
    loop {
        let (a, b) = (pending.next(), pending.next());
        let Some(a) = a else { return Ok(()) };
        let first = sqlx::query(&a).execute(pool);
        match b {
            Some(b) => {
                let (x, y) = tokio::join!(first, sqlx::query(&b).execute(pool));
                x.db("building an index")?;
                y.db("building an index")?;
            }
            None => {
                first.await.db("building an index")?;
            }
        }
    }
}

/// The live projections' positions: where a verify rebuild stops.
pub async fn live_positions(
    live: impl sqlx::PgExecutor<'_>,
) -> Result<BTreeMap<String, BTreeMap<i32, i64>>> {
    let rows: Vec<(String, i32, i64)> = sqlx::query_as(
        "SELECT consumer, partition, next_offset FROM consumer_offsets
         WHERE consumer = ANY($1)",
    )
    .bind(PROJECTIONS.iter().map(|(c, _)| *c).collect::<Vec<_>>())
    .fetch_all(live)
    .await
    .db("reading live positions")?;
    let mut out: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
    for (c, p, o) in rows {
        out.entry(c).or_default().insert(p, o);
    }
    Ok(out)
}

/// Swaps the rebuilt shadow in for the live schema in one transaction. State that is not a
/// projection (other consumers' offsets, the dispatcher's and router's tables, snapshots)
/// moves into it first; the projections' epochs are raised above the live ones, so the running
/// projectors are fenced, let go, and resume from the rebuilt position.
pub async fn swap(live_pool: &PgPool, live: &str, shadow: &str, old: &str) -> Result<()> {
    for s in [live, shadow, old] {
        otaledger_ledger::db::validate_schema(s)?;
    }
    let mut tx = live_pool.begin().await.db("beginning swap")?;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1
         AND table_name <> ALL($2) AND table_name <> 'consumer_offsets'",
    )
    .bind(live)
    .bind(PROJECTION_TABLES.to_vec())
    .fetch_all(&mut *tx)
    .await
    .db("listing live tables")?;
    for t in &tables {
        sqlx::query(&format!("DROP TABLE IF EXISTS {shadow}.{t}"))
            .execute(&mut *tx)
            .await
            .db("dropping the shadow's empty copy")?;
        sqlx::query(&format!("ALTER TABLE {live}.{t} SET SCHEMA {shadow}"))
            .execute(&mut *tx)
            .await
            .db("moving state into the shadow")?;
    }
    sqlx::query(&format!(
        "INSERT INTO {shadow}.consumer_offsets SELECT * FROM {live}.consumer_offsets l
         WHERE l.consumer <> ALL($1)"
    ))
    .bind(PROJECTIONS.iter().map(|(c, _)| *c).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await
    .db("carrying other consumers' offsets over")?;
    sqlx::query(&format!(
        "UPDATE {shadow}.consumer_offsets s SET epoch = l.epoch + 1
         FROM {live}.consumer_offsets l
         WHERE s.consumer = l.consumer AND s.topic = l.topic AND s.partition = l.partition
           AND s.epoch <= l.epoch"
    ))
    .execute(&mut *tx)
    .await
    .db("fencing the live projectors")?;
    sqlx::query(&format!("ALTER SCHEMA {live} RENAME TO {old}"))
        .execute(&mut *tx)
        .await
        .db("renaming the live schema")?;
    sqlx::query(&format!("ALTER SCHEMA {shadow} RENAME TO {live}"))
        .execute(&mut *tx)
        .await
        .db("renaming the shadow schema")?;
    tx.commit().await.db("committing swap")?;
    Ok(())
}

/// One difference between a live table and its rebuild.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub table: &'static str,
    pub key: String,
    pub live: Option<String>,
    pub rebuilt: Option<String>,
}

/// Per partition, an offset.
type Offsets = BTreeMap<i32, i64>;

/// Tables compared by verify: (table, key expression, the entity whose events change a row;
/// none for the fleet counts, which every device changes).
const COMPARED: [(&str, &str, Option<Entity>); 6] = [
    ("devices", "device_id", Some(Entity::Device)),
    (
        "device_history",
        "device_id || '/' || partition || '/' || \"offset\"",
        Some(Entity::Device),
    ),
    ("fleet_counts", "dimension || '/' || value", None),
    ("rollouts", "rollout_id", Some(Entity::Rollout)),
    (
        "rollout_devices",
        "rollout_id || '/' || device_id",
        Some(Entity::Rollout),
    ),
    (
        "rollout_decisions",
        "rollout_id || '/' || partition || '/' || \"offset\"",
        Some(Entity::Rollout),
    ),
];

/// Whose events change a row: a device (`device_id`) or a rollout (`rollout_id`).
#[derive(Debug, Clone, Copy)]
enum Entity {
    Device,
    Rollout,
}

/// Devices and rollouts with events the live projections applied after the rebuild's stop
/// positions (the live projectors kept running during verify): their rows are not compared.
#[derive(Debug, Clone, Default)]
pub struct Moved {
    pub devices: Vec<String>,
    pub rollouts: Vec<String>,
}

/// Row counts and differing rows of a verify.
#[derive(Debug, Clone, Default)]
pub struct Comparison {
    /// (table, live rows, rebuilt rows), both without the rows of moved entities.
    pub counts: Vec<(&'static str, i64, i64)>,
    /// Differing rows, up to the limit per table.
    pub diffs: Vec<Difference>,
    /// Devices and rollouts left out because the live side moved on.
    pub moved: Moved,
}

impl Comparison {
    /// Tables whose counts differ, or differing rows, whichever is more.
    #[must_use]
    pub fn differences(&self) -> usize {
        let counts = self.counts.iter().filter(|(_, l, r)| l != r).count();
        self.diffs.len().max(counts)
    }
}

/// Compares a rebuild stopped at `stop` with the live projections, in one snapshot of the live
/// schema: the live positions read in it tell which devices and rollouts moved on since the
/// stop (their keys are read from the ledger between the two positions), and their rows are
/// left out. When devices moved, the live fleet counts are checked against the live devices
/// they count instead of the rebuild.
pub async fn compare(
    pool: &PgPool,
    kafka: &KafkaConfig,
    live: &str,
    rebuilt: &str,
    stop: &BTreeMap<String, BTreeMap<i32, i64>>,
    limit: i64,
) -> Result<Comparison> {
    otaledger_ledger::db::validate_schema(live)?;
    otaledger_ledger::db::validate_schema(rebuilt)?;
    let mut tx = pool.begin().await.db("beginning the comparison")?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await
        .db("taking a snapshot of the live schema")?;
    // `pool` addresses the live schema: its positions, read inside the snapshot.
    let positions = live_positions(&mut *tx).await?;
    let mut ranges: BTreeMap<Topic, (Offsets, Offsets)> = BTreeMap::new();
    for (consumer, partitions) in positions {
        let Some((_, topic)) = PROJECTIONS.iter().find(|(c, _)| *c == consumer) else {
            continue;
        };
        for (partition, now) in partitions {
            let from = stop
                .get(&consumer)
                .and_then(|s| s.get(&partition))
                .copied()
                .unwrap_or(0);
            if now <= from {
                continue;
            }
            let (froms, tos) = ranges.entry(*topic).or_default();
            let f = froms.entry(partition).or_insert(from);
            *f = (*f).min(from);
            let t = tos.entry(partition).or_insert(now);
            *t = (*t).max(now);
        }
    }
    let mut moved = Moved::default();
    for (topic, (from, to)) in ranges {
        let name = topic_name(kafka, topic);
        let keys = keys_between(kafka, &name, &from, &to).await?;
        match topic {
            Topic::DeviceEvents => moved.devices = keys,
            Topic::RolloutEvents => moved.rollouts = keys,
        }
    }
    let mut out = Comparison {
        moved,
        ..Comparison::default()
    };
    for (t, key, entity) in COMPARED {
        // `$1`: the moved entities' ids.
        let (keep, ids): (&str, &[String]) = match entity {
            Some(Entity::Device) => ("NOT (x.device_id = ANY($1))", &out.moved.devices),
            Some(Entity::Rollout) => ("NOT (x.rollout_id = ANY($1))", &out.moved.rollouts),
            // A count that went back to zero is kept as a row or never written, depending on
            // how events fell into transactions.
            None => ("x.devices <> 0 AND $1::text[] IS NOT NULL", &[]),
        };
        // Every device changes the counts: with devices moved, the live counts are compared
        // with the live devices they count (same snapshot) instead of the rebuild.
        let right = if t == "fleet_counts" && !out.moved.devices.is_empty() {
            format!("({})", counts_of_devices(live))
        } else {
            format!("{rebuilt}.{t}")
        };
        let counts: (i64, i64) = sqlx::query_as(&format!(
            "SELECT (SELECT count(*) FROM {live}.{t} x WHERE {keep}),
                    (SELECT count(*) FROM {right} x WHERE {keep})"
        ))
        .bind(ids)
        .fetch_one(&mut *tx)
        .await
        .db("counting rows")?;
        out.counts.push((t, counts.0, counts.1));
        let rows: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(&format!(
            "WITH l AS (SELECT {key} AS k, md5(x::text) AS h, row_to_json(x)::text AS j
                        FROM {live}.{t} x WHERE {keep}),
                  r AS (SELECT {key} AS k, md5(x::text) AS h, row_to_json(x)::text AS j
                        FROM {right} x WHERE {keep})
             SELECT coalesce(l.k, r.k), l.j, r.j FROM l FULL JOIN r ON l.k = r.k
             WHERE l.h IS DISTINCT FROM r.h
             ORDER BY 1 LIMIT $2"
        ))
        .bind(ids)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await
        .db("comparing rows")?;
        out.diffs
            .extend(rows.into_iter().map(|(key, live, rebuilt)| Difference {
                table: t,
                key,
                live,
                rebuilt,
            }));
    }
    tx.rollback().await.db("ending the comparison")?;
    Ok(out)
}

/// `fleet_counts` as it should be for the devices of a schema (zero counts are kept by the
/// projector, so those rows are left out on both sides).
fn counts_of_devices(schema: &str) -> String {
    let dim = |name: &str, col: &str| {
        format!(
            "SELECT '{name}'::text AS dimension, coalesce({col}, '{UNKNOWN}') AS value,
                    count(*)::bigint AS devices FROM {schema}.devices GROUP BY 2"
        )
    };
    format!(
        "{} UNION ALL {} UNION ALL {} UNION ALL
         SELECT 'total', 'all', count(*)::bigint FROM {schema}.devices",
        dim("firmware", "firmware_version"),
        dim("model", "model"),
        dim("site", "site")
    )
}

/// The keys of the records in `[from, to)` of each partition of a topic (a device or rollout
/// id: the key that partitions the topic).
async fn keys_between(
    kafka: &KafkaConfig,
    topic: &str,
    from: &BTreeMap<i32, i64>,
    to: &BTreeMap<i32, i64>,
) -> Result<Vec<String>> {
    let starts: Vec<Start> = to
        .iter()
        .map(|(p, end)| Start {
            topic: 0,
            partition: *p,
            next: from.get(p).copied().unwrap_or(0),
            end: Some(*end),
            fences: Fences::default(),
        })
        .filter(|s| s.end.is_some_and(|e| e > s.next))
        .collect();
    if starts.is_empty() {
        return Ok(Vec::new());
    }
    let reader = LedgerReader::new(
        kafka,
        ReaderConfig::tool("verify", vec![topic.to_owned()], Decode::Raw),
    )?;
    reader.assign(starts)?;
    let mut keys = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !reader.caught_up() {
        if Instant::now() > deadline {
            return Err(Error::Other(format!(
                "could not read {topic} up to the live positions"
            )));
        }
        let batch = reader
            .read(tokio::time::Instant::now() + Duration::from_millis(200))
            .await;
        for r in batch.records {
            if let Body::Raw(raw) = r.body {
                keys.insert(String::from_utf8_lossy(&raw.key).into_owned());
            }
        }
    }
    Ok(keys.into_iter().collect())
}

/// Records a snapshot of the fleet as of `until` in the live schema.
pub async fn register_snapshot(live: &PgPool, name: &str, until: DateTime<Utc>) -> Result<()> {
    sqlx::query(
        "INSERT INTO snapshots (name, until) VALUES ($1, $2)
         ON CONFLICT (name) DO UPDATE SET until = excluded.until, created_at = now()",
    )
    .bind(name)
    .bind(until)
    .execute(live)
    .await
    .db("registering snapshot")?;
    Ok(())
}

/// The newest snapshot at or before `at`: (schema, until).
pub async fn snapshot_at(
    live: &PgPool,
    at: DateTime<Utc>,
) -> Result<Option<(String, DateTime<Utc>)>> {
    sqlx::query_as(
        "SELECT name, until FROM snapshots s WHERE until <= $1
           AND EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = s.name)
         ORDER BY until DESC LIMIT 1",
    )
    .bind(at)
    .fetch_optional(live)
    .await
    .db("finding snapshot")
}

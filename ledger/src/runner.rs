//! The batch loop: read owned partitions, decode, dead-letter what cannot be decoded, apply a
//! batch to PostgreSQL and store the next offsets in the same transaction.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::time::{Duration, Instant};

use otaledger_domain::device_view::Position;
use otaledger_domain::time::Micros;
use otaledger_domain::Event;
use sqlx::{PgConnection, PgPool};

use crate::config::KafkaConfig;
use crate::kafka::{wait_for_topic, EventProducer};
use crate::metrics::REGISTRY;
use crate::ownership::Ownership;
use crate::reader::{
    dead_letter_undecodable, Batch, Body, Decode, LedgerReader, ReaderConfig, Start,
};
use crate::shutdown::ShutdownSignal;
use crate::{db, DbContext, Result};

/// Decoded events read ahead while a transaction commits, at most: reading is about twenty
/// times faster than committing, so a larger read-ahead saves little time and holds memory in
/// every consumer (500,000 events held 1.3 GB more across a rollout's consumers).
const READ_AHEAD_MAX: usize = 100_000;

/// A decoded event and where it sits in its topic.
#[derive(Debug, Clone)]
pub struct Positioned {
    pub position: Position,
    pub event: Event,
}

/// What a consumer does with a batch, inside the transaction that also stores its offsets.
pub trait Projection: Send {
    fn apply<'a>(
        &'a mut self,
        tx: &'a mut PgConnection,
        events: &'a [Positioned],
    ) -> BoxFuture<'a, Result<()>>;

    /// Called after the batch and its offsets committed.
    fn committed(&mut self, _events: &[Positioned]) {}

    /// Called when the owned partitions changed or this instance was fenced: anything the
    /// projection remembers about rows of other partitions may be stale, and anything it
    /// folded but did not write is void (those events will be read again).
    fn ownership_changed(&mut self) {}

    /// Folds a decoded batch into what the next [`Projection::apply`] writes, for projections
    /// whose rows absorb many events (a device's heartbeats). Returns `false` when the
    /// projection does not fold: the runner then keeps the events and passes them to `apply`.
    /// A folding projection lets the runner gather several batches into one transaction
    /// without holding their events, so catching up writes each row once per transaction
    /// instead of once per batch.
    fn fold(&mut self, _events: &[Positioned]) -> bool {
        false
    }

    /// Rows a folding projection would write now (the runner commits before it exceeds
    /// `FoldWindow::max_rows`).
    fn folded_rows(&self) -> usize {
        0
    }
}

/// A boxed, sendable future (naming the type sidesteps rustc's higher-ranked `Send` inference
/// limits around sqlx executors).
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Names the consumer in `consumer_offsets` and in metrics, e.g. `projector`.
    pub consumer: String,
    pub topic: String,
    pub database_url: String,
    pub schema: String,
    /// Unique per process: host name and pid by default.
    pub member: String,
    pub batch_max: usize,
    pub batch_wait: Duration,
    /// How much a folding projection gathers into one transaction while it is behind.
    pub fold: FoldWindow,
    /// Larger windows while it is far behind (a backlog of seconds or hours): each device's row
    /// absorbs more events per write, and nobody is waiting for a row within the second.
    pub deep_fold: Option<FoldWindow>,
    pub rebalance_every: Duration,
    pub kafka: KafkaConfig,
    /// Rebuilds stop at these offsets (per partition, exclusive): records at or past them are
    /// not applied, so a rebuilt projection can be compared with a live one at its position.
    pub stop_at: Option<BTreeMap<i32, i64>>,
}

/// Folding projections gather batches into one transaction while batches arrive full and the
/// newest event read was recorded more than `when_behind` ago, up to `max_events` events,
/// `max_rows` folded rows or `max_wait`. A batch that is not full (caught up) commits at
/// once, and so does what was gathered when no record arrives for `batch_wait`.
#[derive(Debug, Clone, Copy)]
pub struct FoldWindow {
    pub when_behind: Duration,
    pub max_events: usize,
    pub max_rows: usize,
    pub max_wait: Duration,
}

impl RunnerConfig {
    /// The window for a consumer whose newest event read is `age` old, if it is behind.
    fn window(&self, age: Duration) -> Option<&FoldWindow> {
        match &self.deep_fold {
            Some(deep) if age > deep.when_behind => Some(deep),
            _ => (age > self.fold.when_behind).then_some(&self.fold),
        }
    }
}

/// Runs a [`Projection`] over the partitions this instance owns.
#[derive(Debug)]
pub struct Runner<P> {
    cfg: RunnerConfig,
    projection: P,
    producer: EventProducer,
    pool: PgPool,
}

impl<P: Projection> Runner<P> {
    #[must_use]
    pub fn new(cfg: RunnerConfig, projection: P, producer: EventProducer, pool: PgPool) -> Self {
        Runner {
            cfg,
            projection,
            producer,
            pool,
        }
    }

    /// Consumes until shutdown. Stopping between transactions loses nothing: offsets and rows
    /// were committed together, and whatever was read but not committed is read again.
    pub async fn run(mut self, mut shutdown: ShutdownSignal) -> Result<()> {
        let cfg = self.cfg.clone();
        let (mut ownership, reader) = join_partitions(
            &self.pool,
            &cfg.kafka,
            &cfg.database_url,
            &cfg.schema,
            &cfg.consumer,
            &cfg.topic,
            &cfg.member,
            (cfg.batch_max, cfg.batch_wait),
        )
        .await?;
        let m = Metrics::new(&cfg.consumer);
        tracing::info!(consumer = %cfg.consumer, topic = %cfg.topic, member = %cfg.member, "consumer starting");
        let mut next_rebalance = tokio::time::Instant::now();
        let mut pending = Pending::default();
        // While a transaction commits the runner goes on reading and decoding (so that Kafka
        // and the decoder work while PostgreSQL does): batches read ahead, and a read still in
        // flight when the commit ended.
        let mut reading: Option<BoxFuture<'_, Batch>> = None;
        let mut prefetched: VecDeque<Batch> = VecDeque::new();
        loop {
            if shutdown.is_triggered() {
                break;
            }
            if pending.is_empty() && tokio::time::Instant::now() >= next_rebalance {
                if ownership.rebalance().await? {
                    self.projection.ownership_changed();
                    // Reassigning seeks every partition to its stored offset: records already
                    // read for the old assignment are dropped and read again if still owned.
                    reading = None;
                    prefetched.clear();
                    assign(&reader, &cfg, &ownership)?;
                }
                m.owned
                    .set(i64::try_from(ownership.owned().len()).unwrap_or(0));
                next_rebalance = tokio::time::Instant::now() + cfg.rebalance_every;
            }
            let batch = match prefetched.pop_front() {
                Some(b) => Some(b),
                None => {
                    let mut read = reading
                        .take()
                        .unwrap_or_else(|| Box::pin(reader.read(next_rebalance)));
                    // While gathering, the next record of a consumer that is behind is already
                    // buffered: a pause of `batch_wait` means it caught up (the last batch only
                    // happened to be full), so what is pending commits now instead of waiting
                    // for more. The read goes on during the commit.
                    let gathering_until = pending.started.map(|s| {
                        (tokio::time::Instant::from_std(s) + pending.max_wait)
                            .min(tokio::time::Instant::now() + cfg.batch_wait)
                    });
                    tokio::select! {
                        () = shutdown.wait() => break,
                        b = &mut read => Some(b),
                        () = sleep_until_some(gathering_until) => {
                            if reader.is_receiving() {
                                // Records are arriving (a large batch takes longer than
                                // `batch_wait` to gather and decode): no pause.
                                Some(read.await)
                            } else {
                                reading = Some(read);
                                None
                            }
                        }
                    }
                }
            };
            let full = batch.as_ref().is_some_and(|b| b.full);
            if let Some(batch) = batch {
                self.stage(batch, &ownership, &mut pending).await?;
            }
            if pending.is_empty() {
                continue;
            }
            let started = *pending.started.get_or_insert_with(Instant::now);
            let age = pending.recorded_at.last().map_or(Duration::ZERO, |r| {
                let micros = otaledger_domain::time::now_micros() - r;
                Duration::from_micros(u64::try_from(micros).unwrap_or(0))
            });
            let window = cfg.window(age);
            pending.max_wait = window.map_or(Duration::ZERO, |w| w.max_wait);
            let gather = full
                && pending.events.is_empty()
                && window.is_some_and(|w| {
                    pending.recorded_at.len() < w.max_events
                        && self.projection.folded_rows() < w.max_rows
                        && started.elapsed() < w.max_wait
                });
            if gather {
                continue;
            }
            let mut read = reading
                .take()
                .unwrap_or_else(|| Box::pin(reader.read(next_rebalance)));
            let mut read_live = true;
            let mut ahead: usize = prefetched.iter().map(|b| b.records.len()).sum();
            let commit_started = Instant::now();
            let committed = {
                let commit = commit(&mut self.projection, &self.pool, &mut ownership, &pending);
                tokio::pin!(commit);
                loop {
                    tokio::select! {
                        r = &mut commit => break r?,
                        batch = &mut read, if read_live => {
                            ahead += batch.records.len();
                            // Read on while the stream is behind, up to one more transaction
                            // or `READ_AHEAD_MAX` (decoded events held in memory).
                            let more = batch.full
                                && ahead < cfg.fold.max_events.min(READ_AHEAD_MAX);
                            prefetched.push_back(batch);
                            if more {
                                read = Box::pin(reader.read(next_rebalance));
                            } else {
                                read_live = false;
                            }
                        }
                    }
                }
            };
            if !committed {
                tracing::warn!(consumer = %cfg.consumer, "fenced by a newer owner; giving up partitions");
                ownership.release_all().await?;
                self.projection.ownership_changed();
                pending = Pending::default();
                prefetched.clear();
                // Until the partitions are taken again, nothing is read for them; taking them
                // back seeks each to its stored offset.
                assign(&reader, &cfg, &ownership)?;
                next_rebalance = tokio::time::Instant::now();
                continue;
            }
            if read_live {
                reading = Some(read);
            }
            for (p, n) in &pending.next {
                if let Some(o) = ownership.owned_mut().get_mut(p) {
                    o.next_offset = *n;
                }
            }
            tracing::debug!(
                consumer = %cfg.consumer,
                events = pending.recorded_at.len(),
                gathered = ?commit_started.duration_since(started),
                commit = ?commit_started.elapsed(),
                ahead,
                "transaction committed"
            );
            m.applied.add(pending.recorded_at.len() as u64);
            m.batch_seconds.observe(started.elapsed().as_secs_f64());
            let now = otaledger_domain::time::now_micros();
            for r in &pending.recorded_at {
                #[allow(clippy::cast_precision_loss)]
                m.lag_seconds.observe((now - r).max(0) as f64 / 1e6);
            }
            self.projection.committed(&pending.events);
            pending = Pending::default();
        }
        drop(reading);
        ownership.release_all().await?;
        tracing::info!(consumer = %cfg.consumer, "consumer stopped");
        Ok(())
    }

    /// Dead-letters what did not decode and folds or keeps the rest for the next transaction.
    /// The reader hands on each record of the assigned partitions once, from their stored
    /// offsets; records of a partition lost since the read began are dropped here.
    async fn stage(
        &mut self,
        batch: Batch,
        ownership: &Ownership,
        pending: &mut Pending,
    ) -> Result<()> {
        let mut records = batch.records;
        records.retain(|r| ownership.owned().contains_key(&r.position.partition));
        for r in &records {
            pending
                .next
                .insert(r.position.partition, r.position.offset + 1);
        }
        // Dead letters must be safe in Kafka before the offsets that skip them are stored.
        dead_letter_undecodable(&self.producer, &self.cfg.topic, &records).await?;
        let events: Vec<Positioned> = records
            .into_iter()
            .filter_map(|r| match r.body {
                Body::Event { event, .. } => Some(Positioned {
                    position: r.position,
                    event,
                }),
                Body::Undecodable { .. } | Body::Raw(_) => None,
            })
            .collect();
        pending
            .recorded_at
            .extend(events.iter().map(|e| e.event.meta.recorded_at));
        if !events.is_empty() && !self.projection.fold(&events) {
            pending.events.extend(events);
        }
        Ok(())
    }
}

/// What has been read but not yet committed.
#[derive(Default)]
struct Pending {
    /// Per partition, the offset after the last record read.
    next: BTreeMap<i32, i64>,
    /// Events of a projection that does not fold.
    events: Vec<Positioned>,
    /// Of every event in the transaction, for the commit-lag metric.
    recorded_at: Vec<Micros>,
    /// When the first batch of the transaction was read.
    started: Option<Instant>,
    /// How long the current window may gather.
    max_wait: Duration,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.next.is_empty()
    }
}

/// Applies what is pending and stores its offsets in one transaction; `false` when this
/// instance was fenced (nothing committed).
async fn commit<P: Projection>(
    projection: &mut P,
    pool: &PgPool,
    ownership: &mut Ownership,
    pending: &Pending,
) -> Result<bool> {
    let mut tx = pool.begin().await.db("beginning batch")?;
    projection.apply(&mut tx, &pending.events).await?;
    if !ownership.store_offsets(&mut tx, &pending.next).await? {
        tx.rollback().await.db("rolling back fenced batch")?;
        return Ok(false);
    }
    tx.commit().await.db("committing batch")?;
    Ok(true)
}

struct Metrics {
    applied: crate::metrics::Counter,
    batch_seconds: crate::metrics::Histogram,
    lag_seconds: crate::metrics::Histogram,
    owned: crate::metrics::Gauge,
}

impl Metrics {
    fn new(consumer: &str) -> Self {
        Metrics {
            applied: REGISTRY.counter(
                "otaledger_consumer_events_total",
                "Events applied by a ledger consumer",
                &[("consumer", consumer)],
            ),
            batch_seconds: REGISTRY.histogram(
                "otaledger_consumer_batch_seconds",
                "From reading a transaction's first batch to its commit with its offsets",
                &[("consumer", consumer)],
            ),
            lag_seconds: REGISTRY.histogram(
                "otaledger_consumer_commit_lag_seconds",
                "From an event's recorded-at time to the commit of the batch that applied it",
                &[("consumer", consumer)],
            ),
            owned: REGISTRY.gauge(
                "otaledger_consumer_owned_partitions",
                "Partitions this instance owns",
                &[("consumer", consumer)],
            ),
        }
    }
}

/// What every ledger consumer starts with: the topic, membership in its partition ownership
/// (ADR 0001) and the ledger reader of the topic, nothing assigned yet. `batch` is the most
/// records a read gathers and for how long after its first.
#[allow(clippy::too_many_arguments)]
pub async fn join_partitions(
    pool: &PgPool,
    kafka: &KafkaConfig,
    database_url: &str,
    schema: &str,
    consumer: &str,
    topic: &str,
    member: &str,
    batch: (usize, Duration),
) -> Result<(Ownership, LedgerReader)> {
    let partitions = wait_for_topic(kafka, topic, Duration::from_secs(60)).await?;
    let lock_conn = db::connection(database_url, schema).await?;
    let ownership = Ownership::join(
        pool.clone(),
        lock_conn,
        schema,
        consumer,
        topic,
        member,
        partitions,
    )
    .await?;
    let reader = LedgerReader::new(
        kafka,
        ReaderConfig {
            label: consumer.to_owned(),
            topics: vec![topic.to_owned()],
            batch_max: batch.0,
            batch_wait: batch.1,
            decode: Decode::Events,
        },
    )?;
    Ok((ownership, reader))
}

/// Reads the owned partitions, each from its stored offset; a rebuild's up to where it stops.
fn assign(reader: &LedgerReader, cfg: &RunnerConfig, ownership: &Ownership) -> Result<()> {
    reader.assign(ownership.owned().iter().map(|(p, o)| Start {
        topic: 0,
        partition: *p,
        next: o.next_offset,
        end: cfg.stop_at.as_ref().map(|s| s.get(p).copied().unwrap_or(0)),
    }))
}

/// Sleeps until `until`, or forever when there is none.
async fn sleep_until_some(until: Option<tokio::time::Instant>) {
    match until {
        Some(u) => tokio::time::sleep_until(u).await,
        None => std::future::pending().await,
    }
}

/// The offsets a consumer committed, by partition.
pub async fn committed_offsets(
    pool: &PgPool,
    consumer: &str,
    topic: &str,
) -> Result<BTreeMap<i32, i64>> {
    let rows: Vec<(i32, i64)> = sqlx::query_as(
        "SELECT partition, next_offset FROM consumer_offsets WHERE consumer = $1 AND topic = $2",
    )
    .bind(consumer)
    .bind(topic)
    .fetch_all(pool)
    .await
    .db("reading offsets")?;
    Ok(rows.into_iter().collect())
}

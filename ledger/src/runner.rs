//! The batch loop: read owned partitions, decode, dead-letter what cannot be decoded, apply a
//! batch to PostgreSQL and store the next offsets in the same transaction; when PostgreSQL
//! refuses a batch for the data it carries, leave out and dead-letter the events at fault
//! (ADR 0021).

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::time::{Duration, Instant};

use otaledger_domain::device_view::Position;
use otaledger_domain::time::Micros;
use otaledger_domain::Event;
use sqlx::{PgConnection, PgPool};

use crate::config::KafkaConfig;
use crate::fence::Fences;
use crate::kafka::{wait_for_topic, EventProducer};
use crate::metrics::REGISTRY;
use crate::ownership::Ownership;
use crate::reader::{
    dead_letter_undecodable, Batch, Body, Decode, LedgerReader, ReaderConfig, Start,
};
use crate::reset::check_positions;
use crate::shutdown::ShutdownSignal;
use crate::unappliable::{apply_leaving_out, data_fault, dead_letter_refused};
use crate::{db, DbContext, Error, Result};

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
///
/// When PostgreSQL refuses a batch for its data, `apply` is called again on parts of it under
/// savepoints, in order, and [`Projection::ownership_changed`] after each refused part (ADR
/// 0021): what it remembers of a refused part's rows must not survive that call.
pub trait Projection: Send {
    fn apply(
        &mut self,
        tx: &mut PgConnection,
        events: &[Positioned],
    ) -> impl Future<Output = Result<()>> + Send;

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

/// A boxed, sendable future: a read kept in flight from one turn of the loop to the next.
type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

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

impl FoldWindow {
    /// Whether a transaction of `events` events, `rows` folded rows, gathering for `elapsed`,
    /// may gather another batch.
    #[must_use]
    pub fn has_room(&self, events: usize, rows: usize, elapsed: Duration) -> bool {
        events < self.max_events && rows < self.max_rows && elapsed < self.max_wait
    }
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
    ///
    /// Each turn of the loop takes these steps: rebalance (when due and nothing is pending),
    /// read a batch (or notice a pause), stage it, decide whether to gather more into the
    /// transaction, and commit while reading ahead; a commit refused by a newer owner gives
    /// everything up, and one PostgreSQL refuses for its data leaves out the events at fault.
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
            cfg.rebalance_every,
        )
        .await?;
        let m = Metrics::new(&cfg.consumer);
        tracing::info!(consumer = %cfg.consumer, topic = %cfg.topic, member = %cfg.member, "consumer starting");
        let mut turn = Turn {
            next_rebalance: tokio::time::Instant::now(),
            pending: Pending::default(),
            prefetched: VecDeque::new(),
            reading: None,
            unfolded_until: BTreeMap::new(),
        };
        loop {
            if shutdown.is_triggered() {
                break;
            }
            self.rebalance_if_due(&reader, &mut ownership, &mut turn, &m)
                .await?;
            let batch = match self.read(&reader, &mut turn, &mut shutdown).await {
                Read::Stop => break,
                Read::Paused => None,
                Read::Batch(b) => Some(b),
            };
            let full = batch.as_ref().is_some_and(|b| b.full);
            if let Some(batch) = batch {
                let may_fold = turn.unfolded_until.is_empty();
                self.stage(batch, &ownership, &mut turn.pending, may_fold, &m)
                    .await?;
            }
            if turn.pending.is_empty() || self.gathers(full, &mut turn.pending) {
                continue;
            }
            match self
                .commit_reading_ahead(&reader, &mut ownership, &mut turn)
                .await?
            {
                Commit::Done => self.account(&mut ownership, &mut turn, &m, &[]),
                Commit::Fenced => self.give_up(&reader, &mut ownership, &mut turn).await?,
                Commit::Refused(e) => {
                    self.leave_out_refused(&reader, &mut ownership, &mut turn, &m, &e)
                        .await?;
                }
            }
        }
        drop(turn);
        ownership.release_all().await?;
        tracing::info!(consumer = %cfg.consumer, "consumer stopped");
        Ok(())
    }

    /// Step 1: rechecks ownership every `rebalance_every` while nothing is pending;
    /// reassigning seeks every partition to its stored offset, and records already read for
    /// the old assignment are dropped (and read again if still owned).
    async fn rebalance_if_due(
        &mut self,
        reader: &LedgerReader,
        ownership: &mut Ownership,
        turn: &mut Turn<'_>,
        m: &Metrics,
    ) -> Result<()> {
        if !turn.pending.is_empty() || tokio::time::Instant::now() < turn.next_rebalance {
            return Ok(());
        }
        if ownership.rebalance().await? {
            self.projection.ownership_changed();
            turn.reading = None;
            turn.prefetched.clear();
            assign(reader, &self.cfg, ownership).await?;
        }
        m.owned
            .set(i64::try_from(ownership.owned().len()).unwrap_or(0));
        turn.next_rebalance = tokio::time::Instant::now() + self.cfg.rebalance_every;
        Ok(())
    }

    /// Step 2: the next batch, read ahead during the last commit or read now. While gathering,
    /// the next record of a consumer that is behind is already buffered: a pause of
    /// `batch_wait` means it caught up (the last batch only happened to be full), so what is
    /// pending commits now instead of waiting for more; the read goes on during the commit.
    async fn read<'r>(
        &self,
        reader: &'r LedgerReader,
        turn: &mut Turn<'r>,
        shutdown: &mut ShutdownSignal,
    ) -> Read {
        if let Some(b) = turn.prefetched.pop_front() {
            return Read::Batch(b);
        }
        let mut read = turn
            .reading
            .take()
            .unwrap_or_else(|| Box::pin(reader.read(turn.next_rebalance)));
        let gathering_until = turn.pending.started.map(|s| {
            (tokio::time::Instant::from_std(s) + turn.pending.max_wait)
                .min(tokio::time::Instant::now() + self.cfg.batch_wait)
        });
        tokio::select! {
            () = shutdown.wait() => Read::Stop,
            b = &mut read => Read::Batch(b),
            () = sleep_until_some(gathering_until) => {
                if reader.is_receiving() {
                    // Records are arriving (a large batch takes longer than `batch_wait` to
                    // gather and decode): no pause.
                    Read::Batch(read.await)
                } else {
                    turn.reading = Some(read);
                    Read::Paused
                }
            }
        }
    }

    /// Step 4: whether to gather another batch into the transaction (see [`FoldWindow`]).
    fn gathers(&self, full: bool, pending: &mut Pending) -> bool {
        let started = *pending.started.get_or_insert_with(Instant::now);
        let age = pending.recorded_at.last().map_or(Duration::ZERO, |r| {
            let micros = otaledger_domain::time::now_micros() - r;
            Duration::from_micros(u64::try_from(micros).unwrap_or(0))
        });
        let window = self.cfg.window(age);
        pending.max_wait = window.map_or(Duration::ZERO, |w| w.max_wait);
        full && pending.events.is_empty()
            && window.is_some_and(|w| {
                w.has_room(
                    pending.recorded_at.len(),
                    self.projection.folded_rows(),
                    started.elapsed(),
                )
            })
    }

    /// Step 5: applies what is pending and stores its offsets in one transaction, reading on
    /// meanwhile (so that Kafka and the decoder work while PostgreSQL does) while the stream
    /// is behind, up to one more transaction or `READ_AHEAD_MAX` decoded events.
    async fn commit_reading_ahead<'r>(
        &mut self,
        reader: &'r LedgerReader,
        ownership: &mut Ownership,
        turn: &mut Turn<'r>,
    ) -> Result<Commit> {
        let mut read = turn
            .reading
            .take()
            .unwrap_or_else(|| Box::pin(reader.read(turn.next_rebalance)));
        let mut read_live = true;
        let mut ahead: usize = turn.prefetched.iter().map(|b| b.records.len()).sum();
        let commit_started = Instant::now();
        let committed = {
            let commit = commit(&mut self.projection, &self.pool, ownership, &turn.pending);
            tokio::pin!(commit);
            loop {
                tokio::select! {
                    r = &mut commit => break r?,
                    batch = &mut read, if read_live => {
                        ahead += batch.records.len();
                        let more = batch.full
                            && ahead < self.cfg.fold.max_events.min(READ_AHEAD_MAX);
                        turn.prefetched.push_back(batch);
                        if more {
                            read = Box::pin(reader.read(turn.next_rebalance));
                        } else {
                            read_live = false;
                        }
                    }
                }
            }
        };
        if !matches!(committed, Commit::Fenced) && read_live {
            turn.reading = Some(read);
        }
        tracing::debug!(
            consumer = %self.cfg.consumer,
            events = turn.pending.recorded_at.len(),
            gathered = ?turn.pending.started.map(|s| commit_started.duration_since(s)),
            commit = ?commit_started.elapsed(),
            ahead,
            ?committed,
            "transaction ended"
        );
        Ok(committed)
    }

    /// Step 6a: after a commit, the owned positions move on and the metrics count it; the
    /// events at `left_out` (indexes into the pending events) were dead-lettered instead.
    fn account(
        &mut self,
        ownership: &mut Ownership,
        turn: &mut Turn<'_>,
        m: &Metrics,
        left_out: &[usize],
    ) {
        let mut pending = std::mem::take(&mut turn.pending);
        for (p, n) in &pending.next {
            if let Some(o) = ownership.owned_mut().get_mut(p) {
                o.next_offset = *n;
                if let Some(f) = pending.fences.get(p) {
                    o.fences.clone_from(f);
                }
            }
        }
        // Reading without folding ends where the refused transaction ended.
        turn.unfolded_until.retain(|p, until| {
            ownership
                .owned()
                .get(p)
                .is_some_and(|o| o.next_offset < *until)
        });
        if !left_out.is_empty() {
            pending.events = std::mem::take(&mut pending.events)
                .into_iter()
                .enumerate()
                .filter(|(i, _)| !left_out.contains(i))
                .map(|(_, e)| e)
                .collect();
        }
        m.applied
            .add(pending.recorded_at.len().saturating_sub(left_out.len()) as u64);
        if let Some(started) = pending.started {
            m.batch_seconds.observe(started.elapsed().as_secs_f64());
        }
        let now = otaledger_domain::time::now_micros();
        for r in &pending.recorded_at {
            #[allow(clippy::cast_precision_loss)]
            m.lag_seconds.observe((now - r).max(0) as f64 / 1e6);
        }
        self.projection.committed(&pending.events);
    }

    /// Step 6b: fenced by a newer owner: everything is given up; until the partitions are taken
    /// again nothing is read for them, and taking them back seeks each to its stored offset.
    async fn give_up(
        &mut self,
        reader: &LedgerReader,
        ownership: &mut Ownership,
        turn: &mut Turn<'_>,
    ) -> Result<()> {
        tracing::warn!(consumer = %self.cfg.consumer, "fenced by a newer owner; giving up partitions");
        ownership.release_all().await?;
        self.projection.ownership_changed();
        turn.pending = Pending::default();
        turn.prefetched.clear();
        turn.reading = None;
        assign(reader, &self.cfg, ownership).await?;
        turn.next_rebalance = tokio::time::Instant::now();
        Ok(())
    }

    /// Step 6c: PostgreSQL refused the transaction for the data it carries (ADR 0021). With
    /// the events at hand, they are applied again under savepoints, leaving out and
    /// dead-lettering those it refuses, and the rest commits with the offsets past them. What a
    /// folding projection folded has no events to blame: it is read again, without folding,
    /// from the stored offsets up to where the refused transaction ended.
    async fn leave_out_refused(
        &mut self,
        reader: &LedgerReader,
        ownership: &mut Ownership,
        turn: &mut Turn<'_>,
        m: &Metrics,
        refusal: &Error,
    ) -> Result<()> {
        if turn.pending.folded {
            tracing::warn!(consumer = %self.cfg.consumer, events = turn.pending.recorded_at.len(),
                error = %refusal,
                "a folded transaction was refused for its data; reading it again without folding");
            for (p, next) in &turn.pending.next {
                let until = turn.unfolded_until.entry(*p).or_insert(*next);
                *until = (*until).max(*next);
            }
            turn.pending = Pending::default();
            turn.prefetched.clear();
            turn.reading = None;
            return assign(reader, &self.cfg, ownership).await;
        }
        let mut tx = self.pool.begin().await.db("beginning batch")?;
        let events = &turn.pending.events;
        let refused = apply_leaving_out(&mut self.projection, &mut tx, events).await?;
        if !ownership
            .store_offsets(&mut tx, &turn.pending.next, &turn.pending.fences)
            .await?
        {
            tx.rollback().await.db("rolling back fenced batch")?;
            return self.give_up(reader, ownership, turn).await;
        }
        // Dead letters must be safe in Kafka before the offsets that skip them are stored.
        let (topic, consumer) = (&self.cfg.topic, &self.cfg.consumer);
        dead_letter_refused(&self.producer, topic, consumer, events, &refused).await?;
        tx.commit().await.db("committing batch")?;
        m.unappliable.add(refused.len() as u64);
        let left_out: Vec<usize> = refused.iter().map(|(i, _)| *i).collect();
        self.account(ownership, turn, m, &left_out);
        Ok(())
    }

    /// Dead-letters what did not decode and folds (when `may_fold`) or keeps the rest for the
    /// next transaction. The reader hands on each record of the assigned partitions once, from
    /// their stored offsets; records of a partition lost since the read began are dropped here.
    async fn stage(
        &mut self,
        batch: Batch,
        ownership: &Ownership,
        pending: &mut Pending,
        may_fold: bool,
        m: &Metrics,
    ) -> Result<()> {
        let mut records = batch.records;
        records.retain(|r| ownership.owned().contains_key(&r.position.partition));
        for r in &records {
            pending
                .next
                .insert(r.position.partition, r.position.offset + 1);
        }
        for ((_, p), f) in batch.fences {
            pending.fences.insert(p, f);
        }
        // Dead letters must be safe in Kafka before the offsets that skip them are stored.
        let (topic, consumer) = (&self.cfg.topic, &self.cfg.consumer);
        let undecodable =
            dead_letter_undecodable(&self.producer, topic, consumer, &records).await?;
        m.undecodable.add(undecodable as u64);
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
        if events.is_empty() {
            return Ok(());
        }
        if may_fold && self.projection.fold(&events) {
            pending.folded = true;
        } else {
            pending.events.extend(events);
        }
        Ok(())
    }
}

/// What one turn of the loop hands to the next.
struct Turn<'r> {
    next_rebalance: tokio::time::Instant,
    pending: Pending,
    /// Batches read ahead while the last transaction committed.
    prefetched: VecDeque<Batch>,
    /// A read still in flight when the last commit ended, or that a pause left running.
    reading: Option<BoxFuture<'r, Batch>>,
    /// Per partition, where reading without folding ends: a folded transaction that PostgreSQL
    /// refused for its data is read again with its events kept, to find the ones at fault.
    unfolded_until: BTreeMap<i32, i64>,
}

/// What step 2 found.
enum Read {
    Stop,
    /// No record for `batch_wait` while gathering: commit what is pending.
    Paused,
    Batch(Batch),
}

/// What has been read but not yet committed.
#[derive(Default)]
struct Pending {
    /// Per partition, the offset after the last record read.
    next: BTreeMap<i32, i64>,
    /// Per partition with any, the writers' fences read so far (ADR 0039).
    fences: BTreeMap<i32, Fences>,
    /// Events of a projection that does not fold (or that reads without folding).
    events: Vec<Positioned>,
    /// Whether the projection folded events of this transaction (not kept in `events`).
    folded: bool,
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

/// How a transaction ended.
#[derive(Debug)]
enum Commit {
    Done,
    /// A newer owner fenced this instance: nothing committed.
    Fenced,
    /// PostgreSQL refused what the projection wrote for the data it carries: nothing
    /// committed, and what the projection staged or folded is void.
    Refused(Error),
}

/// Applies what is pending and stores its offsets in one transaction. An error that is not
/// about the data fails the runner, as before: the transaction is retried after a restart.
async fn commit<P: Projection>(
    projection: &mut P,
    pool: &PgPool,
    ownership: &mut Ownership,
    pending: &Pending,
) -> Result<Commit> {
    let mut tx = pool.begin().await.db("beginning batch")?;
    if let Err(e) = projection.apply(&mut tx, &pending.events).await {
        if data_fault(&e).is_none() {
            return Err(e);
        }
        tx.rollback().await.db("rolling back refused batch")?;
        projection.ownership_changed();
        return Ok(Commit::Refused(e));
    }
    if !ownership
        .store_offsets(&mut tx, &pending.next, &pending.fences)
        .await?
    {
        tx.rollback().await.db("rolling back fenced batch")?;
        return Ok(Commit::Fenced);
    }
    tx.commit().await.db("committing batch")?;
    Ok(Commit::Done)
}

struct Metrics {
    applied: crate::metrics::Counter,
    undecodable: crate::metrics::Counter,
    unappliable: crate::metrics::Counter,
    batch_seconds: crate::metrics::Histogram,
    lag_seconds: crate::metrics::Histogram,
    owned: crate::metrics::Gauge,
}

impl Metrics {
    fn new(consumer: &str) -> Self {
        let dead_letters = |reason| {
            REGISTRY.counter(
                "otaledger_consumer_dead_letters_total",
                "Records a ledger consumer dead-lettered and went on without, by reason",
                &[("consumer", consumer), ("reason", reason)],
            )
        };
        Metrics {
            applied: REGISTRY.counter(
                "otaledger_consumer_events_total",
                "Events applied by a ledger consumer",
                &[("consumer", consumer)],
            ),
            undecodable: dead_letters("undecodable"),
            unappliable: dead_letters(crate::unappliable::REASON),
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
/// records a read gathers and for how long after its first; a member gone silent loses its
/// locks within about `rebalance_every`.
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
    rebalance_every: Duration,
) -> Result<(Ownership, LedgerReader)> {
    let partitions = wait_for_topic(kafka, topic, Duration::from_secs(60)).await?;
    let lock_conn = db::lock_connection(database_url, schema, rebalance_every).await?;
    let ownership = Ownership::join(
        pool.clone(),
        lock_conn,
        db::lease(rebalance_every),
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
/// Refuses a ledger that no longer holds what the stored offsets stand for (ADR 0023).
async fn assign(reader: &LedgerReader, cfg: &RunnerConfig, ownership: &Ownership) -> Result<()> {
    let stored = ownership.owned().iter().map(|(p, o)| (*p, o.next_offset));
    check_positions(&cfg.kafka, &cfg.consumer, &cfg.topic, &stored.collect()).await?;
    reader.assign(ownership.owned().iter().map(|(p, o)| Start {
        topic: 0,
        partition: *p,
        next: o.next_offset,
        end: cfg.stop_at.as_ref().map(|s| s.get(p).copied().unwrap_or(0)),
        fences: o.fences.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;

    const LIVE: FoldWindow = FoldWindow {
        when_behind: Duration::from_secs(1),
        max_events: 100,
        max_rows: 50,
        max_wait: Duration::from_secs(1),
    };
    const DEEP: FoldWindow = FoldWindow {
        when_behind: Duration::from_secs(5),
        max_events: 1000,
        max_rows: 500,
        max_wait: Duration::from_secs(10),
    };

    fn config(deep: Option<FoldWindow>) -> RunnerConfig {
        RunnerConfig {
            consumer: "c".into(),
            topic: "t".into(),
            database_url: String::new(),
            schema: "s".into(),
            member: "m".into(),
            batch_max: 10,
            batch_wait: Duration::from_millis(20),
            fold: LIVE,
            deep_fold: deep,
            rebalance_every: Duration::from_secs(2),
            kafka: KafkaConfig::default(),
            stop_at: None,
        }
    }

    #[test]
    fn a_window_has_room_strictly_below_each_limit() {
        let second = Duration::from_secs(1);
        let just_under = second - Duration::from_nanos(1);
        assert!(LIVE.has_room(99, 49, just_under));
        assert!(!LIVE.has_room(100, 49, just_under), "events at the limit");
        assert!(!LIVE.has_room(99, 50, just_under), "rows at the limit");
        assert!(!LIVE.has_room(99, 49, second), "time at the limit");
    }

    #[test]
    fn events_older_than_the_thresholds_pick_the_live_then_the_deep_window() {
        let cfg = config(Some(DEEP));
        let window = |secs: u64| cfg.window(Duration::from_secs(secs)).map(|w| w.max_events);
        assert_eq!(
            window(1),
            None,
            "at the live threshold: fresh, commit at once"
        );
        assert_eq!(window(2), Some(100));
        assert_eq!(window(5), Some(100), "at the deep threshold: still live");
        assert_eq!(window(6), Some(1000));
        let no_deep = config(None);
        assert_eq!(
            no_deep
                .window(Duration::from_secs(3600))
                .map(|w| w.max_events),
            Some(100),
            "without deep windows an hour's backlog gathers in live windows"
        );
    }
}

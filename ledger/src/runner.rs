//! The batch loop: read owned partitions, decode, dead-letter what cannot be decoded, apply a
//! batch to PostgreSQL and store the next offsets in the same transaction.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::config::KafkaConfig;
use crate::dead_letters::{dead_letter, Origin, Rejection};
use crate::kafka::{client_config, wait_for_topic, EventProducer};
use crate::metrics::REGISTRY;
use crate::shutdown::ShutdownSignal;
use otaledger_domain::device_view::Position;
use otaledger_domain::time::Micros;
use otaledger_domain::Event;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::TopicPartitionList;
use sqlx::{PgConnection, PgPool};

use crate::ownership::Ownership;
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

/// A batch as read and decoded, before it is filtered by ownership and position.
struct Batch {
    records: Vec<Record>,
    /// The read stopped at `batch_max`: more is probably waiting.
    full: bool,
}

struct Record {
    partition: i32,
    offset: i64,
    decoded: std::result::Result<Event, Undecodable>,
}

/// A record that did not decode, kept whole for its dead letter.
struct Undecodable {
    key: Vec<u8>,
    payload: Vec<u8>,
    error: String,
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
        let (mut ownership, consumer) = join_partitions(
            &self.pool,
            &cfg.kafka,
            &cfg.database_url,
            &cfg.schema,
            &cfg.consumer,
            &cfg.topic,
            &cfg.member,
        )
        .await?;
        let m = Metrics::new(&cfg.consumer);
        tracing::info!(consumer = %cfg.consumer, topic = %cfg.topic, member = %cfg.member, "consumer starting");
        let mut next_rebalance = tokio::time::Instant::now();
        let mut pending = Pending::default();
        // Set while the read in flight has its first record and gathers the rest (so never
        // while a read waits for its first record, which may take until the next rebalance).
        let receiving = AtomicBool::new(false);
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
                    assign(&consumer, &cfg.topic, &ownership)?;
                }
                m.owned
                    .set(i64::try_from(ownership.owned().len()).unwrap_or(0));
                next_rebalance = tokio::time::Instant::now() + cfg.rebalance_every;
            }
            let batch = match prefetched.pop_front() {
                Some(b) => Some(b),
                None => {
                    let mut read = reading.take().unwrap_or_else(|| {
                        Box::pin(collect(&consumer, &cfg, next_rebalance, &receiving))
                    });
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
                            if receiving.load(Ordering::Relaxed) {
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
                .unwrap_or_else(|| Box::pin(collect(&consumer, &cfg, next_rebalance, &receiving)));
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
                                read = Box::pin(collect(&consumer, &cfg, next_rebalance, &receiving));
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

    /// Decodes the records of owned partitions not applied yet, dead-letters what cannot be
    /// decoded, and folds or keeps the rest for the next transaction.
    async fn stage(
        &mut self,
        batch: Batch,
        ownership: &Ownership,
        pending: &mut Pending,
    ) -> Result<()> {
        let mut events = Vec::with_capacity(batch.records.len());
        let mut dead = Vec::new();
        for raw in batch.records {
            let Some(owned) = ownership.owned().get(&raw.partition) else {
                continue;
            };
            if self
                .cfg
                .stop_at
                .as_ref()
                .is_some_and(|s| raw.offset >= s.get(&raw.partition).copied().unwrap_or(0))
            {
                continue;
            }
            let expected = pending
                .next
                .get(&raw.partition)
                .copied()
                .unwrap_or(owned.next_offset);
            if raw.offset < expected {
                continue; // already applied: a redelivery after reassignment
            }
            pending.next.insert(raw.partition, raw.offset + 1);
            match raw.decoded {
                Ok(event) => events.push(Positioned {
                    position: Position {
                        partition: raw.partition,
                        offset: raw.offset,
                    },
                    event,
                }),
                Err(u) => {
                    let origin = Origin {
                        source: "kafka",
                        channel: &self.cfg.topic,
                        partition: Some(raw.partition),
                        offset: Some(raw.offset),
                    };
                    let rejection = Rejection::new("undecodable", u.error);
                    dead.push(
                        dead_letter(&self.producer, &origin, &u.key, &u.payload, &rejection)
                            .await?,
                    );
                }
            }
        }
        // Dead letters must be safe in Kafka before the offsets that skip them are stored.
        for d in dead {
            d.acked().await?;
        }
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
/// (ADR 0001) and a Kafka consumer that only ever reads with `assign()`.
pub async fn join_partitions(
    pool: &PgPool,
    kafka: &KafkaConfig,
    database_url: &str,
    schema: &str,
    consumer: &str,
    topic: &str,
    member: &str,
) -> Result<(Ownership, StreamConsumer)> {
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
    let stream: StreamConsumer = consumer_config(kafka, consumer)
        .create()
        .map_err(|source| Error::Kafka {
            context: format!("creating the {consumer} consumer"),
            source,
        })?;
    Ok((ownership, stream))
}

/// How every ledger consumer reads: offsets are kept in PostgreSQL, never in Kafka, and only
/// `assign()` is used (the group id is a label).
#[must_use]
pub fn consumer_config(kafka: &KafkaConfig, consumer: &str) -> rdkafka::ClientConfig {
    let mut c = client_config(kafka);
    c.set("group.id", format!("otaledger-{consumer}"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("queued.min.messages", "200000")
        .set("fetch.wait.max.ms", "10")
        // librdkafka postpones a partition's next fetch by a second when its local queue is
        // over the thresholds, and by half a second after a fetch error. Either left a live
        // projector idle, then flooded (60 s at 21,600 events/s: 4-13 pauses of over 0.3 s,
        // lag p99 1,257-1,477 ms; with these, 2 pauses and 645-762 ms).
        .set("fetch.queue.backoff.ms", "10")
        .set("fetch.error.backoff.ms", "50");
    c
}

fn assign(consumer: &StreamConsumer, topic: &str, ownership: &Ownership) -> Result<()> {
    let mut tpl = TopicPartitionList::new();
    for (p, o) in ownership.owned() {
        // Records before `next_offset` are dropped by the batch loop.
        let offset = crate::kafka::resume_from(o.next_offset);
        tpl.add_partition_offset(topic, *p, offset)
            .map_err(|source| Error::Kafka {
                context: "building assignment".into(),
                source,
            })?;
    }
    consumer.assign(&tpl).map_err(|source| Error::Kafka {
        context: "assigning partitions".into(),
        source,
    })
}

/// Sleeps until `until`, or forever when there is none.
async fn sleep_until_some(until: Option<tokio::time::Instant>) {
    match until {
        Some(u) => tokio::time::sleep_until(u).await,
        None => std::future::pending().await,
    }
}

/// Waits for a first record (until `until`), then gathers more for up to `batch_wait` or
/// `batch_max` records and decodes them.
async fn collect(
    consumer: &StreamConsumer,
    cfg: &RunnerConfig,
    until: tokio::time::Instant,
    receiving: &AtomicBool,
) -> Batch {
    let mut raw = RawBatch::default();
    receiving.store(false, Ordering::Relaxed);
    let first = tokio::time::timeout_at(until, consumer.recv()).await;
    let Ok(first) = first else {
        return Batch {
            records: Vec::new(),
            full: false,
        };
    };
    receiving.store(true, Ordering::Relaxed);
    raw.push(first);
    let deadline = tokio::time::Instant::now() + cfg.batch_wait;
    while raw.len() < cfg.batch_max {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(m) => raw.push(m),
            Err(_) => break,
        }
    }
    let full = raw.len() >= cfg.batch_max;
    let records = raw.decode().await;
    receiving.store(false, Ordering::Relaxed);
    Batch { records, full }
}

/// Records from this many on are decoded on two threads: decoding is the largest part of
/// reading a backlog, and the task that folds would otherwise do it alone on one core.
const PARALLEL_DECODE_FROM: usize = 1000;

/// Records as read, their bytes copied into one buffer (no allocation per record), so that
/// they can be decoded on another thread.
#[derive(Default)]
struct RawBatch {
    bytes: Vec<u8>,
    /// Partition, offset, and where the record's key and payload end in `bytes`.
    items: Vec<(i32, i64, usize, usize)>,
}

impl RawBatch {
    fn len(&self) -> usize {
        self.items.len()
    }

    fn push(
        &mut self,
        m: std::result::Result<rdkafka::message::BorrowedMessage<'_>, rdkafka::error::KafkaError>,
    ) {
        match m {
            Ok(m) => self.push_record(
                m.partition(),
                m.offset(),
                m.key().unwrap_or_default(),
                m.payload().unwrap_or_default(),
            ),
            // Transient fetch errors (broker restart, leader change) are retried by librdkafka.
            Err(e) => tracing::warn!(error = %e, "kafka fetch error"),
        }
    }

    fn push_record(&mut self, partition: i32, offset: i64, key: &[u8], payload: &[u8]) {
        self.bytes.extend_from_slice(key);
        let key_end = self.bytes.len();
        self.bytes.extend_from_slice(payload);
        self.items
            .push((partition, offset, key_end, self.bytes.len()));
    }

    /// Decodes every record, in order: the second half on a blocking thread while this task
    /// decodes the first.
    async fn decode(self) -> Vec<Record> {
        let n = self.items.len();
        if n < PARALLEL_DECODE_FROM {
            return self.decode_range(0..n);
        }
        let raw = std::sync::Arc::new(self);
        let other = std::sync::Arc::clone(&raw);
        let second = tokio::task::spawn_blocking(move || other.decode_range(n / 2..n));
        let mut records = raw.decode_range(0..n / 2);
        match second.await {
            Ok(rest) => records.extend(rest),
            // A panic in the decoder, or a runtime shutting down: decode the half here.
            Err(_) => records.extend(raw.decode_range(n / 2..n)),
        }
        records
    }

    fn decode_range(&self, range: std::ops::Range<usize>) -> Vec<Record> {
        let mut records = Vec::with_capacity(range.len());
        for i in range {
            let (partition, offset, key_end, end) = self.items[i];
            let start = if i == 0 { 0 } else { self.items[i - 1].3 };
            let (key, payload) = (&self.bytes[start..key_end], &self.bytes[key_end..end]);
            records.push(Record {
                partition,
                offset,
                decoded: match otaledger_schemas::decode(payload) {
                    Ok(d) => Ok(d.event),
                    // Only a record that did not decode is kept whole, for its dead letter.
                    Err(e) => Err(Undecodable {
                        key: key.to_vec(),
                        payload: payload.to_vec(),
                        error: e.to_string(),
                    }),
                },
            });
        }
        records
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
    use otaledger_domain::events::{Health, Heartbeat};
    use otaledger_domain::{EventMeta, Payload};

    fn heartbeat(i: usize) -> Event {
        Event {
            meta: EventMeta {
                event_id: otaledger_domain::ids::new_event_id(),
                occurred_at: 1,
                recorded_at: 2,
                trace_id: String::new(),
            },
            payload: Payload::Heartbeat(Heartbeat {
                device_id: format!("d-{i}"),
                firmware_version: "1.0.0".into(),
                gateway_id: None,
                health: Health {
                    uptime_s: 1,
                    cpu_pct: 1.0,
                    mem_pct: 1.0,
                    temperature_c: 1.0,
                    error_count: 0,
                    signal_dbm: None,
                },
            }),
        }
    }

    #[tokio::test]
    async fn a_batch_decoded_on_two_threads_keeps_its_order_and_its_undecodable_bytes() {
        let n = PARALLEL_DECODE_FROM * 3 + 1;
        let mut raw = RawBatch::default();
        for i in 0..n {
            let key = format!("d-{i}").into_bytes();
            let payload = if i % 500 == 7 {
                format!("garbage {i}").into_bytes()
            } else {
                otaledger_schemas::encode(&heartbeat(i)).unwrap_or_default()
            };
            raw.push_record(i32::try_from(i % 3).unwrap_or(0), i as i64, &key, &payload);
        }
        let records = raw.decode().await;
        assert_eq!(records.len(), n);
        for (i, r) in records.iter().enumerate() {
            assert_eq!(
                (r.partition, r.offset),
                (i32::try_from(i % 3).unwrap_or(0), i as i64)
            );
            match &r.decoded {
                Ok(e) => assert_eq!(e.key(), format!("d-{i}"), "record {i}"),
                Err(u) => {
                    assert_eq!(i % 500, 7, "record {i} should have decoded: {}", u.error);
                    assert_eq!(u.key, format!("d-{i}").into_bytes());
                    assert_eq!(u.payload, format!("garbage {i}").into_bytes());
                }
            }
        }
    }
}

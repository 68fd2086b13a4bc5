//! The one ledger reader: every part of otaledger that reads the ledger (the consumer runtime,
//! the saga, rebuild and verify, replay and audit, export, the benchmarks and the test harness)
//! reads through [`LedgerReader`].
//!
//! It reads with `assign()` only (offsets live in PostgreSQL or in a tool's checkpoint, never in
//! Kafka: ADR 0001), starts fetching [`SEEK_BACK`](crate::kafka::SEEK_BACK) records early and
//! drops every record before each partition's position, so that the records tansu repeats at
//! batch edges and the ones fetched early on purpose are handed on once (ADR 0005). It decodes on
//! two threads when a batch is large, keeps what does not decode whole for its dead letter, and
//! knows how far each partition must be read: to an end given at assignment (a rebuild stops at
//! the live position), or to the high watermarks seen when reading began (tools).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use otaledger_domain::device_view::Position;
use otaledger_domain::Event;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::TopicPartitionList;

use crate::config::KafkaConfig;
use crate::dead_letters::{dead_letter_for, Origin, Rejection};
use crate::fence::{Fences, Stamp, Verdict};
use crate::kafka::{client_config, resume_from, wait_for_topic, EventProducer};
use crate::metrics::{Counter, REGISTRY};
use crate::{KafkaContext, Result};

/// Records from this many on are decoded on two threads: decoding is the largest part of
/// reading a backlog, and the task that folds would otherwise do it alone on one core.
const PARALLEL_DECODE_FROM: usize = 1000;

/// How a reader hands records on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decode {
    /// Decoded events; what does not decode is kept whole ([`Body::Undecodable`]).
    Events,
    /// Bytes and headers as stored (dead letters, the raw consume limit).
    Raw,
}

/// What a reader reads and how much it gathers into one batch.
#[derive(Debug, Clone)]
pub struct ReaderConfig {
    /// Names the reader to the broker (`otaledger-<label>`); never used for group offsets.
    pub label: String,
    pub topics: Vec<String>,
    /// A batch ends after this many records ...
    pub batch_max: usize,
    /// ... or this long after its first record.
    pub batch_wait: Duration,
    pub decode: Decode,
}

impl ReaderConfig {
    /// A tool's reader: batches of up to 5,000 records gathered for at most 20 ms.
    #[must_use]
    pub fn tool(label: &str, topics: Vec<String>, decode: Decode) -> Self {
        ReaderConfig {
            label: label.to_owned(),
            topics,
            batch_max: 5_000,
            batch_wait: Duration::from_millis(20),
            decode,
        }
    }
}

/// A record as stored: its key, bytes and headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord {
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

/// What a record holds, as the reader's [`Decode`] asked.
// Events are nearly every record: boxing them would add an allocation per event read.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Body {
    Event {
        event: Event,
        /// The schema version it was written with.
        writer_version: u32,
    },
    /// It did not decode: kept whole for its dead letter.
    Undecodable {
        raw: RawRecord,
        error: String,
    },
    Raw(RawRecord),
}

/// One record handed on, once.
#[derive(Debug, Clone)]
pub struct Record {
    /// Index into the reader's topics.
    pub topic: usize,
    pub position: Position,
    pub body: Body,
}

/// The records of one read, in the order of each partition.
#[derive(Debug, Default)]
pub struct Batch {
    pub records: Vec<Record>,
    /// The read stopped at `batch_max`: more is probably waiting.
    pub full: bool,
    /// Per partition read in this batch whose fences are not empty, its fences after the
    /// batch: what a consumer stores with the batch's offsets (ADR 0039).
    pub fences: BTreeMap<(usize, i32), Fences>,
}

impl Batch {
    /// Per partition of topic `topic`, the offset after the last record of this batch.
    #[must_use]
    pub fn next_offsets(&self, topic: usize) -> BTreeMap<i32, i64> {
        let mut next = BTreeMap::new();
        for r in self.records.iter().filter(|r| r.topic == topic) {
            next.insert(r.position.partition, r.position.offset + 1);
        }
        next
    }
}

/// Where reading a partition starts and (optionally) ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    pub topic: usize,
    pub partition: i32,
    /// The first offset to hand on.
    pub next: i64,
    /// Records at or past this offset are not handed on (exclusive).
    pub end: Option<i64>,
    /// The fences in force at `next` (stored with the offset; empty from the start).
    pub fences: Fences,
}

#[derive(Debug, Clone)]
struct Cursor {
    next: i64,
    end: Option<i64>,
    /// Reading is complete once `next` reaches it: the end, or the high watermark seen when
    /// reading began ([`LedgerReader::assign_to_watermarks`]).
    target: Option<i64>,
    fences: Fences,
}

/// Reads ledger topics with `assign()`, hands each record on once, decoded.
pub struct LedgerReader {
    consumer: StreamConsumer,
    kafka: KafkaConfig,
    cfg: ReaderConfig,
    cursors: Mutex<HashMap<(usize, i32), Cursor>>,
    /// Set while the read in flight has its first record and gathers the rest (so never while
    /// a read waits for its first record).
    receiving: AtomicBool,
    /// Records of a fenced writer's old epoch, dropped (ADR 0039).
    stale: Counter,
    /// Whether fences are kept (always, but for [`LedgerReader::unfenced`]).
    fenced: bool,
}

impl std::fmt::Debug for LedgerReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerReader")
            .field("label", &self.cfg.label)
            .field("topics", &self.cfg.topics)
            .finish_non_exhaustive()
    }
}

/// How every ledger reader consumes: offsets are kept outside Kafka and only `assign()` is used
/// (the group id is a label).
#[must_use]
pub fn consumer_config(kafka: &KafkaConfig, label: &str) -> rdkafka::ClientConfig {
    let mut c = client_config(kafka);
    c.set("group.id", format!("otaledger-{label}"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("queued.min.messages", "200000")
        .set("fetch.wait.max.ms", kafka.fetch_wait_max_ms.to_string())
        // librdkafka postpones a partition's next fetch by a second when its local queue is
        // over the thresholds, and by half a second after a fetch error. Either left a live
        // projector idle, then flooded (60 s at 21,600 events/s: 4-13 pauses of over 0.3 s,
        // lag p99 1,257-1,477 ms; with these, 2 pauses and 645-762 ms).
        .set("fetch.queue.backoff.ms", "10")
        .set("fetch.error.backoff.ms", "50");
    c
}

impl LedgerReader {
    /// A reader of `cfg.topics` with nothing assigned yet.
    pub fn new(kafka: &KafkaConfig, cfg: ReaderConfig) -> Result<Self> {
        let consumer: StreamConsumer = consumer_config(kafka, &cfg.label)
            .create()
            .kafka(format!("creating the {} reader", cfg.label))?;
        Ok(LedgerReader {
            consumer,
            kafka: kafka.clone(),
            cursors: Mutex::new(HashMap::new()),
            receiving: AtomicBool::new(false),
            stale: REGISTRY.counter(
                "otaledger_ledger_stale_records_total",
                "Records of a fenced writer (a saga that lost its partition) appended after the \
                 new owner's fence, and therefore read by nobody (ADR 0039)",
                &[("reader", &cfg.label)],
            ),
            fenced: true,
            cfg,
        })
    }

    /// A reader that hands on every record as stored, fence markers and stale records
    /// included (ADR 0039): for showing what a fenced writer appended, never for folding.
    #[must_use]
    pub fn unfenced(mut self) -> Self {
        self.fenced = false;
        self
    }

    #[must_use]
    pub fn topics(&self) -> &[String] {
        &self.cfg.topics
    }

    /// The partitions of topic `topic`, waiting up to a minute for it to exist.
    pub async fn partitions(&self, topic: usize) -> Result<Vec<i32>> {
        let name = &self.cfg.topics[topic];
        let n = wait_for_topic(&self.kafka, name, Duration::from_secs(60)).await?;
        Ok((0..n).collect())
    }

    /// Reads exactly these partitions from now on, each from its `next` offset; records of
    /// partitions no longer assigned, and anything read for the old assignment, are dropped.
    pub fn assign(&self, starts: impl IntoIterator<Item = Start>) -> Result<()> {
        let mut tpl = TopicPartitionList::new();
        let mut cursors = HashMap::new();
        for s in starts {
            tpl.add_partition_offset(&self.cfg.topics[s.topic], s.partition, resume_from(s.next))
                .kafka("building an assignment")?;
            cursors.insert(
                (s.topic, s.partition),
                Cursor {
                    next: s.next,
                    end: s.end,
                    target: s.end,
                    fences: s.fences,
                },
            );
        }
        self.consumer.assign(&tpl).kafka("assigning partitions")?;
        *self.lock() = cursors;
        Ok(())
    }

    /// Assigns every partition of every topic, each from `next(topic, partition)`, and reads
    /// until the high watermarks of this moment ([`LedgerReader::caught_up`]).
    pub async fn assign_to_watermarks(&self, next: impl Fn(usize, i32) -> i64) -> Result<()> {
        let mut starts = Vec::new();
        for topic in 0..self.cfg.topics.len() {
            for partition in self.partitions(topic).await? {
                starts.push(Start {
                    topic,
                    partition,
                    next: next(topic, partition),
                    end: None,
                    fences: Fences::default(),
                });
            }
        }
        self.assign(starts)?;
        self.aim_at_watermarks().await
    }

    /// Reading the assigned partitions is complete ([`LedgerReader::caught_up`]) once it
    /// reaches their high watermarks of this moment (or their ends, where earlier).
    pub async fn aim_at_watermarks(&self) -> Result<()> {
        let mut assigned: BTreeMap<usize, Vec<i32>> = BTreeMap::new();
        for (topic, partition) in self.lock().keys() {
            assigned.entry(*topic).or_default().push(*partition);
        }
        for (topic, partitions) in assigned {
            let highs = high_watermarks(&self.kafka, &self.cfg.topics[topic]).await?;
            let mut cursors = self.lock();
            for p in partitions {
                if let (Some(c), Some(high)) = (cursors.get_mut(&(topic, p)), highs.get(&p)) {
                    c.target = Some(c.end.map_or(*high, |e| e.min(*high)));
                }
            }
        }
        Ok(())
    }

    /// Reading is not complete before `partition` of `topic` is read past `offset` (a record
    /// the caller appended itself, such as its fence marker: a broker may report a lower high
    /// watermark than what it acknowledged).
    pub fn aim_past(&self, topic: usize, partition: i32, offset: i64) {
        if let Some(c) = self.lock().get_mut(&(topic, partition)) {
            c.target = Some(c.target.map_or(offset + 1, |t| t.max(offset + 1)));
        }
    }

    /// Whether every assigned partition with a target (an end, or the high watermark seen when
    /// reading began) was read up to it.
    #[must_use]
    pub fn caught_up(&self) -> bool {
        self.lock()
            .values()
            .all(|c| c.target.is_none_or(|t| c.next >= t))
    }

    /// Per assigned partition, the next offset to hand on.
    #[must_use]
    pub fn positions(&self) -> BTreeMap<(usize, i32), i64> {
        self.lock().iter().map(|(k, c)| (*k, c.next)).collect()
    }

    /// Whether the read in flight has its first record and gathers the rest.
    #[must_use]
    pub fn is_receiving(&self) -> bool {
        self.receiving.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(usize, i32), Cursor>> {
        // A panic while the lock was held cannot leave a cursor half-written (plain stores).
        self.cursors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits for a first record until `until`, gathers more for up to `batch_wait` or
    /// `batch_max` records, drops what was handed on before or lies past an end, and decodes.
    pub async fn read(&self, until: tokio::time::Instant) -> Batch {
        let mut raw = RawBatch::new(self.cfg.decode == Decode::Raw);
        self.receiving.store(false, Ordering::Relaxed);
        let Ok(first) = tokio::time::timeout_at(until, self.consumer.recv()).await else {
            return Batch::default();
        };
        self.receiving.store(true, Ordering::Relaxed);
        self.push(&mut raw, first);
        let deadline = tokio::time::Instant::now() + self.cfg.batch_wait;
        while raw.received < self.cfg.batch_max {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Ok(m) => self.push(&mut raw, m),
                Err(_) => break,
            }
        }
        let full = raw.received >= self.cfg.batch_max;
        let fences = {
            let cursors = self.lock();
            raw.touched
                .iter()
                .filter_map(|k| {
                    let c = cursors.get(k)?;
                    (!c.fences.is_empty()).then(|| (*k, c.fences.clone()))
                })
                .collect()
        };
        let records = raw.finish().await;
        self.receiving.store(false, Ordering::Relaxed);
        Batch {
            records,
            full,
            fences,
        }
    }

    /// Reads until [`LedgerReader::caught_up`] and nothing new arrived for `idle`, handing each
    /// batch to `visit`.
    pub async fn read_to_end<E>(
        &self,
        idle: Duration,
        mut visit: impl FnMut(Batch) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        let mut idle_since = tokio::time::Instant::now();
        loop {
            let batch = self
                .read(tokio::time::Instant::now() + Duration::from_millis(100))
                .await;
            if batch.records.is_empty() {
                if self.caught_up() && idle_since.elapsed() >= idle {
                    return Ok(());
                }
                continue;
            }
            idle_since = tokio::time::Instant::now();
            visit(batch)?;
        }
    }

    /// Keeps a record read if it is next in its partition and before the partition's end.
    fn push(
        &self,
        raw: &mut RawBatch,
        m: std::result::Result<BorrowedMessage<'_>, rdkafka::error::KafkaError>,
    ) {
        let m = match m {
            Ok(m) => m,
            // Transient fetch errors (broker restart, leader change) are retried by librdkafka.
            Err(e) => {
                tracing::warn!(reader = %self.cfg.label, error = %e, "kafka fetch error");
                return;
            }
        };
        raw.received += 1;
        let Some(topic) = self.cfg.topics.iter().position(|t| t == m.topic()) else {
            return;
        };
        let (partition, offset) = (m.partition(), m.offset());
        {
            let mut cursors = self.lock();
            let Some(c) = cursors.get_mut(&(topic, partition)) else {
                return; // no longer assigned
            };
            if offset < c.next || c.end.is_some_and(|e| offset >= e) {
                return; // a repeat, fetched early on purpose, or past the end
            }
            c.next = offset + 1;
            raw.touched.insert((topic, partition));
            let stamp = match (self.fenced, m.headers()) {
                (true, Some(hs)) => {
                    Stamp::from_headers(hs.iter().map(|h| (h.key, h.value.unwrap_or_default())))
                }
                _ => Stamp::None,
            };
            match c.fences.judge(&stamp) {
                Verdict::Read => {}
                Verdict::Marker => return,
                Verdict::Stale => {
                    self.stale.inc();
                    if let Stamp::Record(w) = &stamp {
                        tracing::warn!(reader = %self.cfg.label, topic = %m.topic(), partition, offset,
                            writer = %w.scope, epoch = w.epoch,
                            "a record of a fenced writer's old epoch: not read (ADR 0039)");
                    }
                    return;
                }
            }
        }
        raw.push(topic, &m);
    }
}

/// The high watermarks of every partition of `topic` (a lower bound of its end on tansu, which
/// under-reports them: ADR 0005), without reading it.
pub async fn high_watermarks(kafka: &KafkaConfig, topic: &str) -> Result<BTreeMap<i32, i64>> {
    let partitions = wait_for_topic(kafka, topic, Duration::from_secs(60)).await?;
    let consumer: rdkafka::consumer::BaseConsumer = client_config(kafka)
        .create()
        .kafka("creating a metadata client")?;
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        (0..partitions)
            .map(|p| {
                consumer
                    .fetch_watermarks(&topic, p, Duration::from_secs(10))
                    .map(|(_, high)| (p, high))
                    .kafka("reading high watermarks")
            })
            .collect()
    })
    .await
    .map_err(|e| crate::Error::Other(format!("reading high watermarks: {e}")))?
}

/// Dead-letters the undecodable records of `records` (read from `topic` by `consumer`) and waits
/// until Kafka has every dead letter: only then may the offsets that skip them be stored.
/// Returns how many.
pub async fn dead_letter_undecodable(
    producer: &EventProducer,
    topic: &str,
    consumer: &str,
    records: &[Record],
) -> Result<usize> {
    let mut pending = Vec::new();
    for r in records {
        if let Body::Undecodable { raw, error } = &r.body {
            let origin = Origin {
                source: "kafka",
                channel: topic,
                partition: Some(r.position.partition),
                offset: Some(r.position.offset),
            };
            let rejection = Rejection::new("undecodable", error.clone());
            pending.push(
                dead_letter_for(
                    producer,
                    consumer,
                    &origin,
                    &raw.key,
                    &raw.payload,
                    &rejection,
                )
                .await?,
            );
        }
    }
    let n = pending.len();
    for p in pending {
        p.acked().await?;
    }
    Ok(n)
}

/// Records as read, their bytes copied into one buffer (no allocation per record), so that
/// they can be decoded on another thread.
struct RawBatch {
    raw: bool,
    /// Records received, handed on or not (a full batch is a reason to read on).
    received: usize,
    bytes: Vec<u8>,
    /// Topic, partition, offset, and where the record's key and payload end in `bytes`.
    items: Vec<(usize, i32, i64, usize, usize)>,
    /// Headers per item, kept only for raw reads.
    headers: Vec<Vec<(String, String)>>,
    /// Partitions with a record consumed (handed on or not).
    touched: std::collections::BTreeSet<(usize, i32)>,
}

impl RawBatch {
    fn new(raw: bool) -> Self {
        RawBatch {
            raw,
            received: 0,
            bytes: Vec::new(),
            items: Vec::new(),
            headers: Vec::new(),
            touched: std::collections::BTreeSet::new(),
        }
    }

    fn push(&mut self, topic: usize, m: &BorrowedMessage<'_>) {
        if self.raw {
            let headers = m.headers().map(|hs| {
                hs.iter()
                    .map(|h| {
                        let value = String::from_utf8_lossy(h.value.unwrap_or_default());
                        (h.key.to_owned(), value.into_owned())
                    })
                    .collect()
            });
            self.headers.push(headers.unwrap_or_default());
        }
        self.push_record(
            topic,
            m.partition(),
            m.offset(),
            m.key().unwrap_or_default(),
            m.payload().unwrap_or_default(),
        );
    }

    fn push_record(
        &mut self,
        topic: usize,
        partition: i32,
        offset: i64,
        key: &[u8],
        payload: &[u8],
    ) {
        self.bytes.extend_from_slice(key);
        let key_end = self.bytes.len();
        self.bytes.extend_from_slice(payload);
        self.items
            .push((topic, partition, offset, key_end, self.bytes.len()));
    }

    /// Every record, in order; decoded (unless raw): the second half on a blocking thread
    /// while this task decodes the first.
    async fn finish(mut self) -> Vec<Record> {
        let n = self.items.len();
        if self.raw {
            let headers = std::mem::take(&mut self.headers);
            return self
                .items
                .iter()
                .enumerate()
                .zip(headers)
                .map(|((i, item), headers)| {
                    let (key, payload) = self.slices(i);
                    Record {
                        topic: item.0,
                        position: Position {
                            partition: item.1,
                            offset: item.2,
                        },
                        body: Body::Raw(RawRecord {
                            key: key.to_vec(),
                            payload: payload.to_vec(),
                            headers,
                        }),
                    }
                })
                .collect();
        }
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

    fn slices(&self, i: usize) -> (&[u8], &[u8]) {
        let (_, _, _, key_end, end) = self.items[i];
        let start = if i == 0 { 0 } else { self.items[i - 1].4 };
        (&self.bytes[start..key_end], &self.bytes[key_end..end])
    }

    fn decode_range(&self, range: std::ops::Range<usize>) -> Vec<Record> {
        let mut records = Vec::with_capacity(range.len());
        for i in range {
            let (topic, partition, offset, _, _) = self.items[i];
            let (key, payload) = self.slices(i);
            records.push(Record {
                topic,
                position: Position { partition, offset },
                body: match otaledger_schemas::decode(payload) {
                    Ok(d) => Body::Event {
                        event: d.event,
                        writer_version: d.writer_version,
                    },
                    // Only a record that did not decode is kept whole, for its dead letter.
                    Err(e) => Body::Undecodable {
                        raw: RawRecord {
                            key: key.to_vec(),
                            payload: payload.to_vec(),
                            headers: Vec::new(),
                        },
                        error: e.to_string(),
                    },
                },
            });
        }
        records
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use otaledger_domain::events::{Health, Heartbeat};
    use otaledger_domain::Payload;

    fn heartbeat(i: usize) -> Event {
        Event::at(
            Payload::Heartbeat(Heartbeat {
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
            1,
            2,
            "",
        )
    }

    #[tokio::test]
    async fn a_batch_decoded_on_two_threads_keeps_its_order_and_its_undecodable_bytes() {
        let n = PARALLEL_DECODE_FROM * 3 + 1;
        let mut raw = RawBatch::new(false);
        for i in 0..n {
            let key = format!("d-{i}").into_bytes();
            let payload = if i % 500 == 7 {
                format!("garbage {i}").into_bytes()
            } else {
                otaledger_schemas::encode(&heartbeat(i)).unwrap_or_default()
            };
            raw.push_record(
                i % 2,
                i32::try_from(i % 3).unwrap_or(0),
                i as i64,
                &key,
                &payload,
            );
        }
        let records = raw.finish().await;
        assert_eq!(records.len(), n);
        for (i, r) in records.iter().enumerate() {
            assert_eq!(
                (r.topic, r.position.partition, r.position.offset),
                (i % 2, i32::try_from(i % 3).unwrap_or(0), i as i64)
            );
            match &r.body {
                Body::Event { event, .. } => {
                    assert_eq!(event.key(), format!("d-{i}"), "record {i}");
                }
                Body::Undecodable { raw, error } => {
                    assert_eq!(i % 500, 7, "record {i} should have decoded: {error}");
                    assert_eq!(raw.key, format!("d-{i}").into_bytes());
                    assert_eq!(raw.payload, format!("garbage {i}").into_bytes());
                }
                Body::Raw(_) => panic!("record {i} was not decoded"),
            }
        }
    }

    #[test]
    fn next_offsets_are_per_partition_of_one_topic() {
        let record = |topic, partition, offset| Record {
            topic,
            position: Position { partition, offset },
            body: Body::Raw(RawRecord {
                key: Vec::new(),
                payload: Vec::new(),
                headers: Vec::new(),
            }),
        };
        let batch = Batch {
            records: vec![
                record(0, 1, 5),
                record(1, 1, 9),
                record(0, 1, 6),
                record(0, 2, 0),
            ],
            full: false,
            fences: BTreeMap::new(),
        };
        assert_eq!(batch.next_offsets(0), BTreeMap::from([(1, 7), (2, 1)]));
        assert_eq!(batch.next_offsets(1), BTreeMap::from([(1, 10)]));
    }
}

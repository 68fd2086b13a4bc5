//! The one way otaledger appends to Kafka: idempotent, `acks=all`, keyed by aggregate id, with
//! headers naming the event type, event id, schema fingerprint and trace id.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use otaledger_domain::Event;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use crate::config::{KafkaConfig, Topics};
use crate::fence::{self, Writer};
use crate::{Error, KafkaContext, Result};

/// Adds a fenced writer's scope and epoch to a record's headers (ADR 0039).
fn stamp(headers: OwnedHeaders, w: &Writer) -> OwnedHeaders {
    let epoch = w.epoch.to_string();
    headers
        .insert(Header {
            key: fence::WRITER,
            value: Some(w.scope.as_str()),
        })
        .insert(Header {
            key: fence::WRITER_EPOCH,
            value: Some(epoch.as_str()),
        })
}

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

/// A record handed to librdkafka whose broker acknowledgement is still to come.
pub struct Pending(DeliveryFuture, Arc<Shared>, u64);

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pending")
    }
}

impl Pending {
    /// Waits until the broker acknowledged the record (acks=all).
    pub async fn acked(self) -> Result<Delivered> {
        match self.0.await {
            Ok(Ok(d)) => {
                self.1.delivered(self.2, None);
                Ok(Delivered {
                    partition: d.partition,
                    offset: d.offset,
                })
            }
            Ok(Err((e, _))) => {
                // A producer in a fatal state, or one the broker keeps refusing, is replaced:
                // the next record goes through a new one (the caller retries or answers 503).
                self.1.delivered(self.2, Some(&e));
                Err(e).kafka("delivering record")
            }
            Err(_) => Err(Error::Other("producer dropped before delivery".into())),
        }
    }
}

/// The largest record otaledger produces (librdkafka's `message.max.bytes`, set explicitly so
/// that every budget below it is visible: dead letters keep at most
/// [`crate::dead_letters::MAX_KEPT_BYTES`] of a message, wave chunks at most
/// `otaledger_domain::rollout::WAVE_CHUNK_BYTES` of ids). Apache Kafka's default for a topic.
pub const MAX_RECORD_BYTES: usize = 1_000_000;

// Every budget below the record limit, with room for headers and the record's other fields.
const _: () = assert!(crate::dead_letters::MAX_KEPT_BYTES * 2 < MAX_RECORD_BYTES);
const _: () = assert!(otaledger_domain::rollout::WAVE_CHUNK_BYTES * 3 / 2 < MAX_RECORD_BYTES);

/// Base settings every client gets.
#[must_use]
pub fn client_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers)
        .set("message.max.bytes", MAX_RECORD_BYTES.to_string())
        .set("socket.keepalive.enable", "true")
        .set("log_level", "4")
        .set("security.protocol", &cfg.security_protocol);
    let optional = [
        ("ssl.ca.location", &cfg.ssl_ca_location),
        ("sasl.mechanism", &cfg.sasl_mechanism),
        ("sasl.username", &cfg.sasl_username),
        ("sasl.password", &cfg.sasl_password),
    ];
    for (key, value) in optional {
        if let Some(v) = value {
            c.set(key, v);
        }
    }
    c
}

/// The event producer shared by everything that appends to the ledger: one librdkafka
/// producer, replaced by a new one when it reaches librdkafka's fatal state (an idempotent
/// producer does after some broker failures, and refuses every record from then on).
#[derive(Clone)]
pub struct EventProducer {
    shared: Arc<Shared>,
    topics: Topics,
}

/// Broker-side refusals in a row after which the producer is replaced. librdkafka retries a
/// record the broker refused under the same producer id and sequence numbers, and declares the
/// producer fatal only for some errors: a broker that lost or mistrusts this producer's state
/// can refuse it without end while a new producer (a new id) would be taken. Replacing it is
/// what an operator's restart would do, without the restart. A broker that cannot be reached
/// is only waited for (librdkafka's own errors are not counted).
const REFUSALS_BEFORE_REPLACING: u32 = 3;

/// A producer whose context says when librdkafka lost every broker connection.
type Watched = FutureProducer<LossWatch>;

/// Tells the producer's owner, through `lost`, that every broker connection of this producer
/// is down. A producer that had records stored is then replaced before the broker is back:
/// the old one would resume with its producer id and sequence numbers, and tansu 0.6 restarted
/// on SQLite panics on an idempotent record of a producer it does not know (`lite.rs:503`,
/// `idempotent_message_check`, seen after an unclean restart), which fails every later request
/// from any client. A new producer asks for a new id once the broker is back.
struct LossWatch {
    lost: std::sync::mpsc::Sender<()>,
}

impl rdkafka::ClientContext for LossWatch {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            let _ = self.lost.send(());
        }
        tracing::warn!(error = %error, reason, "librdkafka (producer)");
    }
}

/// The producer in use and how to make another.
struct Shared {
    settings: ClientConfig,
    /// The producer in use and its generation (one more for each replacement).
    current: RwLock<(u64, Watched)>,
    /// Broker-side refusals in a row of the current generation's records.
    refusals: AtomicU32,
    /// Whether the current generation had a record stored (it holds state at the broker).
    stored: std::sync::atomic::AtomicBool,
    /// The current generation, readable without the lock on every delivery.
    generation: AtomicU64,
    /// Where each new producer's context reports a loss of every broker.
    lost: std::sync::mpsc::Sender<()>,
}

impl Shared {
    fn create(&self) -> std::result::Result<Watched, KafkaError> {
        self.settings.create_with_context(LossWatch {
            lost: self.lost.clone(),
        })
    }

    fn current(&self) -> (u64, Watched) {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces generation `generation` with a new producer, unless it was replaced already.
    fn replace(&self, generation: u64, why: &str) {
        let mut current = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if current.0 != generation {
            return;
        }
        match self.create() {
            Ok(fresh) => {
                *current = (generation + 1, fresh);
                self.generation.store(generation + 1, Ordering::Relaxed);
                self.refusals.store(0, Ordering::Relaxed);
                self.stored.store(false, Ordering::Relaxed);
                crate::metrics::REGISTRY
                    .counter(
                        "otaledger_kafka_producer_recreated_total",
                        "Kafka producers replaced: librdkafka's fatal state, or records the broker kept refusing",
                        &[],
                    )
                    .inc();
                tracing::error!(error = %why, "the Kafka producer is replaced by a new one");
            }
            Err(e) => {
                tracing::error!(error = %why, create = %e, "the Kafka producer failed and no new one could be made");
            }
        }
    }

    /// When the producer in use is in librdkafka's fatal state, replaces it with a new one
    /// and answers the fatal error; `None` when it is healthy. Records in flight in the old
    /// producer fail (their senders were not told they were stored, and retry).
    fn recover(&self) -> Option<String> {
        let (generation, producer) = self.current();
        let (code, reason) = producer.client().fatal_error()?;
        let why = format!("fatal: {code:?}: {reason}");
        self.replace(generation, &why);
        Some(why)
    }

    /// A record of `generation` was delivered (`None`) or failed with `error`.
    fn delivered(&self, generation: u64, error: Option<&KafkaError>) {
        match error {
            // Every delivered record comes here: atomics only, no lock.
            None => {
                if self.refusals.load(Ordering::Relaxed) != 0 {
                    self.refusals.store(0, Ordering::Relaxed);
                }
                if !self.stored.load(Ordering::Relaxed)
                    && self.generation.load(Ordering::Relaxed) == generation
                {
                    self.stored.store(true, Ordering::Relaxed);
                }
            }
            Some(e) => {
                if self.recover().is_some() {
                    return;
                }
                if self.generation.load(Ordering::Relaxed) != generation {
                    return;
                }
                // A record that timed out makes librdkafka bump the producer's epoch with the
                // broker when it is back (KIP-360). tansu 0.6 does not survive that request (its
                // SQLite storage panics and fails every later request, measured); a new
                // producer starts with a new id instead and costs one request.
                if matches!(
                    e,
                    KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut)
                ) {
                    self.replace(generation, &format!("a record timed out ({e})"));
                    return;
                }
                // librdkafka's own errors are below -100 (transport and the like); a broker's
                // answers are -1 (unknown) and up.
                let by_broker =
                    matches!(e, KafkaError::MessageProduction(code) if (*code as i32) >= -1);
                if !by_broker {
                    return;
                }
                let n = self.refusals.fetch_add(1, Ordering::Relaxed) + 1;
                if n >= REFUSALS_BEFORE_REPLACING {
                    self.replace(
                        generation,
                        &format!("the broker refused {n} records in a row, the last with {e}"),
                    );
                }
            }
        }
    }
}

impl std::fmt::Debug for EventProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventProducer")
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

impl EventProducer {
    pub fn new(cfg: &KafkaConfig) -> Result<Self> {
        let mut settings = client_config(cfg);
        settings
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // Batches of 10 ms by default, not 2: tansu lists every stored batch of a
            // partition on each fetch, so small batches made consumers fall behind as topics
            // grew (ADR 0016); on its SQLite storage 100 ms (ADR 0043).
            .set("linger.ms", cfg.linger_ms.to_string())
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "500000")
            .set("queue.buffering.max.kbytes", "1048576")
            .set("message.timeout.ms", cfg.message_timeout_ms.to_string());
        let (lost, losses) = std::sync::mpsc::channel();
        let producer: Watched = settings
            .create_with_context(LossWatch { lost: lost.clone() })
            .kafka("creating producer")?;
        let shared = Arc::new(Shared {
            settings,
            current: RwLock::new((0, producer)),
            refusals: AtomicU32::new(0),
            stored: std::sync::atomic::AtomicBool::new(false),
            generation: AtomicU64::new(0),
            lost,
        });
        // Replaces the producer when it lost every broker, from a thread of its own: a
        // producer cannot be dropped inside its own callback. It ends with the last
        // EventProducer (the channel's other senders live in the producers it owns).
        let watched = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("producer-watch".into())
            .spawn(move || {
                while losses.recv().is_ok() {
                    let Some(shared) = watched.upgrade() else {
                        return;
                    };
                    let generation = shared.current().0;
                    if shared.stored.load(Ordering::Relaxed) {
                        shared.replace(
                            generation,
                            "every broker connection was lost while this producer held state there",
                        );
                    }
                }
            })
            .map_err(|e| Error::Other(format!("starting the producer's watch: {e}")))?;
        Ok(EventProducer {
            shared,
            topics: cfg.topics(),
        })
    }

    /// `Err` with librdkafka's fatal error when the producer in use had reached that state (it
    /// is replaced by then, so the next call is `Ok` unless the new one fails too): `/readyz`
    /// asks this.
    pub fn health(&self) -> std::result::Result<(), String> {
        match self.shared.recover() {
            None => Ok(()),
            Some(why) => Err(format!(
                "the Kafka producer had failed fatally ({why}); a new one replaced it"
            )),
        }
    }

    #[must_use]
    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// Encodes and enqueues one event; await [`Pending::acked`] before telling the sender.
    /// Records of one key are delivered in enqueue order (idempotent producer).
    pub async fn enqueue(&self, event: &Event) -> Result<Pending> {
        self.enqueue_as(event, None).await
    }

    /// As [`EventProducer::enqueue`], stamped with a fenced writer's scope and epoch
    /// (ADR 0039) when one is given.
    pub async fn enqueue_as(&self, event: &Event, writer: Option<&Writer>) -> Result<Pending> {
        let bytes = otaledger_schemas::encode(event)?;
        let fingerprint = format!("{:016x}", otaledger_schemas::fingerprint_of(&bytes)?);
        let event_id = event.meta.event_id.hyphenated().to_string();
        let headers = OwnedHeaders::new_with_capacity(5)
            .insert(Header {
                key: "event-type",
                value: Some(event.event_type().name()),
            })
            .insert(Header {
                key: "event-id",
                value: Some(event_id.as_str()),
            })
            .insert(Header {
                key: "schema-fingerprint",
                value: Some(fingerprint.as_str()),
            })
            .insert(Header {
                key: "trace-id",
                value: Some(event.meta.trace_id.as_str()),
            })
            .insert(Header {
                key: "content-type",
                value: Some("application/vnd.apache.avro+binary"),
            });
        let headers = match writer {
            Some(w) => stamp(headers, w),
            None => headers,
        };
        let topic = self.topics.for_stream(event.event_type().stream());
        self.send_raw(topic, event.key().as_bytes(), &bytes, headers)
            .await
    }

    /// Appends `writer`'s fence marker to one partition (ADR 0039): from it on, readers of
    /// that partition drop the records of the writer's scope stamped with an older epoch.
    pub async fn fence(&self, topic: &str, partition: i32, writer: &Writer) -> Result<Pending> {
        let headers = stamp(OwnedHeaders::new_with_capacity(3), writer).insert(Header {
            key: fence::FENCE,
            value: Some(""),
        });
        let record = FutureRecord::to(topic)
            .partition(partition)
            .key(writer.scope.as_bytes())
            .payload(&[][..])
            .headers(headers);
        self.send_record(record).await
    }

    /// Enqueues a raw record, waiting while librdkafka's queue is full.
    pub async fn send_raw(
        &self,
        topic: &str,
        key: &[u8],
        payload: &[u8],
        headers: OwnedHeaders,
    ) -> Result<Pending> {
        let record = FutureRecord::to(topic)
            .key(key)
            .payload(payload)
            .headers(headers);
        self.send_record(record).await
    }

    async fn send_record(&self, mut record: FutureRecord<'_, [u8], [u8]>) -> Result<Pending> {
        let (generation, producer) = self.shared.current();
        loop {
            match producer.send_result(record) {
                Ok(future) => return Ok(Pending(future, Arc::clone(&self.shared), generation)),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err((e, r)) => {
                    self.shared.recover();
                    return Err(e).kafka(format!("enqueueing to {}", r.topic));
                }
            }
        }
    }

    /// Appends one event and waits for the broker's acknowledgement.
    pub async fn append(&self, event: &Event) -> Result<Delivered> {
        self.enqueue(event).await?.acked().await
    }

    /// Appends events in order, pipelined, and waits until all are acknowledged.
    pub async fn append_all(&self, events: &[Event]) -> Result<Vec<Delivered>> {
        let mut pending = Vec::with_capacity(events.len());
        for e in events {
            pending.push(self.enqueue(e).await?);
        }
        let mut out = Vec::with_capacity(pending.len());
        for p in pending {
            out.push(p.acked().await?);
        }
        Ok(out)
    }

    /// Waits for everything in flight.
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        self.shared
            .current()
            .1
            .flush(Timeout::After(timeout))
            .kafka("flushing producer")
    }
}

/// How far before a stored position consumers start fetching. Kafka serves a fetch from any
/// offset; tansu (the broker here) answers a fetch from an offset inside a record batch with the
/// *next* batch, silently skipping the rest of the one that holds the offset (measured: a
/// replay from offset 12,345 started at 14,454). Starting this many records earlier, at least
/// the largest batch our producers write (`batch.num.messages`), and dropping what lies before
/// the position is standard Kafka behaviour that is correct on both brokers (ADR 0005).
pub const SEEK_BACK: i64 = 10_000;

/// Where to start fetching to resume at `next` (records before `next` must be dropped).
#[must_use]
pub fn resume_from(next: i64) -> rdkafka::Offset {
    if next > 0 {
        rdkafka::Offset::Offset((next - SEEK_BACK).max(0))
    } else {
        rdkafka::Offset::Beginning
    }
}

/// A topic's `retention.ms`: the ledger's topics keep everything; the dead letters keep
/// `dead_letter_retention_days` (0: everything).
#[must_use]
pub fn retention_ms(cfg: &KafkaConfig, topic: &str) -> String {
    if topic == cfg.topics().dead_letters && cfg.dead_letter_retention_days > 0 {
        (i64::from(cfg.dead_letter_retention_days) * 86_400_000).to_string()
    } else {
        "-1".to_owned()
    }
}

/// Creates the ledger topics that do not exist yet, with their retention, and sets the
/// dead-letter topic's retention again (it is a setting that may change; a broker that cannot
/// alter topic settings is warned about, not failed on).
pub async fn ensure_topics(cfg: &KafkaConfig) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        client_config(cfg).create().kafka("creating admin client")?;
    let topics = cfg.topics();
    let retention: Vec<String> = topics.all().iter().map(|t| retention_ms(cfg, t)).collect();
    let new: Vec<NewTopic<'_>> = topics
        .all()
        .iter()
        .zip(&retention)
        .map(|(t, ms)| {
            NewTopic::new(
                t,
                cfg.partitions,
                TopicReplication::Fixed(cfg.replication_factor),
            )
            .set("retention.ms", ms)
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(&new, &opts)
        .await
        .kafka("creating topics")?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(Error::Kafka {
                    context: format!("creating topic {topic}"),
                    source: KafkaError::AdminOp(code),
                })
            }
        }
    }
    for t in topics.all() {
        wait_for_topic(cfg, t, Duration::from_secs(30)).await?;
    }
    let dead_letters = &topics.dead_letters;
    let ms = retention_ms(cfg, dead_letters);
    let topic = rdkafka::admin::ResourceSpecifier::Topic(dead_letters);
    // Altered only when it differs, so a broker that cannot alter topic settings (tansu) is
    // warned about only when there is something to change.
    let now = admin
        .describe_configs([&topic], &opts)
        .await
        .ok()
        .and_then(|r| r.into_iter().next()?.ok())
        .and_then(|r| r.get("retention.ms")?.value.clone());
    if now.as_deref() != Some(ms.as_str()) {
        let alter = rdkafka::admin::AlterConfig::new(topic).set("retention.ms", &ms);
        match admin.alter_configs(&[alter], &opts).await {
            Ok(results) if results.iter().all(|r| r.is_ok()) => {}
            other => tracing::warn!(
                topic = %dead_letters,
                retention_ms = %ms,
                was = ?now,
                answer = ?other.map(|r| r.into_iter().map(|x| x.err()).collect::<Vec<_>>()),
                "the broker did not take the dead letters' retention; set it there"
            ),
        }
    }
    Ok(())
}

/// The partition count of a topic, waiting until its metadata is visible.
pub async fn wait_for_topic(cfg: &KafkaConfig, topic: &str, timeout: Duration) -> Result<i32> {
    let consumer: std::sync::Arc<BaseConsumer> = std::sync::Arc::new(
        client_config(cfg)
            .create()
            .kafka("creating metadata client")?,
    );
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let topic_owned = topic.to_owned();
        let consumer = consumer.clone();
        let found = tokio::task::spawn_blocking(move || {
            consumer
                .fetch_metadata(Some(&topic_owned), Duration::from_secs(5))
                .ok()
                .and_then(|md| {
                    md.topics()
                        .iter()
                        .find(|t| t.name() == topic_owned && t.error().is_none())
                        .map(|t| t.partitions().len())
                })
                .filter(|n| *n > 0)
        })
        .await
        .ok()
        .flatten();
        if let Some(n) = found {
            return i32::try_from(n).map_err(|_| Error::Other("too many partitions".into()));
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Error::Other(format!(
                "topic {topic} did not appear within {timeout:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::producer::BaseProducer;

    use super::*;

    /// The security settings reach librdkafka, which this build gives OpenSSL (ADR 0028): SASL
    /// PLAIN, TLS with the system's roots, and TLS with a CA file, which must exist.
    #[test]
    fn security_settings_reach_librdkafka() {
        let mut cfg = KafkaConfig {
            security_protocol: "sasl_ssl".into(),
            sasl_mechanism: Some("SCRAM-SHA-512".into()),
            sasl_username: Some("otaledger".into()),
            sasl_password: Some("s3cret".into()),
            ..KafkaConfig::default()
        };
        let c = client_config(&cfg);
        assert_eq!(c.get("sasl.password"), Some("s3cret"));
        assert!(
            c.create::<BaseProducer>().is_ok(),
            "SCRAM over TLS is built in"
        );
        cfg.security_protocol = "ssl".into();
        assert!(client_config(&cfg).create::<BaseProducer>().is_ok());
        cfg.ssl_ca_location = Some("/nonexistent/ca.pem".into());
        let refused = client_config(&cfg).create::<BaseProducer>();
        let err = refused.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("ssl.ca.location"), "{err}");
    }
}

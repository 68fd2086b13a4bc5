//! The one way otaledger appends to Kafka: idempotent, `acks=all`, keyed by aggregate id, with
//! headers naming the event type, event id, schema fingerprint and trace id.

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
use crate::{Error, KafkaContext, Result};

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

/// A record handed to librdkafka whose broker acknowledgement is still to come.
pub struct Pending(DeliveryFuture);

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pending")
    }
}

impl Pending {
    /// Waits until the broker acknowledged the record (acks=all).
    pub async fn acked(self) -> Result<Delivered> {
        match self.0.await {
            Ok(Ok(d)) => Ok(Delivered {
                partition: d.partition,
                offset: d.offset,
            }),
            Ok(Err((e, _))) => Err(e).kafka("delivering record"),
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

/// The event producer shared by everything that appends to the ledger.
#[derive(Clone)]
pub struct EventProducer {
    producer: FutureProducer,
    topics: Topics,
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
        let producer: FutureProducer = client_config(cfg)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // Batches of 10 ms, not 2: tansu lists every stored batch of a partition on each
            // fetch, so small batches made consumers fall behind as topics grew (ADR 0016).
            .set("linger.ms", "10")
            .set("batch.num.messages", "10000")
            .set("queue.buffering.max.messages", "500000")
            .set("queue.buffering.max.kbytes", "1048576")
            .set("message.timeout.ms", "60000")
            .create()
            .kafka("creating producer")?;
        Ok(EventProducer {
            producer,
            topics: cfg.topics(),
        })
    }

    #[must_use]
    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// Encodes and enqueues one event; await [`Pending::acked`] before telling the sender.
    /// Records of one key are delivered in enqueue order (idempotent producer).
    pub async fn enqueue(&self, event: &Event) -> Result<Pending> {
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
        let topic = self.topics.for_stream(event.event_type().stream());
        self.send_raw(topic, event.key().as_bytes(), &bytes, headers)
            .await
    }

    /// Enqueues a raw record, waiting while librdkafka's queue is full.
    pub async fn send_raw(
        &self,
        topic: &str,
        key: &[u8],
        payload: &[u8],
        headers: OwnedHeaders,
    ) -> Result<Pending> {
        let mut record = FutureRecord::to(topic)
            .key(key)
            .payload(payload)
            .headers(headers);
        loop {
            match self.producer.send_result(record) {
                Ok(future) => return Ok(Pending(future)),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err((e, _)) => return Err(e).kafka(format!("enqueueing to {topic}")),
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
        self.producer
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
    let alter =
        rdkafka::admin::AlterConfig::new(rdkafka::admin::ResourceSpecifier::Topic(dead_letters))
            .set("retention.ms", &ms);
    match admin.alter_configs(&[alter], &opts).await {
        Ok(results) if results.iter().all(|r| r.is_ok()) => {}
        other => tracing::warn!(
            topic = %dead_letters,
            retention_ms = %ms,
            answer = ?other.map(|r| r.into_iter().map(|x| x.err()).collect::<Vec<_>>()),
            "the broker did not take the dead letters' retention; set it there"
        ),
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

//! The batch loop: read owned partitions, decode, dead-letter what cannot be decoded, apply a
//! batch to PostgreSQL and store the next offsets in the same transaction.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use otaledger_domain::device_view::Position;
use otaledger_domain::Event;
use otaledger_producers::config::KafkaConfig;
use otaledger_producers::dead_letters::{dead_letter, Origin, Rejection};
use otaledger_producers::kafka::{client_config, wait_for_topic, EventProducer};
use otaledger_producers::metrics::REGISTRY;
use otaledger_producers::shutdown::ShutdownSignal;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::TopicPartitionList;
use sqlx::{PgConnection, PgPool};

use crate::ownership::Ownership;
use crate::{db, DbContext, Error, Result};

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
    /// projection remembers about rows of other partitions may be stale.
    fn ownership_changed(&mut self) {}
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
    pub rebalance_every: Duration,
    pub kafka: KafkaConfig,
    /// Rebuilds stop at these offsets (per partition, exclusive): records at or past them are
    /// not applied, so a rebuilt projection can be compared with a live one at its position.
    pub stop_at: Option<BTreeMap<i32, i64>>,
}

/// Runs a [`Projection`] over the partitions this instance owns.
#[derive(Debug)]
pub struct Runner<P> {
    cfg: RunnerConfig,
    projection: P,
    producer: EventProducer,
    pool: PgPool,
}

struct Raw {
    partition: i32,
    offset: i64,
    key: Vec<u8>,
    payload: Vec<u8>,
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

    /// Consumes until shutdown. Stopping between batches loses nothing: offsets and rows were
    /// committed together.
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
        let applied = REGISTRY.counter(
            "otaledger_consumer_events_total",
            "Events applied by a ledger consumer",
            &[("consumer", &cfg.consumer)],
        );
        let batch_seconds = REGISTRY.histogram(
            "otaledger_consumer_batch_seconds",
            "Time to apply one batch and commit it with its offsets",
            &[("consumer", &cfg.consumer)],
        );
        let lag_seconds = REGISTRY.histogram(
            "otaledger_consumer_commit_lag_seconds",
            "From an event's recorded-at time to the commit of the batch that applied it",
            &[("consumer", &cfg.consumer)],
        );
        let owned_gauge = REGISTRY.gauge(
            "otaledger_consumer_owned_partitions",
            "Partitions this instance owns",
            &[("consumer", &cfg.consumer)],
        );
        tracing::info!(consumer = %cfg.consumer, topic = %cfg.topic, member = %cfg.member, "consumer starting");
        let mut next_rebalance = tokio::time::Instant::now();
        loop {
            if shutdown.is_triggered() {
                break;
            }
            if tokio::time::Instant::now() >= next_rebalance {
                if ownership.rebalance().await? {
                    self.projection.ownership_changed();
                    assign(&consumer, &cfg.topic, &ownership)?;
                }
                owned_gauge.set(i64::try_from(ownership.owned().len()).unwrap_or(0));
                next_rebalance = tokio::time::Instant::now() + cfg.rebalance_every;
            }
            let batch = tokio::select! {
                () = shutdown.wait() => break,
                b = collect(&consumer, &cfg, next_rebalance) => b?,
            };
            let started = Instant::now();
            let mut next: BTreeMap<i32, i64> = BTreeMap::new();
            let mut events = Vec::with_capacity(batch.len());
            let mut dead = Vec::new();
            for raw in batch {
                let Some(owned) = ownership.owned().get(&raw.partition) else {
                    continue;
                };
                if cfg
                    .stop_at
                    .as_ref()
                    .is_some_and(|s| raw.offset >= s.get(&raw.partition).copied().unwrap_or(0))
                {
                    continue;
                }
                let expected = next
                    .get(&raw.partition)
                    .copied()
                    .unwrap_or(owned.next_offset);
                if raw.offset < expected {
                    continue; // already applied: a redelivery after reassignment
                }
                next.insert(raw.partition, raw.offset + 1);
                match otaledger_schemas::decode(&raw.payload) {
                    Ok(d) => events.push(Positioned {
                        position: Position {
                            partition: raw.partition,
                            offset: raw.offset,
                        },
                        event: d.event,
                    }),
                    Err(e) => {
                        let origin = Origin {
                            source: "kafka",
                            channel: &cfg.topic,
                            partition: Some(raw.partition),
                            offset: Some(raw.offset),
                        };
                        let rejection = Rejection::new("undecodable", e.to_string());
                        dead.push(
                            dead_letter(
                                &self.producer,
                                &origin,
                                &raw.key,
                                &raw.payload,
                                &rejection,
                            )
                            .await?,
                        );
                    }
                }
            }
            if next.is_empty() {
                continue;
            }
            // Dead letters must be safe in Kafka before the offsets that skip them are stored.
            for d in dead {
                d.acked().await?;
            }
            let mut tx = self.pool.begin().await.db("beginning batch")?;
            self.projection.apply(&mut tx, &events).await?;
            if !ownership.store_offsets(&mut tx, &next).await? {
                tx.rollback().await.db("rolling back fenced batch")?;
                tracing::warn!(consumer = %cfg.consumer, "fenced by a newer owner; giving up partitions");
                ownership.release_all().await?;
                self.projection.ownership_changed();
                next_rebalance = tokio::time::Instant::now();
                continue;
            }
            tx.commit().await.db("committing batch")?;
            for (p, n) in next {
                if let Some(o) = ownership.owned_mut().get_mut(&p) {
                    o.next_offset = n;
                }
            }
            applied.add(events.len() as u64);
            batch_seconds.observe(started.elapsed().as_secs_f64());
            let now = otaledger_domain::time::now_micros();
            for e in &events {
                #[allow(clippy::cast_precision_loss)]
                lag_seconds.observe((now - e.event.meta.recorded_at).max(0) as f64 / 1e6);
            }
            self.projection.committed(&events);
        }
        ownership.release_all().await?;
        tracing::info!(consumer = %cfg.consumer, "consumer stopped");
        Ok(())
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
    let stream: StreamConsumer = client_config(kafka)
        .set("group.id", format!("otaledger-{consumer}"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("queued.min.messages", "200000")
        .set("fetch.wait.max.ms", "10")
        .create()
        .map_err(|source| Error::Kafka {
            context: format!("creating the {consumer} consumer"),
            source,
        })?;
    Ok((ownership, stream))
}

fn assign(consumer: &StreamConsumer, topic: &str, ownership: &Ownership) -> Result<()> {
    let mut tpl = TopicPartitionList::new();
    for (p, o) in ownership.owned() {
        // Records before `next_offset` are dropped by the batch loop.
        let offset = otaledger_producers::kafka::resume_from(o.next_offset);
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

/// Waits for a first record (until the next rebalance is due), then gathers more for up to
/// `batch_wait` or `batch_max` records.
async fn collect(
    consumer: &StreamConsumer,
    cfg: &RunnerConfig,
    until: tokio::time::Instant,
) -> Result<Vec<Raw>> {
    let mut batch = Vec::new();
    let first = tokio::time::timeout_at(until, consumer.recv()).await;
    let Ok(first) = first else { return Ok(batch) };
    push(&mut batch, first)?;
    let deadline = tokio::time::Instant::now() + cfg.batch_wait;
    while batch.len() < cfg.batch_max {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(m) => push(&mut batch, m)?,
            Err(_) => break,
        }
    }
    Ok(batch)
}

fn push(
    batch: &mut Vec<Raw>,
    m: std::result::Result<rdkafka::message::BorrowedMessage<'_>, rdkafka::error::KafkaError>,
) -> Result<()> {
    match m {
        Ok(m) => {
            batch.push(Raw {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(<[u8]>::to_vec).unwrap_or_default(),
                payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            });
            Ok(())
        }
        Err(e) => {
            // Transient fetch errors (broker restart, leader change) are retried by librdkafka.
            tracing::warn!(error = %e, "kafka fetch error");
            Ok(())
        }
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

//! The machine's own limits, measured with librdkafka and PostgreSQL alone: no otaledger code
//! runs in them, so they bound what otaledger can do on this machine.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use otaledger_ledger::config::{Config, KafkaConfig};
use otaledger_ledger::kafka::client_config;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use crate::BoxError;

/// A plain producer (no idempotence, Avro or headers) batching as otaledger's does.
pub(crate) fn raw_producer(kafka: &KafkaConfig) -> Result<FutureProducer, BoxError> {
    Ok(client_config(kafka)
        .set("linger.ms", "10")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "500000")
        .create()?)
}

/// Enqueues one record, waiting while the producer's queue is full.
pub(crate) async fn raw_send(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    payload: &[u8],
) -> rdkafka::producer::DeliveryFuture {
    let mut record = FutureRecord::to(topic).key(key).payload(payload);
    loop {
        match producer.send_result(record) {
            Ok(f) => return f,
            Err((_, r)) => {
                record = r;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

pub(crate) async fn raw_produce(
    kafka: &KafkaConfig,
    topic: &str,
    payloads: &[(String, Vec<u8>)],
) -> Result<Duration, BoxError> {
    let producer = raw_producer(kafka)?;
    let started = Instant::now();
    let mut pending = Vec::with_capacity(payloads.len());
    for (key, payload) in payloads {
        pending.push(raw_send(&producer, topic, key, payload).await);
    }
    for p in pending {
        p.await?.map_err(|(e, _)| e)?;
    }
    Ok(started.elapsed())
}

/// A plain consumer of every partition of `topic` from its start, configured as otaledger's
/// consumers are, so that the limits it measures are theirs.
pub(crate) fn raw_reader(
    kafka: &KafkaConfig,
    name: &str,
    topic: &str,
) -> Result<BaseConsumer, BoxError> {
    let consumer: BaseConsumer = otaledger_ledger::reader::consumer_config(kafka, name).create()?;
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    for p in md
        .topics()
        .first()
        .map(|t| t.partitions())
        .unwrap_or_default()
    {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    Ok(consumer)
}

pub(crate) fn raw_consume(
    kafka: &KafkaConfig,
    topic: &str,
    expected: usize,
) -> Result<Duration, BoxError> {
    let consumer = raw_reader(kafka, "bench-raw-consume", topic)?;
    let started = Instant::now();
    let mut n = 0usize;
    let mut bytes = 0usize;
    while n < expected {
        if started.elapsed() > Duration::from_secs(600) {
            return Err(format!("raw consume read {n} of {expected}").into());
        }
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            bytes += m?.payload().map_or(0, <[u8]>::len);
            n += 1;
        }
    }
    tracing::debug!(bytes, "raw consume done");
    Ok(started.elapsed())
}

pub(crate) async fn copy_rate(
    cfg: &Config,
    schema: &str,
    rows: usize,
) -> Result<Duration, BoxError> {
    let pool = otaledger_ledger::db::pool(&cfg.database.url, schema, 2).await?;
    let mut conn = pool.acquire().await?;
    sqlx::query(
        "CREATE TABLE copy_probe (device_id text, firmware_version text, last_seen_at timestamptz, \
         uptime_s bigint, cpu_pct real, mem_pct real, temperature_c real, signal_dbm int, \
         last_partition int, last_offset bigint)",
    )
    .execute(&mut *conn)
    .await?;
    let mut data = String::with_capacity(rows * 90);
    for i in 0..rows {
        let _ = writeln!(
            data,
            "bench-{i:07},1.0.0,2026-11-26 10:00:00+00,{i},12.5,40,35.5,-60,{},{i}",
            i % 6
        );
    }
    let started = Instant::now();
    let mut copy = conn
        .copy_in_raw("COPY copy_probe FROM STDIN (FORMAT csv)")
        .await?;
    for chunk in data.as_bytes().chunks(1 << 20) {
        copy.send(chunk).await?;
    }
    copy.finish().await?;
    Ok(started.elapsed())
}

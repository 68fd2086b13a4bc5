//! The lag scenario: heartbeats at a steady rate followed by the projector, and the same rate
//! through a plain producer and consumer as the broker's own floor.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use otaledger_consumers::Runner;
use otaledger_domain::time::now_micros;
use otaledger_domain::Payload;
use otaledger_producers::config::KafkaConfig;
use otaledger_producers::kafka::{ensure_topics, EventProducer};
use otaledger_producers::shutdown::Shutdown;
use otaledger_projections::projector::FleetProjector;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::bench::{create_topic, heartbeats};
use crate::components::BoxError;
use crate::config::Config;

/// The fleet projector, noting each event's lag once its batch committed.
struct LagProbe {
    inner: FleetProjector,
    /// Occurred-at and lag of every event applied.
    samples: std::sync::Arc<std::sync::Mutex<Vec<(i64, i64)>>>,
    /// Occurred-at of the events folded into the pending transaction.
    folded: Vec<i64>,
}

impl otaledger_consumers::Projection for LagProbe {
    fn apply<'a>(
        &'a mut self,
        tx: &'a mut sqlx::PgConnection,
        events: &'a [otaledger_consumers::Positioned],
    ) -> otaledger_consumers::BoxFuture<'a, otaledger_consumers::Result<()>> {
        self.inner.apply(tx, events)
    }

    fn ownership_changed(&mut self) {
        self.inner.ownership_changed();
        self.folded.clear();
    }

    fn committed(&mut self, events: &[otaledger_consumers::Positioned]) {
        self.inner.committed(events);
        let now = now_micros();
        if let Ok(mut s) = self.samples.lock() {
            s.extend(self.folded.drain(..).map(|at| (at, now - at)));
        }
    }

    fn fold(&mut self, events: &[otaledger_consumers::Positioned]) -> bool {
        self.folded
            .extend(events.iter().map(|e| e.event.meta.occurred_at));
        self.inner.fold(events)
    }

    fn folded_rows(&self) -> usize {
        self.inner.folded_rows()
    }
}

/// Produces heartbeats at `rate` for a warm-up and then `duration` while a projector follows;
/// returns the sorted lags (µs) from each heartbeat's occurred-at to the commit that applied
/// it, for the heartbeats after the warm-up. The warm-up (a quarter of `duration`, at most 5 s)
/// leaves out the projector's first fetches and transactions on a new topic: they took up to
/// 1.5 s behind a steady 21,600 events/s, enough to set p99 of a 30 s run on their own.
pub(crate) async fn steady_lag(
    cfg: &Config,
    schema: &str,
    rate: f64,
    duration: Duration,
    devices: usize,
) -> Result<Vec<i64>, BoxError> {
    let kafka = &cfg.kafka;
    ensure_topics(kafka).await?;
    let pool = otaledger_consumers::db::pool(&cfg.database.url, schema, 4).await?;
    otaledger_projections::migrations::migrate(&pool).await?;
    let samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let probe = LagProbe {
        inner: FleetProjector::new(),
        samples: samples.clone(),
        folded: Vec::new(),
    };
    let runner_cfg = crate::components::projector_runner_config(cfg, schema, "lag");
    let shutdown = Shutdown::new();
    let task = tokio::spawn(
        Runner::new(runner_cfg, probe, EventProducer::new(kafka)?, pool.clone())
            .run(shutdown.signal()),
    );
    tokio::time::sleep(Duration::from_secs(1)).await; // ownership taken, partitions assigned
    let producer = EventProducer::new(kafka)?;
    let tick = Duration::from_millis(5);
    let per_tick = rate * tick.as_secs_f64();
    let mut interval = tokio::time::interval(tick);
    let warm_up = (duration / 4).min(Duration::from_secs(5));
    let measured_from = now_micros() + i64::try_from(warm_up.as_micros()).unwrap_or(0);
    let duration = duration + warm_up;
    let started = Instant::now();
    let (mut sent, mut budget) = (0usize, 0.0_f64);
    let mut pending = Vec::new();
    while started.elapsed() < duration {
        interval.tick().await;
        budget += per_tick;
        while budget >= 1.0 {
            budget -= 1.0;
            let mut e = heartbeats(0..1, 1, now_micros()).remove(0);
            if let Payload::Heartbeat(h) = &mut e.payload {
                h.device_id = format!("bench-{:07}", sent % devices.max(1));
            }
            let now = now_micros();
            e.meta.occurred_at = now;
            e.meta.recorded_at = now;
            pending.push(producer.enqueue(&e).await?);
            sent += 1;
        }
    }
    for p in pending {
        p.acked().await?;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n = samples.lock().map_or(0, |s| s.len());
        if n >= sent {
            break;
        }
        if Instant::now() > deadline || task.is_finished() {
            return Err(format!("only {n} of {sent} heartbeats were projected").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.trigger();
    let _ = task.await;
    pool.close().await;
    let mut out: Vec<i64> = samples
        .lock()
        .map(|s| {
            s.iter()
                .filter(|(at, _)| *at >= measured_from)
                .map(|(_, lag)| *lag)
                .collect()
        })
        .unwrap_or_default();
    out.sort_unstable();
    Ok(out)
}

/// The floor the broker sets under [`steady_lag`]: the same heartbeat bytes at the same rate
/// for the same time, through a plain producer and a consumer configured as otaledger's (no
/// Avro decoding, no PostgreSQL). Returns the sorted lags (µs) from each record's create time
/// to its arrival at the consumer, for the records after the same warm-up.
pub(crate) async fn raw_lag(
    kafka: &KafkaConfig,
    topic: &str,
    rate: f64,
    duration: Duration,
    devices: usize,
) -> Result<Vec<i64>, BoxError> {
    create_topic(kafka, topic).await?;
    let warm_up = (duration / 4).min(Duration::from_secs(5));
    // Known once producing ended; until then the consumer reads on.
    let sent = Arc::new(AtomicUsize::new(usize::MAX));
    let measured_from_ms = Arc::new(std::sync::atomic::AtomicI64::new(i64::MAX));
    let reader = {
        let consumer: BaseConsumer =
            otaledger_consumers::runner::consumer_config(kafka, "bench-raw-lag").create()?;
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
        let (sent, from) = (sent.clone(), measured_from_ms.clone());
        tokio::task::spawn_blocking(move || -> Result<Vec<i64>, String> {
            let mut lags = Vec::new();
            let mut read = 0usize;
            let mut ended: Option<Instant> = None;
            while read < sent.load(Ordering::Acquire) {
                if sent.load(Ordering::Acquire) != usize::MAX {
                    let since = *ended.get_or_insert_with(Instant::now);
                    if since.elapsed() > Duration::from_secs(120) {
                        return Err(format!("the raw consumer read only {read} records"));
                    }
                }
                let Some(m) = consumer.poll(Duration::from_millis(100)) else {
                    continue;
                };
                let m = m.map_err(|e| e.to_string())?;
                read += 1;
                if let Some(ms) = m.timestamp().to_millis() {
                    if ms >= from.load(Ordering::Acquire) {
                        lags.push(now_micros() - ms * 1000);
                    }
                }
            }
            lags.sort_unstable();
            Ok(lags)
        })
    };
    let producer = crate::bench::raw_producer(kafka)?;
    let payload = otaledger_schemas::encode(&heartbeats(0..1, 1, now_micros()).remove(0))?;
    let tick = Duration::from_millis(5);
    let per_tick = rate * tick.as_secs_f64();
    let mut interval = tokio::time::interval(tick);
    measured_from_ms.store(
        (now_micros() / 1000) + i64::try_from(warm_up.as_millis()).unwrap_or(0),
        Ordering::Release,
    );
    let started = Instant::now();
    let (mut n, mut budget) = (0usize, 0.0_f64);
    let mut pending = Vec::new();
    while started.elapsed() < duration + warm_up {
        interval.tick().await;
        budget += per_tick;
        while budget >= 1.0 {
            budget -= 1.0;
            let key = format!("bench-{:07}", n % devices.max(1));
            pending.push(crate::bench::raw_send(&producer, topic, &key, &payload).await);
            n += 1;
        }
    }
    for p in pending {
        p.await?.map_err(|(e, _)| e)?;
    }
    sent.store(n, Ordering::Release);
    Ok(reader.await??)
}

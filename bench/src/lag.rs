//! The lag scenario: heartbeats at a steady rate followed by the projector, and the same rate
//! through a plain producer and consumer as the broker's own floor.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use otaledger_domain::time::now_micros;
use otaledger_domain::Payload;
use otaledger_ledger::config::KafkaConfig;
use otaledger_ledger::kafka::{ensure_topics, EventProducer};
use otaledger_ledger::shutdown::Shutdown;
use otaledger_ledger::Runner;
use otaledger_projections::projector::FleetProjector;
use rdkafka::message::Message;

use crate::BoxError;
use crate::{create_topic, heartbeats};
use otaledger_ledger::config::Config;

/// The fleet projector, noting each event's lag once its batch committed.
struct LagProbe {
    inner: FleetProjector,
    /// Occurred-at and lag of every event applied.
    samples: std::sync::Arc<std::sync::Mutex<Vec<(i64, i64)>>>,
    /// Occurred-at of the events folded into the pending transaction.
    folded: Vec<i64>,
}

impl otaledger_ledger::Projection for LagProbe {
    async fn apply(
        &mut self,
        tx: &mut sqlx::PgConnection,
        events: &[otaledger_ledger::Positioned],
    ) -> otaledger_ledger::Result<()> {
        self.inner.apply(tx, events).await
    }

    fn ownership_changed(&mut self) {
        self.inner.ownership_changed();
        self.folded.clear();
    }

    fn committed(&mut self, events: &[otaledger_ledger::Positioned]) {
        self.inner.committed(events);
        let now = now_micros();
        if let Ok(mut s) = self.samples.lock() {
            s.extend(self.folded.drain(..).map(|at| (at, now - at)));
        }
    }

    fn fold(&mut self, events: &[otaledger_ledger::Positioned]) -> bool {
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
    let pool =
        otaledger_projections::migrations::migrated_pool(&cfg.database.url, schema, 4).await?;
    let samples = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let probe = LagProbe {
        inner: FleetProjector::new(),
        samples: samples.clone(),
        folded: Vec::new(),
    };
    let runner_cfg = otaledger_cli::components::projector_runner_config(cfg, schema, "lag");
    let shutdown = Shutdown::new();
    let task = tokio::spawn(
        Runner::new(runner_cfg, probe, EventProducer::new(kafka)?, pool.clone())
            .run(shutdown.signal()),
    );
    tokio::time::sleep(Duration::from_secs(1)).await; // ownership taken, partitions assigned
    let producer = EventProducer::new(kafka)?;
    let measured_from = now_micros() + micros(warm_up(duration));
    let mut pacer = Pacer::new(rate, duration + warm_up(duration));
    let mut sent = 0usize;
    let mut pending = Vec::new();
    while let Some(due) = pacer.due().await {
        for _ in 0..due {
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
    // Known once producing ended; until then the consumer reads on.
    let sent = Arc::new(AtomicUsize::new(usize::MAX));
    let from_ms = (now_micros() + micros(warm_up(duration))) / 1000;
    let reader = {
        let consumer = crate::limits::raw_reader(kafka, "bench-raw-lag", topic)?;
        let sent = sent.clone();
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
                    if ms >= from_ms {
                        lags.push(now_micros() - ms * 1000);
                    }
                }
            }
            lags.sort_unstable();
            Ok(lags)
        })
    };
    let producer = crate::limits::raw_producer(kafka)?;
    let payload = otaledger_schemas::encode(&heartbeats(0..1, 1, now_micros()).remove(0))?;
    let mut pacer = Pacer::new(rate, duration + warm_up(duration));
    let mut n = 0usize;
    let mut pending = Vec::new();
    while let Some(due) = pacer.due().await {
        for _ in 0..due {
            let key = format!("bench-{:07}", n % devices.max(1));
            pending.push(crate::limits::raw_send(&producer, topic, &key, &payload).await);
            n += 1;
        }
    }
    for p in pending {
        p.await?.map_err(|(e, _)| e)?;
    }
    sent.store(n, Ordering::Release);
    Ok(reader.await??)
}

/// What both lag runs leave out at their start: a quarter of the run, at most 5 s.
fn warm_up(duration: Duration) -> Duration {
    (duration / 4).min(Duration::from_secs(5))
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Releases records at a steady rate, in 5 ms ticks, for a given time.
struct Pacer {
    interval: tokio::time::Interval,
    per_tick: f64,
    budget: f64,
    until: Instant,
}

impl Pacer {
    fn new(rate: f64, run: Duration) -> Self {
        let tick = Duration::from_millis(5);
        Pacer {
            interval: tokio::time::interval(tick),
            per_tick: rate * tick.as_secs_f64(),
            budget: 0.0,
            until: Instant::now() + run,
        }
    }

    /// Waits for the next tick and returns how many records are due; `None` once the run is over.
    async fn due(&mut self) -> Option<usize> {
        if Instant::now() >= self.until {
            return None;
        }
        self.interval.tick().await;
        self.budget += self.per_tick;
        let n = self.budget.floor();
        self.budget -= n;
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Some(n as usize)
    }
}

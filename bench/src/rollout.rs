//! The rollout scenario of `otaledger bench`: a whole fleet of instant simulated devices (a share
//! behind gateways) registers over MQTT/AMQP, then one rollout of four waves updates every one of
//! them. Every component runs as its own `otaledger run` process against the real brokers, as
//! in production; the simulated fleet runs in this process.
//!
//! Figures: commands dispatched per second over MQTT and over AMQP (from the dispatcher's
//! `/metrics`), request to last command, request to completion, the saga's decision latency
//! (from a routed result's recording to the recording of the decision it caused, read back
//! from the ledger) and each process's peak RSS.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use otaledger_domain::events::{
    Payload, Release, RollbackPolicy, Strategy, TargetSelector, UpdateRequested,
};
use otaledger_domain::ids::{new_event_id, new_trace_id};
use otaledger_domain::time::now_micros;
use otaledger_domain::Event;
use otaledger_ledger::kafka::{client_config, EventProducer};
use otaledger_ledger::metrics::REGISTRY;
use otaledger_ledger::shutdown::Shutdown;
use otaledger_simulator::{self as simulator, Behaviour, SimConfig};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use otaledger_cli::components::{self, Component};

use crate::process::{peak_rss_mib, ComponentProcess};

use crate::BoxError;
use otaledger_ledger::config::Config;

/// What the scenario measured.
#[derive(Debug, Default)]
pub struct RolloutFigures {
    pub devices: usize,
    pub commands_per_s: f64,
    pub mqtt_per_s: f64,
    pub amqp_per_s: f64,
    pub mqtt_commands: u64,
    pub amqp_commands: u64,
    /// Commands dispatched per second of the time the dispatcher had commands waiting (issued
    /// by the saga, not yet handed to a broker): its throughput, apart from the waits between
    /// waves.
    pub dispatch_busy_per_s: f64,
    /// The most commands dispatched within one second.
    pub peak_per_s: f64,
    pub request_to_last_command_s: f64,
    pub request_to_completion_s: f64,
    pub decision_p50_ms: f64,
    pub decision_p99_ms: f64,
    /// Peak RSS of each component's process.
    pub peak_rss_mib: Vec<(Component, f64)>,
    /// Peak RSS of the bench process, which runs the simulated fleet.
    pub simulator_peak_rss_mib: f64,
}

/// One sample of the scenario's progress: time since the request, commands issued by the saga,
/// commands dispatched.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: f64,
    issued: u64,
    dispatched: u64,
}

/// Dispatch throughput while commands were waiting, and the best one-second window.
fn dispatch_rates(samples: &[Sample]) -> (f64, f64) {
    let mut busy = 0.0;
    let mut moved = 0;
    for w in samples.windows(2) {
        if w[0].issued > w[0].dispatched || w[1].dispatched > w[0].dispatched {
            busy += w[1].at - w[0].at;
            moved += w[1].dispatched - w[0].dispatched;
        }
    }
    let mut peak: f64 = 0.0;
    let mut j = 0;
    for i in 0..samples.len() {
        while samples[i].at - samples[j].at > 1.0 {
            j += 1;
        }
        if samples[i].at - samples[j].at >= 0.5 {
            #[allow(clippy::cast_precision_loss)]
            let r = (samples[i].dispatched - samples[j].dispatched) as f64
                / (samples[i].at - samples[j].at);
            peak = peak.max(r);
        }
    }
    #[allow(clippy::cast_precision_loss)]
    let rate = if busy > 0.0 { moved as f64 / busy } else { 0.0 };
    (rate, peak)
}

fn dispatched(channel: &str) -> u64 {
    REGISTRY
        .counter(
            "otaledger_commands_dispatched_total",
            "Commands handed to the device's broker or gateway",
            &[("channel", channel)],
        )
        .get()
}

/// The release every bench rollout installs.
fn release() -> Release {
    Release {
        version: "99.0.0".into(),
        artifact_uri: "https://artifacts.example/fw/99.0.0.bin".into(),
        sha256: "ab".repeat(32),
        size_bytes: 1,
        signature: "bench".into(),
    }
}

/// The dispatcher alone: `n` update commands (a fifth of them for devices behind 20 gateways)
/// are in `ota.device-commands` before it starts; the commands delivered after its first batch,
/// over the time from that batch to its last. One MQTT client subscribed to every device's
/// commands and one AMQP queue bound to every gateway take them, so both brokers route each
/// command as they would to devices.
pub async fn dispatch_only(cfg: &Config, n: usize) -> Result<(f64, f64, f64), BoxError> {
    use lapin::options::{QueueBindOptions, QueueDeclareOptions};
    use lapin::types::FieldTable;
    use otaledger_domain::events::UpdateCommand;

    let mut dc = cfg.clone();
    dc.kafka.topic_prefix = format!("{}dispatch.", cfg.kafka.topic_prefix);
    dc.database.schema = format!("{}_dispatch", cfg.database.schema);
    dc.mqtt.topic_root = format!("{}-dispatch", cfg.mqtt.topic_root);
    dc.amqp.commands_exchange = format!("{}.dispatch", cfg.amqp.commands_exchange);
    components::prepare(&dc).await?;

    // Receivers: the brokers route every command somewhere, as they would to devices.
    let amqp = otaledger_ledger::amqp::connect(&dc.amqp).await?;
    let ch = amqp.create_channel().await?;
    otaledger_ledger::amqp::declare_commands_exchange(&ch, &dc.amqp).await?;
    let queue = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    ch.queue_bind(
        queue.name().as_str().into(),
        dc.amqp.commands_exchange.as_str().into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let mut opts = dc
        .mqtt
        .options(&format!("otaledger-bench-devices-{}", std::process::id()));
    opts.set_clean_session(true);
    let (mqtt, mut eventloop) = rumqttc::AsyncClient::new(opts, 100);
    mqtt.subscribe(
        format!("{}/+/commands", dc.mqtt.topic_root),
        rumqttc::QoS::AtLeastOnce,
    )
    .await?;
    let devices_rx = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });

    let producer = EventProducer::new(&dc.kafka)?;
    let mut pending = Vec::with_capacity(n);
    for i in 0..n {
        let command_id = new_event_id();
        let e = Event::new(
            command_id,
            Payload::UpdateCommand(UpdateCommand {
                director: None,
                command_id,
                device_id: format!("dd-{i:07}"),
                rollout_id: "bench-dispatch".into(),
                gateway_id: (i % 5 == 0).then(|| format!("gw-{:02}", i % 20)),
                release: release(),
                deadline: now_micros() + 600_000_000,
            }),
            now_micros(),
            now_micros(),
            "bench",
        );
        pending.push(producer.enqueue(&e).await?);
    }
    for p in pending {
        p.acked().await?;
    }
    // The command writer is done: its librdkafka threads must not share the cores with the
    // dispatcher under measurement.
    drop(producer);

    let before = (dispatched("mqtt"), dispatched("amqp"));
    let stop = Shutdown::new();
    let signal = stop.signal();
    let task =
        tokio::spawn(async move { components::run(Component::Dispatcher, dc, signal).await });
    let started = Instant::now();
    // Counters move once a batch is delivered, so the span starts at the first delivered batch
    // and only the commands delivered after it count (the first batch's time is unknown).
    let mut first = None;
    let last = loop {
        let (m, a) = (dispatched("mqtt") - before.0, dispatched("amqp") - before.1);
        if m + a > 0 && first.is_none() {
            first = Some((Instant::now(), m, a));
        }
        if usize::try_from(m + a).unwrap_or(0) >= n {
            break Instant::now();
        }
        if started.elapsed() > Duration::from_secs(300) || task.is_finished() {
            return Err(format!("the dispatcher sent {} of {n} commands", m + a).into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let (first_at, first_m, first_a) = match first {
        Some((at, m, a)) if usize::try_from(m + a).unwrap_or(0) < n => (at, m, a),
        // All in one batch (small sizes): timed from the dispatcher's start instead.
        _ => (started, 0, 0),
    };
    let span = last.duration_since(first_at).as_secs_f64().max(0.001);
    stop.trigger();
    let _ = task.await;
    devices_rx.abort();
    let _ = amqp.close(0, "bench done".into()).await;
    let (m, a) = (
        dispatched("mqtt") - before.0 - first_m,
        dispatched("amqp") - before.1 - first_a,
    );
    #[allow(clippy::cast_precision_loss)]
    Ok(((m + a) as f64 / span, m as f64 / span, a as f64 / span))
}

/// Runs the scenario in the namespace of `cfg` (its own topics, schema, MQTT root, queues).
pub async fn run(
    cfg: &Config,
    devices: usize,
    bin: &std::path::Path,
) -> Result<RolloutFigures, BoxError> {
    let pool = otaledger_projections::migrations::migrated_pool(
        &cfg.database.url,
        &cfg.database.schema,
        2,
    )
    .await?;
    let mut stack = Vec::new();
    // The rollout's pipeline: every component but the API and the device history.
    for c in Component::ALL
        .into_iter()
        .filter(|c| !matches!(c, Component::Api | Component::History))
    {
        stack.push(ComponentProcess::start(bin, cfg, c, None)?);
    }
    let result = drive(cfg, devices, &pool, &stack).await;
    let peak: Vec<(Component, f64)> = stack
        .iter()
        .map(|p| (p.component, p.peak_rss_mib()))
        .collect();
    for p in stack {
        p.stop().await;
    }
    let mut figures = result?;
    figures.peak_rss_mib = peak;
    figures.simulator_peak_rss_mib = peak_rss_mib("self");
    let kafka = cfg.kafka.clone();
    let topic = cfg.kafka.topics().rollout_events;
    let latencies =
        tokio::task::spawn_blocking(move || decision_latencies(&kafka, &topic)).await??;
    figures.decision_p50_ms = percentile(&latencies, 0.50);
    figures.decision_p99_ms = percentile(&latencies, 0.99);
    pool.close().await;
    Ok(figures)
}

/// Registers the simulated fleet with the component processes running, then runs the rollout.
async fn drive(
    cfg: &Config,
    devices: usize,
    pool: &sqlx::PgPool,
    stack: &[ComponentProcess],
) -> Result<RolloutFigures, BoxError> {
    let of = |c: Component| stack.iter().find(|p| p.component == c);
    let (Some(saga), Some(dispatcher)) = (of(Component::Saga), of(Component::Dispatcher)) else {
        return Err("the saga and the dispatcher must run".into());
    };
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let dispatched = |channel: &'static str| async move {
        let series = format!("otaledger_commands_dispatched_total{{channel=\"{channel}\"}}");
        dispatcher.metric(&series).await as u64
    };
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let issued = || async { saga.metric("otaledger_saga_commands_total").await as u64 };
    // Give the bridges a moment to subscribe before the fleet registers.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sim_stop = Shutdown::new();
    let sim_cfg = SimConfig {
        devices,
        rate: 100.0,
        gateway_share: 0.2,
        gateways: 20,
        id_prefix: "rb-".into(),
        seed: 5,
        rounds: None,
        mqtt_connections: 8,
        credentials: None,
        gateway_credentials: None,
        mqtt: cfg.mqtt.clone(),
        amqp: cfg.amqp.clone(),
        behaviour: Behaviour::default(),
        downloads: None,
    };
    let signal = sim_stop.signal();
    let sim = tokio::spawn(async move { simulator::run(sim_cfg, signal).await });
    let registered = Instant::now();
    loop {
        // Only the simulator's devices: in `bench all` the device topic already holds the
        // heartbeat scenarios' 100,000 devices, which the projector folds in first.
        let n: i64 = otaledger_projections::fleet::firmware_counts(pool, "rb-")
            .await?
            .iter()
            .map(|(_, n)| n)
            .sum();
        if usize::try_from(n).unwrap_or(0) >= devices {
            break;
        }
        if registered.elapsed() > Duration::from_secs(600) {
            return Err(format!("only {n} of {devices} devices registered").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "  rollout     {devices} devices registered and projected in {:.1} s",
        registered.elapsed().as_secs_f64()
    );

    let rollout_id = format!("bench-{}", &new_event_id().simple().to_string()[..8]);
    let request = Event::at(
        Payload::UpdateRequested(UpdateRequested {
            catalogue: None,
            rollout_id: rollout_id.clone(),
            requested_by: "bench".into(),
            release: release(),
            selector: TargetSelector {
                models: simulator::model_names()
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
                ..TargetSelector::default()
            },
            strategy: Strategy {
                waves_pct: vec![1.0, 10.0, 50.0, 100.0],
                success_threshold_pct: 95.0,
                failure_threshold_pct: 5.0,
                min_devices_for_verdict: 1,
                device_timeout_s: 600,
                max_retries: 0,
                retry_backoff_s: 0,
                max_in_flight: i32::try_from(devices).unwrap_or(i32::MAX),
                health_gate_window_s: 0,
                scheduled_start: None,
                maintenance_window: None,
                rollback_policy: RollbackPolicy::None,
            },
        }),
        now_micros(),
        now_micros(),
        new_trace_id(),
    );
    let before = (dispatched("mqtt").await, dispatched("amqp").await);
    let issued_before = issued().await;
    let mut samples = Vec::new();
    let producer = EventProducer::new(&cfg.kafka)?;
    let requested = Instant::now();
    producer.append(&request).await?;
    let mut first: HashMap<&str, Instant> = HashMap::new();
    let mut last: HashMap<&str, Instant> = HashMap::new();
    let mut last_command = None;
    let completed = loop {
        let now = Instant::now();
        let counts = [
            ("mqtt", dispatched("mqtt").await - before.0),
            ("amqp", dispatched("amqp").await - before.1),
        ];
        for (ch, n) in counts {
            if n > 0 {
                first.entry(ch).or_insert(now);
            }
            if last.get(ch).is_none_or(|_| n > 0) {
                last.insert(ch, now);
            }
        }
        let total = counts[0].1 + counts[1].1;
        samples.push(Sample {
            at: now.duration_since(requested).as_secs_f64(),
            issued: issued().await - issued_before,
            dispatched: total,
        });
        if last_command.is_none() && usize::try_from(total).unwrap_or(0) >= devices {
            last_command = Some(now);
        }
        if last_command.is_some()
            && otaledger_projections::rollouts::get_rollout(pool, &rollout_id)
                .await?
                .is_some_and(|r| r.state == "COMPLETED")
        {
            break now;
        }
        if requested.elapsed() > Duration::from_secs(900) {
            return Err(
                format!("the rollout did not complete: {total} of {devices} commands").into(),
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mqtt_n = dispatched("mqtt").await - before.0;
    let amqp_n = dispatched("amqp").await - before.1;
    let span = |ch: &str, n: u64| {
        let (Some(f), Some(l)) = (first.get(ch), last.get(ch)) else {
            return 0.0;
        };
        #[allow(clippy::cast_precision_loss)]
        let r = n as f64 / l.duration_since(*f).as_secs_f64().max(0.001);
        r
    };
    let last_command = last_command.unwrap_or(completed);
    let (dispatch_busy_per_s, peak_per_s) = dispatch_rates(&samples);
    // Where the time went, second by second (RUST_LOG=otaledger_cli=debug).
    let mut next = 0.0;
    for s in &samples {
        if s.at >= next {
            tracing::debug!(
                at = format!("{:.1}", s.at),
                issued = s.issued,
                dispatched = s.dispatched,
                "rollout progress"
            );
            next += 1.0;
        }
    }
    let first_any = first.values().min().copied().unwrap_or(requested);
    #[allow(clippy::cast_precision_loss)]
    let figures = RolloutFigures {
        devices,
        commands_per_s: (mqtt_n + amqp_n) as f64
            / last_command
                .duration_since(first_any)
                .as_secs_f64()
                .max(0.001),
        mqtt_per_s: span("mqtt", mqtt_n),
        amqp_per_s: span("amqp", amqp_n),
        mqtt_commands: mqtt_n,
        amqp_commands: amqp_n,
        dispatch_busy_per_s,
        peak_per_s,
        request_to_last_command_s: last_command.duration_since(requested).as_secs_f64(),
        request_to_completion_s: completed.duration_since(requested).as_secs_f64(),
        ..RolloutFigures::default()
    };
    // Where the time went: each consumer's time inside its batches (they overlap).
    for (c, name) in [
        (Component::Projector, "projector"),
        (Component::Router, "router"),
        (Component::Dispatcher, "dispatcher"),
        (Component::RolloutProjector, "rollout-projector"),
    ] {
        let Some(p) = of(c) else { continue };
        let series =
            |part: &str| format!("otaledger_consumer_batch_seconds_{part}{{consumer=\"{name}\"}}");
        println!(
            "  rollout     {name:<18} {:>6} batches, {:>7.1} s busy",
            p.metric(&series("count")).await,
            p.metric(&series("sum")).await
        );
    }
    sim_stop.trigger();
    let _ = sim.await;
    Ok(figures)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// From each routed result's recording to the recording of the outcome it caused, in ms.
fn decision_latencies(
    kafka: &otaledger_ledger::config::KafkaConfig,
    topic: &str,
) -> Result<Vec<f64>, BoxError> {
    let consumer: BaseConsumer = client_config(kafka)
        .set("group.id", "otaledger-bench-rollout")
        .set("enable.auto.commit", "false")
        .create()?;
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut tpl = TopicPartitionList::new();
    for p in md.topics()[0].partitions() {
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let mut routed: HashMap<String, i64> = HashMap::new();
    let mut out = Vec::new();
    let mut idle = Instant::now();
    while idle.elapsed() < Duration::from_secs(2) {
        let Some(m) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        idle = Instant::now();
        let Ok(d) = otaledger_schemas::decode(m?.payload().unwrap_or_default()) else {
            continue;
        };
        match &d.event.payload {
            Payload::DeviceReportRouted(r) if r.outcome.is_some() => {
                routed.insert(r.device_id.clone(), d.event.meta.recorded_at);
            }
            Payload::DeviceOutcome(o) => {
                if let Some(t) = routed.remove(&o.device_id) {
                    #[allow(clippy::cast_precision_loss)]
                    out.push((d.event.meta.recorded_at - t).max(0) as f64 / 1000.0);
                }
            }
            _ => {}
        }
    }
    out.sort_by(f64::total_cmp);
    Ok(out)
}

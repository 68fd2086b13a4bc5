//! The rollout saga's runtime: the single writer of each rollout's decisions.
//!
//! It owns partitions of `ota.rollout-events` (advisory locks, as every consumer here) and holds
//! the state of their rollouts in memory, folded from the partition itself: the topic holds
//! both the inputs (requests, operator requests, routed device reports) and every decision.
//! PostgreSQL stores, per partition, the offset up to which inputs were decided; it is written
//! only after the decisions of those inputs are acknowledged by Kafka.
//!
//! On taking partitions the runtime folds them from offset 0 (decisions and inputs alike) until
//! the partition is quiet, and only then decides the inputs past the stored offset. A crash
//! between appending decisions and storing the offset therefore never decides an input twice
//! against a state that lacks its first decisions; because the decider converges on its state
//! (window, thresholds, deadlines), the next tick decides exactly what is still missing, with
//! the same deterministic command ids.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use otaledger_domain::command_key::CommandKey;
use otaledger_domain::device_view::Position;
use otaledger_domain::events::{
    CancelCommand, CommandKind, DeviceCommanded, Payload, RollbackCommand, UpdateCommand,
};
use otaledger_domain::ids::new_event_id;
use otaledger_domain::rollout::{Input, Rollout, Target};
use otaledger_domain::time::{now_micros, Micros};
use otaledger_domain::tuf::director::{DirectedTarget, Statement};
use otaledger_domain::tuf::SigningKey;
use otaledger_domain::Event;
use otaledger_ledger::config::KafkaConfig;
use otaledger_ledger::dead_letters::{dead_letter_for, Origin, Rejection};
use otaledger_ledger::fence::Writer;
use otaledger_ledger::kafka::{EventProducer, Pending};
use otaledger_ledger::metrics::{Counter, Gauge, Histogram, REGISTRY};
use otaledger_ledger::reader::{dead_letter_undecodable, Body, LedgerReader, Start};
use otaledger_ledger::reset::check_positions;
use otaledger_ledger::shutdown::ShutdownSignal;
use otaledger_projections::{releases, targets};
use sqlx::PgPool;
use uuid::Uuid;

use otaledger_ledger::ownership::Ownership;
use otaledger_ledger::DbContext;

use crate::Result;

#[derive(Debug, Clone)]
pub struct SagaConfig {
    pub topic: String,
    pub database_url: String,
    /// The schema holding the fleet view (targets are resolved from its `devices` table) and
    /// the saga's offsets.
    pub schema: String,
    pub member: String,
    /// How often the clock input reaches every rollout (timeouts, retries, scheduled starts).
    pub tick: Duration,
    /// How often running rollouts look for devices that joined the fleet.
    pub join_every: Duration,
    pub rebalance_every: Duration,
    /// How long a partition must be quiet before its fold counts as complete.
    pub settle: Duration,
    pub kafka: KafkaConfig,
}

const CONSUMER: &str = "saga";
/// How long a fold may stay short of the high watermarks it saw before the saga decides anyway.
const FOLD_PATIENCE: Duration = Duration::from_secs(60);

struct Entry {
    rollout: Rollout,
    /// Its partition of the topic: its decisions are stamped with that partition's epoch.
    partition: i32,
    /// When its first wave started: devices first seen after this are joiners.
    started_at: Option<Micros>,
    next_join_check: Instant,
}

struct Metrics {
    decisions: Counter,
    commands: Counter,
    refused: Counter,
    unauthorized: Counter,
    latency: Histogram,
    rollouts: Gauge,
}

/// The saga: state of the owned partitions' rollouts, and what it needs to decide.
pub struct Saga {
    cfg: SagaConfig,
    producer: EventProducer,
    pool: PgPool,
    rollouts: HashMap<String, Entry>,
    /// Ids of decisions this instance appended and has not read back yet: reading them back
    /// must not apply them a second time.
    emitted: HashSet<Uuid>,
    /// Gateway of each device, from target resolution (`None`: reached over MQTT directly).
    gateways: HashMap<String, Option<String>>,
    /// The key command ids are derived with (ADR 0027), loaded when the saga starts.
    command_key: CommandKey,
    /// Model of each device, from target resolution: the hardware id of its director
    /// statements.
    models: HashMap<String, String>,
    /// The director's key (ADR 0038), loaded when the saga starts.
    director: Option<SigningKey>,
    /// The epoch each owned partition is held with, whose fence was appended (ADR 0039).
    epochs: BTreeMap<i32, i64>,
    metrics: Metrics,
}

struct Record {
    partition: i32,
    offset: i64,
    event: Event,
}

impl std::fmt::Debug for Saga {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Saga")
            .field("member", &self.cfg.member)
            .field("rollouts", &self.rollouts.len())
            .finish_non_exhaustive()
    }
}

fn is_decision(p: &Payload) -> bool {
    matches!(
        p,
        Payload::WaveStarted(_)
            | Payload::DevicesJoined(_)
            | Payload::DeviceCommanded(_)
            | Payload::DeviceOutcome(_)
            | Payload::DeviceTimedOut(_)
            | Payload::ThresholdEvaluated(_)
            | Payload::RolloutStateChanged(_)
    )
}

impl Saga {
    #[must_use]
    pub fn new(cfg: SagaConfig, producer: EventProducer, pool: PgPool) -> Self {
        let metrics = Metrics {
            decisions: REGISTRY.counter(
                "otaledger_saga_decisions_total",
                "Decisions the rollout saga appended",
                &[],
            ),
            commands: REGISTRY.counter(
                "otaledger_saga_commands_total",
                "Commands the rollout saga issued to devices",
                &[],
            ),
            refused: REGISTRY.counter(
                "otaledger_saga_refused_inputs_total",
                "Inputs the rollout decider refused (e.g. resume of a running rollout)",
                &[],
            ),
            unauthorized: REGISTRY.counter(
                "otaledger_saga_unauthorized_reports_total",
                "Install results naming a command id never issued to that device for that \
                 rollout, dead-lettered with reason unauthorized",
                &[],
            ),
            latency: REGISTRY.histogram(
                "otaledger_saga_decision_seconds",
                "From an input's recorded-at time to its decisions acknowledged by Kafka",
                &[],
            ),
            rollouts: REGISTRY.gauge(
                "otaledger_saga_rollouts",
                "Rollouts held by this saga instance",
                &[],
            ),
        };
        Saga {
            cfg,
            producer,
            pool,
            rollouts: HashMap::new(),
            emitted: HashSet::new(),
            gateways: HashMap::new(),
            command_key: CommandKey::default(),
            models: HashMap::new(),
            director: None,
            epochs: BTreeMap::new(),
            metrics,
        }
    }

    /// Runs until shutdown.
    pub async fn run(mut self, mut shutdown: ShutdownSignal) -> Result<()> {
        let cfg = self.cfg.clone();
        self.command_key = command_key(&self.pool).await?;
        self.director = Some(SigningKey::from_seed(
            otaledger_ledger::db::stored_secret(&self.pool, "director_key").await?,
        )?);
        let (mut ownership, reader) = otaledger_ledger::runner::join_partitions(
            &self.pool,
            &cfg.kafka,
            &cfg.database_url,
            &cfg.schema,
            CONSUMER,
            &cfg.topic,
            &cfg.member,
            (5_000, Duration::from_millis(5)),
            cfg.rebalance_every,
        )
        .await?;
        tracing::info!(member = %cfg.member, topic = %cfg.topic, "rollout saga starting");
        let mut next_rebalance = tokio::time::Instant::now();
        let mut next_tick = tokio::time::Instant::now();
        // While folding, inputs past the stored offsets wait here.
        let mut settling: Option<Vec<Record>> = None;
        let mut last_record = tokio::time::Instant::now();
        let mut fold_started = tokio::time::Instant::now();
        loop {
            if shutdown.is_triggered() {
                break;
            }
            let now = tokio::time::Instant::now();
            if now >= next_rebalance {
                if ownership.rebalance().await? {
                    self.reset(&reader, &ownership).await?;
                    settling = Some(Vec::new());
                    last_record = now;
                    fold_started = now;
                }
                next_rebalance = now + cfg.rebalance_every;
            }
            if let Some(pending) = settling.take() {
                let quiet = now.duration_since(last_record) >= cfg.settle;
                // Not complete before the high watermarks of when the fold began (a lower bound
                // on tansu; the quiet period covers the rest): without it a slow first fetch
                // looked like an empty partition and the saga decided on an empty state.
                let reached = reader.caught_up();
                if quiet && !reached && now.duration_since(fold_started) > FOLD_PATIENCE {
                    tracing::warn!(read_to = ?reader.positions(), "the fold stays short of the high watermarks; deciding anyway");
                }
                if quiet && (reached || now.duration_since(fold_started) > FOLD_PATIENCE) {
                    tracing::info!(
                        rollouts = self.rollouts.len(),
                        pending = pending.len(),
                        "saga state folded; deciding"
                    );
                    self.decide_inputs(&pending).await?;
                    if !self.store(&mut ownership, &next_offsets(&pending)).await? {
                        self.fenced(&mut ownership, &reader).await?;
                        next_rebalance = now;
                        continue;
                    }
                } else {
                    settling = Some(pending);
                }
            }
            if settling.is_none() && now >= next_tick {
                self.tick().await?;
                next_tick = now + cfg.tick;
            }
            let until = if settling.is_some() {
                now + cfg.settle
            } else {
                next_tick.min(next_rebalance)
            };
            let batch = tokio::select! {
                () = shutdown.wait() => break,
                b = reader.read(until) => b,
            };
            if batch.records.is_empty() {
                continue;
            }
            last_record = tokio::time::Instant::now();
            let mut inputs = Vec::new();
            // Each offset is folded once (the reader drops what tansu delivers twice), and only
            // while its partition is owned.
            let mut records = batch.records;
            records.retain(|r| ownership.owned().contains_key(&r.position.partition));
            dead_letter_undecodable(&self.producer, &cfg.topic, "saga", &records).await?;
            for r in records {
                let Position { partition, offset } = r.position;
                let Some(owned) = ownership.owned().get(&partition) else {
                    continue;
                };
                let event = match r.body {
                    Body::Event { event, .. } => event,
                    Body::Undecodable { .. } | Body::Raw(_) => {
                        if offset >= owned.next_offset {
                            inputs.push(None);
                        }
                        continue;
                    }
                };
                let rollout_id = event.key().to_owned();
                if is_decision(&event.payload) {
                    if self.emitted.remove(&event.meta.event_id) {
                        continue;
                    }
                    self.fold(&rollout_id, partition, &event);
                    continue;
                }
                // Inputs evolve state too (the request, routed progress).
                self.fold(&rollout_id, partition, &event);
                if offset >= owned.next_offset {
                    inputs.push(Some(Record {
                        partition,
                        offset,
                        event,
                    }));
                }
            }
            let records: Vec<Record> = inputs.into_iter().flatten().collect();
            if let Some(pending) = settling.as_mut() {
                pending.extend(records);
                continue;
            }
            if records.is_empty() {
                continue;
            }
            self.decide_inputs(&records).await?;
            if !self.store(&mut ownership, &next_offsets(&records)).await? {
                self.fenced(&mut ownership, &reader).await?;
                next_rebalance = tokio::time::Instant::now();
            }
        }
        ownership.release_all().await?;
        tracing::info!(member = %cfg.member, "rollout saga stopped");
        Ok(())
    }

    async fn fenced(&mut self, ownership: &mut Ownership, reader: &LedgerReader) -> Result<()> {
        tracing::warn!("saga fenced by a newer owner; giving up partitions");
        ownership.release_all().await?;
        self.reset(reader, ownership).await
    }

    /// Forgets everything and reads the owned partitions from the start, aiming at their high
    /// watermarks of this moment. A ledger shorter than the stored positions (the inputs
    /// decided) is refused (ADR 0023): new inputs below them would be ignored as decided.
    async fn reset(&mut self, reader: &LedgerReader, ownership: &Ownership) -> Result<()> {
        self.rollouts.clear();
        self.emitted.clear();
        let stored = ownership.owned().iter().map(|(p, o)| (*p, o.next_offset));
        check_positions(
            &self.cfg.kafka,
            CONSUMER,
            &self.cfg.topic,
            &stored.collect(),
        )
        .await?;
        let markers = self.fence(ownership).await?;
        reader.assign(ownership.owned().keys().map(|p| Start {
            topic: 0,
            partition: *p,
            next: 0,
            end: None,
            fences: otaledger_ledger::fence::Fences::default(),
        }))?;
        // The watermarks only make the fold wait for a slow first fetch; without them the quiet
        // period decides alone, so a broker too slow to answer is no reason to stop.
        if let Err(e) = reader.aim_at_watermarks().await {
            tracing::warn!(error = %e, "no high watermarks to fold to; relying on the quiet period");
        }
        // Nothing is decided before the fold has read past this owner's own fences: whatever an
        // older owner appended before them is in the state, whatever it appends after them is
        // read by nobody.
        for (p, offset) in markers {
            reader.aim_past(0, p, offset);
        }
        self.metrics
            .rollouts
            .set(i64::try_from(self.rollouts.len()).unwrap_or(0));
        Ok(())
    }

    /// Appends this owner's fence (ADR 0039) for each partition held with a new epoch: to the
    /// partition itself, and to every partition of the commands topic, which its commands may
    /// reach. Returns the offset of each partition's own marker.
    async fn fence(&mut self, ownership: &Ownership) -> Result<BTreeMap<i32, i64>> {
        self.epochs
            .retain(|p, e| ownership.owned().get(p).is_some_and(|o| o.epoch == *e));
        let fresh: Vec<(i32, i64)> = ownership
            .owned()
            .iter()
            .filter(|(p, _)| !self.epochs.contains_key(p))
            .map(|(p, o)| (*p, o.epoch))
            .collect();
        if fresh.is_empty() {
            return Ok(BTreeMap::new());
        }
        let commands = self.producer.topics().device_commands.clone();
        let command_partitions = otaledger_ledger::kafka::wait_for_topic(
            &self.cfg.kafka,
            &commands,
            Duration::from_secs(60),
        )
        .await?;
        let mut own = Vec::with_capacity(fresh.len());
        let mut others = Vec::new();
        for (p, epoch) in &fresh {
            let writer = Writer::saga(*p, *epoch);
            own.push((*p, self.producer.fence(&self.cfg.topic, *p, &writer).await?));
            for q in 0..command_partitions {
                others.push(self.producer.fence(&commands, q, &writer).await?);
            }
        }
        let mut markers = BTreeMap::new();
        for (p, pending) in own {
            markers.insert(p, pending.acked().await?.offset);
        }
        for pending in others {
            pending.acked().await?;
        }
        tracing::info!(fences = ?fresh, "saga fences appended: an older owner's later records are read by nobody");
        self.epochs.extend(fresh);
        Ok(markers)
    }

    fn fold(&mut self, rollout_id: &str, partition: i32, event: &Event) {
        let entry = self
            .rollouts
            .entry(rollout_id.to_owned())
            .or_insert_with(|| Entry {
                rollout: Rollout::keyed(self.command_key.clone()),
                partition,
                started_at: None,
                next_join_check: Instant::now(),
            });
        if let Payload::WaveStarted(w) = &event.payload {
            if w.wave == 0 && entry.started_at.is_none() {
                entry.started_at = Some(event.meta.occurred_at);
            }
        }
        entry.rollout.apply_mut(&event.payload);
    }

    async fn store(
        &mut self,
        ownership: &mut Ownership,
        next: &BTreeMap<i32, i64>,
    ) -> Result<bool> {
        if next.is_empty() {
            return Ok(true);
        }
        let mut tx = self.pool.begin().await.db("beginning saga offsets")?;
        // The saga folds from offset 0 whenever it takes a partition, so it keeps no fences.
        if !ownership
            .store_offsets(&mut tx, next, &BTreeMap::new())
            .await?
        {
            tx.rollback().await.db("rolling back fenced offsets")?;
            return Ok(false);
        }
        tx.commit().await.db("committing saga offsets")?;
        for (p, n) in next {
            if let Some(o) = ownership.owned_mut().get_mut(p) {
                o.next_offset = *n;
            }
        }
        Ok(true)
    }

    /// Decides each input, appends the decisions and their commands, waits for Kafka.
    async fn decide_inputs(&mut self, records: &[Record]) -> Result<usize> {
        let now = now_micros();
        let mut out: Vec<(String, Vec<Payload>, String)> = Vec::new();
        let mut oldest: Option<Micros> = None;
        for r in records {
            let rollout_id = r.event.key().to_owned();
            let input = match &r.event.payload {
                Payload::PauseRequested(o) => Some(Input::Pause {
                    reason: format!("{}: {}", o.requested_by, o.reason),
                }),
                Payload::ResumeRequested(o) => Some(Input::Resume {
                    now,
                    reason: format!("{}: {}", o.requested_by, o.reason),
                }),
                Payload::AbortRequested(o) => Some(Input::Abort {
                    now,
                    reason: format!("{}: {}", o.requested_by, o.reason),
                }),
                Payload::DeviceReportRouted(rep) => Input::from_report(now, rep),
                // A request is folded already; its first wave starts at the next tick.
                _ => None,
            };
            let Some(input) = input else { continue };
            let Some(entry) = self.rollouts.get_mut(&rollout_id) else {
                continue;
            };
            if let Input::Result {
                device_id,
                command_id,
                ..
            } = &input
            {
                if !entry.rollout.issued(device_id, *command_id) {
                    self.metrics.unauthorized.inc();
                    unauthorized(&self.producer, &self.cfg.topic, r).await?;
                    continue;
                }
            }
            match entry.rollout.decide(input) {
                Ok(events) if !events.is_empty() => {
                    oldest = Some(oldest.map_or(r.event.meta.recorded_at, |o: Micros| {
                        o.min(r.event.meta.recorded_at)
                    }));
                    out.push((rollout_id, events, r.event.meta.trace_id.clone()));
                }
                Ok(_) => {}
                Err(e) => {
                    self.metrics.refused.inc();
                    tracing::warn!(rollout = %rollout_id, error = %e, "input refused by the decider");
                }
            }
        }
        // A verdict that opened the next wave starts it now rather than at the next tick.
        let due: Vec<String> = out
            .iter()
            .map(|(id, _, _)| id.clone())
            .filter(|id| {
                self.rollouts
                    .get(id)
                    .is_some_and(|e| e.rollout.wave_due(now).is_some())
            })
            .collect();
        for id in due {
            self.start_due_wave(&id, now, &mut out).await?;
        }
        let n = self.append(out).await?;
        if let Some(t) = oldest {
            #[allow(clippy::cast_precision_loss)]
            self.metrics
                .latency
                .observe((now_micros() - t).max(0) as f64 / 1e6);
        }
        Ok(n)
    }

    /// The clock input for every rollout, wave starts and joiners.
    /// Starts the rollout's awaited wave if it may start now, resolving its devices.
    async fn start_due_wave(
        &mut self,
        id: &str,
        now: Micros,
        out: &mut Vec<(String, Vec<Payload>, String)>,
    ) -> Result<()> {
        if self
            .rollouts
            .get(id)
            .is_none_or(|e| e.rollout.wave_due(now).is_none())
        {
            return Ok(());
        }
        let targets = self.resolve(id, None).await?;
        let Some(entry) = self.rollouts.get_mut(id) else {
            return Ok(());
        };
        match entry.rollout.decide(Input::Start { now, targets }) {
            Ok(events) => out.push((id.to_owned(), events, String::from("saga-start"))),
            // No targets yet (the fleet view may still be filling): retried at the next tick.
            Err(e) => tracing::debug!(rollout = %id, error = %e, "wave not started"),
        }
        Ok(())
    }

    async fn tick(&mut self) -> Result<()> {
        let now = now_micros();
        let mut out = Vec::new();
        let ids: Vec<String> = self
            .rollouts
            .iter()
            .filter(|(_, e)| e.rollout.request.is_some() && !e.rollout.is_over())
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            self.start_due_wave(&id, now, &mut out).await?;
            let Some(entry) = self.rollouts.get(&id) else {
                continue;
            };
            if entry.rollout.accepts_joiners() && Instant::now() >= entry.next_join_check {
                // Joiners are devices first seen after the first wave started; devices seen
                // before are resolved with the next wave.
                let since = entry.started_at.unwrap_or(now);
                let targets = self.resolve(&id, Some(since)).await?;
                let Some(entry) = self.rollouts.get_mut(&id) else {
                    continue;
                };
                entry.next_join_check = Instant::now() + self.cfg.join_every;
                let fresh: Vec<Target> = targets
                    .into_iter()
                    .filter(|t| !entry.rollout.devices.contains_key(&t.device_id))
                    .collect();
                if !fresh.is_empty() {
                    if let Ok(events) = entry.rollout.decide(Input::Join {
                        now,
                        targets: fresh,
                    }) {
                        out.push((id.clone(), events, String::from("saga-join")));
                    }
                }
            }
            let Some(entry) = self.rollouts.get_mut(&id) else {
                continue;
            };
            if let Ok(events) = entry.rollout.decide(Input::Tick { now }) {
                if !events.is_empty() {
                    out.push((id.clone(), events, String::from("saga-tick")));
                }
            }
        }
        self.append(out).await?;
        Ok(())
    }

    /// Devices matching the rollout's selector that do not run its release yet; with `since`,
    /// only devices first seen after it.
    async fn resolve(&mut self, rollout_id: &str, since: Option<Micros>) -> Result<Vec<Target>> {
        let Some(req) = self
            .rollouts
            .get(rollout_id)
            .and_then(|e| e.rollout.request.as_ref())
        else {
            return Ok(Vec::new());
        };
        let revs = req
            .catalogue
            .as_ref()
            .map_or(&[][..], |c| c.hardware_revs.as_slice());
        let rows =
            targets::select(&self.pool, &req.selector, &req.release.version, since, revs).await?;
        let downgrade = req.catalogue.as_ref().map(|c| c.allow_downgrade);
        let mut targets = Vec::with_capacity(rows.len());
        for c in rows {
            // A catalogue release goes only forward unless the rollout says otherwise.
            if downgrade.is_some_and(|allow| {
                !otaledger_domain::release::allowed(
                    &c.firmware_version,
                    &req.release.version,
                    allow,
                )
            }) {
                continue;
            }
            self.gateways.insert(c.device_id.clone(), c.gateway_id);
            self.models.insert(c.device_id.clone(), c.model);
            targets.push(Target {
                device_id: c.device_id,
                firmware_version: c.firmware_version,
            });
        }
        Ok(targets)
    }

    /// Appends decisions (to the rollout's stream) and the commands among them (to
    /// `ota.device-commands`), pipelined, and waits until Kafka has all of them.
    async fn append(&mut self, batches: Vec<(String, Vec<Payload>, String)>) -> Result<usize> {
        if batches.iter().all(|(_, e, _)| e.is_empty()) {
            return Ok(0);
        }
        let missing: Vec<String> = batches
            .iter()
            .flat_map(|(_, e, _)| e.iter())
            .filter_map(|p| match p {
                Payload::DeviceCommanded(c) if !self.gateways.contains_key(&c.device_id) => {
                    Some(c.device_id.clone())
                }
                _ => None,
            })
            .collect();
        if !missing.is_empty() {
            for (id, gw) in targets::gateways(&self.pool, &missing).await? {
                self.gateways.insert(id, gw);
            }
        }
        let now = now_micros();
        // Commands go first, and the decisions that record them only once Kafka has every
        // command: a saga killed between the two then decides again and sends the same command
        // ids (derived from rollout, device, kind and attempt), which the dispatcher and the
        // devices drop as repeats. The other order lost commands: the decision said "commanded"
        // and nothing was ever sent (seen when a kill landed between the two topics' writes).
        let mut decisions: Vec<(Event, Option<Writer>)> = Vec::new();
        let mut commands: Vec<(Payload, String, Option<Writer>)> = Vec::new();
        let mut n = 0;
        for (rollout_id, events, trace) in batches {
            let writer = self.writer(&rollout_id);
            for payload in events {
                if let Payload::WaveStarted(w) = &payload {
                    if let Some(e) = self.rollouts.get_mut(&rollout_id) {
                        if w.wave == 0 && e.started_at.is_none() {
                            e.started_at = Some(now);
                        }
                    }
                }
                let command = match &payload {
                    Payload::DeviceCommanded(c) => self.command_for(&rollout_id, c),
                    _ => None,
                };
                decisions.push((Event::at(payload, now, now, trace.clone()), writer.clone()));
                n += 1;
                if let Some(cmd) = command {
                    commands.push((cmd, trace.clone(), writer.clone()));
                }
            }
        }
        self.sign_statements(&mut commands).await?;
        let mut sent: Vec<Pending> = Vec::with_capacity(commands.len());
        for (cmd, trace, writer) in commands {
            // The command id is the command event's id: dispatcher and devices de-duplicate
            // on it.
            let cmd_event = Event::new(command_id(&cmd), cmd, now, now, trace);
            sent.push(
                self.producer
                    .enqueue_as(&cmd_event, writer.as_ref())
                    .await?,
            );
            self.metrics.commands.inc();
        }
        for p in sent {
            p.acked().await?;
        }
        let mut pending: Vec<Pending> = Vec::with_capacity(decisions.len());
        for (event, writer) in &decisions {
            self.emitted.insert(event.meta.event_id);
            pending.push(self.producer.enqueue_as(event, writer.as_ref()).await?);
        }
        for p in pending {
            p.acked().await?;
        }
        self.metrics.decisions.add(n as u64);
        Ok(n)
    }

    /// Adds the director's signed statement to each update command of a catalogue release
    /// (ADR 0038): this device (its model as hardware id), this target, the next number of the
    /// director's counter, valid until the command's deadline. One round trip numbers them all.
    async fn sign_statements(
        &mut self,
        commands: &mut [(Payload, String, Option<Writer>)],
    ) -> Result<()> {
        let mut wanted: Vec<usize> = Vec::new();
        for (i, (p, _, _)) in commands.iter().enumerate() {
            if let Payload::UpdateCommand(c) = p {
                let catalogue = self
                    .rollouts
                    .get(&c.rollout_id)
                    .and_then(|e| e.rollout.request.as_ref())
                    .is_some_and(|r| r.catalogue.is_some());
                if catalogue {
                    wanted.push(i);
                }
            }
        }
        let Some(key) = self.director.as_ref() else {
            return Ok(());
        };
        if wanted.is_empty() {
            return Ok(());
        }
        let missing: Vec<String> = wanted
            .iter()
            .filter_map(|i| match &commands[*i].0 {
                Payload::UpdateCommand(c) if !self.models.contains_key(&c.device_id) => {
                    Some(c.device_id.clone())
                }
                _ => None,
            })
            .collect();
        if !missing.is_empty() {
            for (id, model, _) in releases::hardware(&self.pool, &missing).await? {
                self.models.insert(id, model);
            }
        }
        let counters = releases::director_counters(&self.pool, wanted.len()).await?;
        for (i, counter) in wanted.into_iter().zip(counters) {
            let Payload::UpdateCommand(c) = &mut commands[i].0 else {
                continue;
            };
            let Some(release_id) = self
                .rollouts
                .get(&c.rollout_id)
                .and_then(|e| e.rollout.request.as_ref())
                .and_then(|r| r.catalogue.as_ref())
                .map(|cat| cat.release_id.clone())
            else {
                continue;
            };
            let statement = Statement {
                device_id: c.device_id.clone(),
                target: DirectedTarget {
                    name: release_id,
                    length: u64::try_from(c.release.size_bytes).unwrap_or(0),
                    sha256: c.release.sha256.clone(),
                    hardware_id: self.models.get(&c.device_id).cloned().unwrap_or_default(),
                },
                counter: u64::try_from(counter).unwrap_or(0),
                expires: c.deadline.div_euclid(1_000_000),
            };
            c.director = Some(statement.sign(key));
        }
        Ok(())
    }

    /// The stamp of a rollout's decisions and commands: its partition and the epoch this saga
    /// holds it with (ADR 0039).
    fn writer(&self, rollout_id: &str) -> Option<Writer> {
        let p = self.rollouts.get(rollout_id)?.partition;
        Some(Writer::saga(p, *self.epochs.get(&p)?))
    }

    fn command_for(&self, rollout_id: &str, c: &DeviceCommanded) -> Option<Payload> {
        let entry = self.rollouts.get(rollout_id)?;
        let req = entry.rollout.request.as_ref()?;
        let gateway_id = self.gateways.get(&c.device_id).cloned().flatten();
        Some(match c.kind {
            CommandKind::Update => Payload::UpdateCommand(UpdateCommand {
                command_id: c.command_id,
                device_id: c.device_id.clone(),
                rollout_id: rollout_id.to_owned(),
                gateway_id,
                release: req.release.clone(),
                deadline: c.deadline,
                director: None,
            }),
            CommandKind::Rollback => Payload::RollbackCommand(RollbackCommand {
                command_id: c.command_id,
                device_id: c.device_id.clone(),
                rollout_id: rollout_id.to_owned(),
                gateway_id,
                target_version: entry
                    .rollout
                    .devices
                    .get(&c.device_id)
                    .map(|d| d.from_version.clone())
                    .unwrap_or_default(),
            }),
            CommandKind::Cancel => Payload::CancelCommand(CancelCommand {
                command_id: c.command_id,
                device_id: c.device_id.clone(),
                rollout_id: rollout_id.to_owned(),
                gateway_id,
                reason: format!("rollout {rollout_id} was aborted"),
            }),
        })
    }
}

/// The saga's key for command ids (ADR 0027), kept in PostgreSQL where every saga instance,
/// and the same instance after a restart, finds it.
async fn command_key(pool: &PgPool) -> Result<CommandKey> {
    Ok(CommandKey::new(
        otaledger_ledger::db::stored_secret(pool, "saga_command_key").await?,
    ))
}

/// Dead-letters a routed install result whose command id was never issued to its device for
/// its rollout (a forged or misrouted report), as its event in JSON, with reason `unauthorized`.
async fn unauthorized(producer: &EventProducer, topic: &str, r: &Record) -> Result<()> {
    let rejection = Rejection::new(
        "unauthorized",
        "the install result names a command id never issued to that device for that rollout",
    );
    tracing::warn!(
        partition = r.partition,
        offset = r.offset,
        event_id = %r.event.meta.event_id,
        "an install result with a command id never issued to its device: dead-lettered"
    );
    let payload = serde_json::to_vec(&r.event.payload).unwrap_or_default();
    let origin = Origin {
        source: "kafka",
        channel: topic,
        partition: Some(r.partition),
        offset: Some(r.offset),
    };
    dead_letter_for(
        producer,
        CONSUMER,
        &origin,
        r.event.key().as_bytes(),
        &payload,
        &rejection,
    )
    .await?
    .acked()
    .await?;
    Ok(())
}

fn command_id(p: &Payload) -> Uuid {
    p.as_command().map_or_else(new_event_id, |c| c.command_id())
}

fn next_offsets(records: &[Record]) -> BTreeMap<i32, i64> {
    let mut next = BTreeMap::new();
    for r in records {
        let e = next.entry(r.partition).or_insert(r.offset + 1);
        *e = (*e).max(r.offset + 1);
    }
    next
}

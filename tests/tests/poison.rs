#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! No poison pill (ADR 0021): an event PostgreSQL refuses for its data is dead-lettered by the
//! consumer that cannot apply it, with the error and where it sits, and the consumer moves on;
//! a database that cannot be reached still stops it. One test per class: a data exception
//! (22xxx) in the folding projectors, integrity violations (23xxx) in a projection that does not
//! fold, and an error that is not about the data.

use std::collections::BTreeMap;
use std::time::Duration;

use otaledger_cli::components::{prepare, projector_runner_config, Component};
use otaledger_domain::events::{Health, Heartbeat};
use otaledger_domain::time::now_micros;
use otaledger_domain::{Event, Payload};
use otaledger_ledger::config::Config;
use otaledger_ledger::kafka::{Delivered, EventProducer};
use otaledger_ledger::metrics::REGISTRY;
use otaledger_ledger::runner::committed_offsets;
use otaledger_ledger::shutdown::Shutdown;
use otaledger_ledger::unappliable::data_fault;
use otaledger_ledger::{DbContext, Positioned, Projection, Runner};
use otaledger_tests::{
    config, drop_schema, eventually, fold_topic, otaledger_command, read_topic, records_when,
    registered, spawn_components, test_pool, unique, Record, Services,
};
use sqlx::{PgConnection, PgPool};

fn heartbeat(device: &str, firmware: &str, uptime_s: i64) -> Event {
    let now = now_micros();
    Event::at(
        Payload::Heartbeat(Heartbeat {
            device_id: device.to_owned(),
            firmware_version: firmware.to_owned(),
            gateway_id: None,
            health: Health {
                uptime_s,
                cpu_pct: 1.0,
                mem_pct: 2.0,
                temperature_c: 30.0,
                error_count: 0,
                signal_dbm: None,
            },
        }),
        now - 5,
        now,
        "poison",
    )
}

/// Per partition, the offset after the last of `delivered`.
fn ends(delivered: &[Delivered]) -> BTreeMap<i32, i64> {
    let mut ends = BTreeMap::new();
    for d in delivered {
        let end = ends.entry(d.partition).or_insert(0);
        *end = (*end).max(d.offset + 1);
    }
    ends
}

/// Waits until `consumer` committed offsets up to `ends` (offsets are stored with the rows).
async fn committed_up_to(pool: &PgPool, consumer: &str, topic: &str, ends: &BTreeMap<i32, i64>) {
    eventually(
        Duration::from_secs(90),
        &format!("{consumer} to commit up to {ends:?}"),
        || async move {
            let done = committed_offsets(pool, consumer, topic).await.ok()?;
            ends.iter()
                .all(|(p, e)| done.get(p).is_some_and(|d| d >= e))
                .then_some(())
        },
    )
    .await;
}

fn dead_letters_counted(consumer: &str) -> u64 {
    REGISTRY
        .counter(
            "otaledger_consumer_dead_letters_total",
            "Records a ledger consumer dead-lettered and went on without, by reason",
            &[("consumer", consumer), ("reason", "unappliable")],
        )
        .get()
}

/// The dead letter `consumer` wrote for the record at `at`, checked against the event.
fn assert_dead_letter(
    dead: &[Record],
    consumer: &str,
    at: &Delivered,
    event: &Event,
    sqlstate: &str,
) {
    let mine: Vec<&Record> = dead
        .iter()
        .filter(|r| {
            r.headers.get("dlq-consumer").map(String::as_str) == Some(consumer)
                && r.headers["dlq-offset"] == at.offset.to_string()
                && r.headers["dlq-partition"] == at.partition.to_string()
        })
        .collect();
    assert_eq!(
        mine.len(),
        1,
        "{consumer}'s dead letter of {at:?} in {dead:?}"
    );
    let r = mine[0];
    assert_eq!(r.headers["dlq-source"], "kafka");
    assert_eq!(r.headers["dlq-reason"], "unappliable");
    let error = &r.headers["dlq-error"];
    assert!(
        error.ends_with(&format!("(SQLSTATE {sqlstate})")),
        "{error}"
    );
    assert_eq!(r.key, event.key().as_bytes());
    let decoded = otaledger_schemas::decode(&r.payload).unwrap().event;
    assert_eq!(decoded.meta.event_id, event.meta.event_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_postgresql_refuses_is_dead_lettered_by_each_projector_and_the_rest_projected()
{
    let services = Services::get().await;
    let name = unique("poison_text");
    let cfg = config(&services, &name);
    prepare(&cfg).await.unwrap();
    let producer = EventProducer::new(&cfg.kafka).unwrap();
    // A backlog the projectors fold: d-2's heartbeat carries a NUL character (appended past
    // the entrances, which refuse it now), which PostgreSQL cannot store in text (22021). It
    // is d-2's last event: a later heartbeat folded over it would overwrite the value before
    // the fleet view writes it (ADR 0021).
    let mut backlog: Vec<Event> = (0..5).map(|i| registered(&format!("d-{i}"))).collect();
    backlog.extend([0, 1, 3, 4].map(|i| heartbeat(&format!("d-{i}"), "1.1.0", 10 + i)));
    let bad = heartbeat("d-2", "1.0\u{0}bad", 7);
    backlog.push(bad.clone());
    let delivered = producer.append_all(&backlog).await.unwrap();
    let bad_at = delivered[9];

    let (shutdown, handles) = spawn_components(&cfg, &[Component::Projector, Component::History]);
    let pool = test_pool(&cfg, 4).await;
    let topic = cfg.kafka.topics().device_events;
    for consumer in ["projector", "history"] {
        committed_up_to(&pool, consumer, &topic, &ends(&delivered)).await;
    }
    // They went on: what arrives next is projected too.
    let later = producer
        .append_all(&[heartbeat("d-0", "1.2.0", 99)])
        .await
        .unwrap();
    for consumer in ["projector", "history"] {
        committed_up_to(&pool, consumer, &topic, &ends(&later)).await;
    }
    assert!(
        handles.iter().all(|h| !h.is_finished()),
        "no projector stopped"
    );

    // Exactly the bad event is missing from the fleet view and the history.
    let records = read_topic(&cfg.kafka, &topic).await;
    let without_bad: Vec<Record> = records
        .into_iter()
        .filter(|r| (r.partition, r.offset) != (bad_at.partition, bad_at.offset))
        .collect();
    let want = fold_topic(&without_bad);
    let got = otaledger_projections::fleet::load_views(&pool)
        .await
        .unwrap();
    assert_eq!(got, want);
    for (device, want) in [
        ("d-2", vec![None]),
        ("d-0", vec![None, Some("1.1.0"), Some("1.2.0")]),
    ] {
        let history = otaledger_projections::history::history(&pool, device, None, 100)
            .await
            .unwrap();
        let versions: Vec<Option<&str>> = history.iter().map(|h| h.version.as_deref()).collect();
        assert_eq!(versions, want, "{device}: {history:?}");
    }

    let dead = records_when(
        &cfg.kafka,
        &cfg.kafka.topics().dead_letters,
        "2 dead letters",
        |d| d.len() >= 2,
    )
    .await;
    assert_eq!(dead.len(), 2, "{dead:?}");
    for consumer in ["projector", "history"] {
        assert_dead_letter(&dead, consumer, &bad_at, &bad, "22021");
        assert_eq!(dead_letters_counted(consumer), 1, "{consumer}");
    }
    let metrics = REGISTRY.render();
    assert!(
        metrics.contains(
            r#"otaledger_consumer_dead_letters_total{consumer="projector",reason="unappliable"} 1"#
        ),
        "{metrics}"
    );
    shutdown.trigger();
    for h in handles {
        h.await.unwrap();
    }

    // A rebuild leaves the same event out: verify finds no difference and lists the dead
    // letters (each once, although the rebuild met the event again).
    let out = otaledger_command(&cfg, &["verify"], "poison-verify")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .filter(|w: &Vec<&str>| w.get(1) == Some(&"unappliable"))
        .collect();
    assert_eq!(
        listed,
        [
            ["history", "unappliable", "1"],
            ["projector", "unappliable", "1"]
        ],
        "{stdout}"
    );
    pool.close().await;
    drop_schema(&services, &name).await;
}

/// Each heartbeat's uptime, one row per device, in a table whose CHECK refuses a negative
/// uptime: a projection that does not fold.
struct Uptimes;

const UPTIMES_DDL: &str = "CREATE TABLE IF NOT EXISTS uptimes (
    device_id text PRIMARY KEY, uptime_s bigint NOT NULL CHECK (uptime_s >= 0))";

impl Projection for Uptimes {
    async fn apply(
        &mut self,
        tx: &mut PgConnection,
        events: &[Positioned],
    ) -> otaledger_ledger::Result<()> {
        let (ids, uptimes): (Vec<String>, Vec<i64>) = events
            .iter()
            .filter_map(|p| match &p.event.payload {
                Payload::Heartbeat(h) => Some((h.device_id.clone(), h.health.uptime_s)),
                _ => None,
            })
            .unzip();
        sqlx::query("INSERT INTO uptimes SELECT * FROM unnest($1::text[], $2::bigint[])")
            .bind(ids)
            .bind(uptimes)
            .execute(&mut *tx)
            .await
            .db("inserting uptimes")?;
        Ok(())
    }
}

/// Terminates its own database connection, as a restarted PostgreSQL would.
struct LosesItsConnection;

impl Projection for LosesItsConnection {
    async fn apply(
        &mut self,
        tx: &mut PgConnection,
        _events: &[Positioned],
    ) -> otaledger_ledger::Result<()> {
        sqlx::query("SELECT pg_terminate_backend(pg_backend_pid())")
            .execute(&mut *tx)
            .await
            .db("losing the connection")?;
        Ok(())
    }
}

/// Runs `projection` as consumer `consumer` of the device events until `shutdown`.
fn spawn_runner<P: Projection + Sync + 'static>(
    cfg: &Config,
    pool: &PgPool,
    consumer: &str,
    projection: P,
    shutdown: &Shutdown,
) -> tokio::task::JoinHandle<otaledger_ledger::Result<()>> {
    let mut rc = projector_runner_config(cfg, &cfg.database.schema, consumer);
    rc.consumer = consumer.to_owned();
    let producer = EventProducer::new(&cfg.kafka).unwrap();
    let runner = Runner::new(rc, projection, producer, pool.clone());
    tokio::spawn(runner.run(shutdown.signal()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_that_violate_a_constraint_are_dead_lettered_one_by_one_and_the_rest_commits() {
    let services = Services::get().await;
    let name = unique("poison_constraint");
    let cfg = config(&services, &name);
    prepare(&cfg).await.unwrap();
    let producer = EventProducer::new(&cfg.kafka).unwrap();
    // Among twenty devices' heartbeats: two negative uptimes (23514) and a second row for
    // d-17 (23505), all in one batch.
    let mut events: Vec<Event> = (0..20)
        .map(|i| {
            let uptime = if i == 5 || i == 13 { -1 } else { i };
            heartbeat(&format!("d-{i:02}"), "1.0.0", uptime)
        })
        .collect();
    events.push(heartbeat("d-17", "1.0.0", 1000));
    let delivered = producer.append_all(&events).await.unwrap();

    let pool = test_pool(&cfg, 4).await;
    otaledger_ledger::db::create_if_missing(&pool, UPTIMES_DDL)
        .await
        .unwrap();
    let shutdown = Shutdown::new();
    let runner = spawn_runner(&cfg, &pool, "uptimes", Uptimes, &shutdown);
    let topic = cfg.kafka.topics().device_events;
    committed_up_to(&pool, "uptimes", &topic, &ends(&delivered)).await;
    let later = producer
        .append_all(&[heartbeat("d-20", "1.0.0", 20)])
        .await
        .unwrap();
    committed_up_to(&pool, "uptimes", &topic, &ends(&later)).await;
    assert!(!runner.is_finished(), "the runner went on");

    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT device_id, uptime_s FROM uptimes ORDER BY device_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    let want: Vec<(String, i64)> = (0..21)
        .filter(|i| *i != 5 && *i != 13)
        .map(|i| (format!("d-{i:02}"), i))
        .collect();
    assert_eq!(rows, want, "every other row, d-17's first");

    let dead = records_when(
        &cfg.kafka,
        &cfg.kafka.topics().dead_letters,
        "3 dead letters",
        |d| d.len() >= 3,
    )
    .await;
    assert_eq!(dead.len(), 3, "{dead:?}");
    for (i, sqlstate) in [(5, "23514"), (13, "23514"), (20, "23505")] {
        assert_dead_letter(&dead, "uptimes", &delivered[i], &events[i], sqlstate);
    }
    assert_eq!(dead_letters_counted("uptimes"), 3);
    shutdown.trigger();
    runner.await.unwrap().unwrap();
    pool.close().await;
    drop_schema(&services, &name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_database_connection_still_stops_the_runner_and_dead_letters_nothing() {
    let services = Services::get().await;
    let name = unique("poison_unavailable");
    let cfg = config(&services, &name);
    prepare(&cfg).await.unwrap();
    let producer = EventProducer::new(&cfg.kafka).unwrap();
    let delivered = producer
        .append_all(&[heartbeat("d-1", "1.0.0", 1)])
        .await
        .unwrap();
    assert_eq!(delivered.len(), 1);

    let pool = test_pool(&cfg, 4).await;
    let shutdown = Shutdown::new();
    let runner = spawn_runner(&cfg, &pool, "disconnected", LosesItsConnection, &shutdown);
    let stopped = tokio::time::timeout(Duration::from_secs(90), runner)
        .await
        .expect("the runner stops")
        .unwrap();
    let e = stopped.expect_err("a lost connection is an error");
    assert!(e.to_string().contains("losing the connection"), "{e}");
    assert_eq!(data_fault(&e), None, "{e}");
    let topic = cfg.kafka.topics().device_events;
    let done = committed_offsets(&pool, "disconnected", &topic)
        .await
        .unwrap();
    assert!(
        done.values().all(|o| *o == 0),
        "nothing committed: {done:?}"
    );
    assert!(read_topic(&cfg.kafka, &cfg.kafka.topics().dead_letters)
        .await
        .is_empty());
    assert_eq!(dead_letters_counted("disconnected"), 0);
    pool.close().await;
    drop_schema(&services, &name).await;
}

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! Ledger reset detection (ADR 0023): the projector applies events, stops; the test's
//! device-events topic is deleted and created again (what a restarted in-memory broker shows)
//! and fewer events are appended than were applied; the projector, started again, refuses the
//! ledger with an error that names the cause and the fix, stores nothing past what it had, and
//! the supervisor does not restart it.

use std::collections::BTreeMap;
use std::time::Duration;

use otaledger_cli::components::{ledger_reset, prepare, run, supervise, Component};
use otaledger_domain::Event;
use otaledger_ledger::config::Config;
use otaledger_ledger::kafka::{client_config, ensure_topics, EventProducer};
use otaledger_ledger::runner::committed_offsets;
use otaledger_ledger::shutdown::Shutdown;
use otaledger_tests::{config, drop_schema, eventually, registered, test_pool, unique, Services};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use sqlx::PgPool;

/// Whether the broker lists `topic`.
fn topic_listed(consumer: &BaseConsumer, topic: &str) -> bool {
    consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .is_ok_and(|md| {
            md.topics()
                .iter()
                .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        })
}

/// Runs the projector until it has applied `n` events of the one partition, then stops it; the
/// committed offsets it left.
async fn project_until(cfg: &Config, pool: &PgPool, n: i64) -> BTreeMap<i32, i64> {
    let topic = cfg.kafka.topics().device_events;
    let shutdown = Shutdown::new();
    let projector = tokio::spawn(run(Component::Projector, cfg.clone(), shutdown.signal()));
    let applied = BTreeMap::from([(0, n)]);
    eventually(
        Duration::from_secs(60),
        &format!("{n} events applied"),
        || async {
            (committed_offsets(pool, "projector", &topic).await.ok()? == applied).then_some(())
        },
    )
    .await;
    shutdown.trigger();
    projector.await.unwrap().unwrap();
    applied
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_recreated_topic_stops_the_projector_with_the_cause_and_the_fix() {
    let services = Services::get().await;
    let name = unique("reset");
    let mut cfg = config(&services, &name);
    cfg.kafka.partitions = 1;
    prepare(&cfg).await.unwrap();
    let topic = cfg.kafka.topics().device_events;
    let pool = test_pool(&cfg, 2).await;
    let producer = EventProducer::new(&cfg.kafka).unwrap();

    // The projector applies 30 events and stops.
    let before: Vec<Event> = (0..30).map(|i| registered(&format!("old-{i}"))).collect();
    producer.append_all(&before).await.unwrap();
    project_until(&cfg, &pool, 30).await;

    // Started again on the same ledger it goes on: tansu reports the end of a partition as the
    // newest batch's base offset plus one (here below 30), so the check reads to confirm.
    producer.append(&registered("old-30")).await.unwrap();
    let applied = project_until(&cfg, &pool, 31).await;

    // The broker forgets the topic; it is created again and holds fewer events than applied.
    let admin: AdminClient<DefaultClientContext> = client_config(&cfg.kafka).create().unwrap();
    let deleted = admin
        .delete_topics(&[topic.as_str()], &AdminOptions::new())
        .await
        .unwrap();
    assert!(deleted.iter().all(Result::is_ok), "{deleted:?}");
    let metadata: BaseConsumer = client_config(&cfg.kafka).create().unwrap();
    let metadata = std::sync::Arc::new(metadata);
    eventually(Duration::from_secs(30), "the topic gone", || {
        let (metadata, topic) = (metadata.clone(), topic.clone());
        async move {
            let listed = tokio::task::spawn_blocking(move || topic_listed(&metadata, &topic))
                .await
                .ok()?;
            (!listed).then_some(())
        }
    })
    .await;
    ensure_topics(&cfg.kafka).await.unwrap();
    let after: Vec<Event> = (0..3).map(|i| registered(&format!("new-{i}"))).collect();
    // A new producer: the old one's idempotence sequence belongs to the deleted partition.
    drop(producer);
    let producer = EventProducer::new(&cfg.kafka).unwrap();
    let delivered = producer.append_all(&after).await.unwrap();
    assert_eq!(delivered.iter().map(|d| d.offset).max(), Some(2));

    // Started again, it refuses the ledger instead of skipping offsets 0..31 as applied.
    let shutdown = Shutdown::new();
    let refused = tokio::time::timeout(
        Duration::from_secs(90),
        run(Component::Projector, cfg.clone(), shutdown.signal()),
    )
    .await
    .expect("the projector stops on its own")
    .expect_err("the projector refuses a ledger shorter than what it applied");
    let reset = ledger_reset(&refused).expect("a ledger reset");
    let message = reset.to_string();
    for part in [
        "fewer records than projector already applied",
        &format!("stored next offset 31 > end 3 on {topic}:0"),
        "the broker lost or recreated the topic",
        "`otaledger rebuild`",
        "refusing to skip records silently",
    ] {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
    assert_eq!(
        committed_offsets(&pool, "projector", &topic).await.unwrap(),
        applied,
        "nothing stored past what was applied"
    );
    let new_devices: i64 =
        sqlx::query_scalar("SELECT count(*) FROM devices WHERE device_id LIKE 'new-%'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(new_devices, 0);

    // Supervised, it is stopped for good rather than restarted in a loop: `supervise` returns
    // without a shutdown.
    let shutdown = Shutdown::new();
    tokio::time::timeout(
        Duration::from_secs(90),
        supervise(vec![Component::Projector], cfg.clone(), &shutdown),
    )
    .await
    .expect("the supervisor stops the projector instead of restarting it");

    pool.close().await;
    drop_schema(&services, &name).await;
}

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! The projector as real `otaledger run projector` processes: killed with SIGKILL mid-stream and
//! restarted, and two instances sharing partitions with one killed. Each time the table must
//! equal a plain in-memory fold of the whole topic: nothing lost, nothing applied twice.

use std::collections::BTreeMap;
use std::time::Duration;

use otaledger_cli::components::prepare;
use otaledger_domain::events::{
    DeviceRegistered, Health, Heartbeat, InstallOutcome, InstallResult,
};
use otaledger_domain::ids::new_trace_id;
use otaledger_domain::time::now_micros;
use otaledger_domain::{Event, Payload};
use otaledger_ledger::config::Config;
use otaledger_ledger::kafka::EventProducer;
use otaledger_tests::{
    config, eventually, fold_topic, migrated_test_pool, read_topic, spawn_process, test_pool,
    unique, Services,
};
use sqlx::PgPool;

fn event(payload: Payload) -> Event {
    let now = now_micros();
    Event::at(payload, now - 5, now, new_trace_id())
}

/// Round `round` of a fleet's history: registrations first, then heartbeats whose firmware
/// moves on every few rounds, and now and then an install result.
fn round(devices: usize, round: usize) -> Vec<Event> {
    (0..devices)
        .map(|i| {
            let device_id = format!("d-{i:05}");
            let fw = format!("1.{}.0", (round + i) / 7);
            if round == 0 {
                Payload::DeviceRegistered(DeviceRegistered {
                    device_id,
                    model: format!("model-{}", i % 3),
                    site: format!("site-{}", i % 5),
                    tags: vec!["t".into()],
                    firmware_version: fw,
                    gateway_id: None,
                    hardware_rev: None,
                })
            } else if (round + i).is_multiple_of(11) {
                Payload::InstallResult(InstallResult {
                    device_id,
                    rollout_id: None,
                    command_id: None,
                    outcome: InstallOutcome::Succeeded,
                    firmware_version: format!("2.{round}.0"),
                    error_code: None,
                    message: None,
                })
            } else {
                Payload::Heartbeat(Heartbeat {
                    device_id,
                    firmware_version: fw,
                    gateway_id: None,
                    health: Health {
                        uptime_s: round as i64,
                        cpu_pct: (i % 100) as f32,
                        mem_pct: 50.0,
                        temperature_c: 20.0 + (round % 10) as f32,
                        error_count: 0,
                        signal_dbm: round.is_multiple_of(2).then_some(-50 - (i % 40) as i32),
                    },
                })
            }
        })
        .map(event)
        .collect()
}

/// Appends `rounds` rounds, pausing between them so that projectors catch the stream mid-way.
/// Resolves to the next offset of every partition written (from the broker's acknowledgements:
/// tansu's high watermarks cannot be trusted).
fn produce(
    cfg: &Config,
    devices: usize,
    rounds: std::ops::Range<usize>,
) -> tokio::task::JoinHandle<BTreeMap<i32, i64>> {
    let producer = EventProducer::new(&cfg.kafka).unwrap();
    tokio::spawn(async move {
        let mut ends = BTreeMap::new();
        for r in rounds {
            for d in producer.append_all(&round(devices, r)).await.unwrap() {
                let end = ends.entry(d.partition).or_insert(0);
                *end = (*end).max(d.offset + 1);
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        ends
    })
}

async fn applied(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT COALESCE(sum(next_offset), 0)::bigint FROM consumer_offsets")
        .fetch_one(pool)
        .await
        .unwrap_or(0)
}

async fn caught_up(cfg: &Config, pool: &PgPool, ends: BTreeMap<i32, i64>) {
    eventually(
        Duration::from_secs(120),
        "the projector to reach the end of the topic",
        || {
            let ends = ends.clone();
            async move {
                let topic = cfg.kafka.topics().device_events;
                let done = otaledger_ledger::runner::committed_offsets(pool, "projector", &topic)
                    .await
                    .ok()?;
                let ok = ends.iter().all(|(p, end)| done.get(p) == Some(end));
                ok.then_some(())
            }
        },
    )
    .await;
}

async fn assert_table_equals_fold(cfg: &Config, pool: &PgPool) {
    let records = read_topic(&cfg.kafka, &cfg.kafka.topics().device_events).await;
    let want = fold_topic(&records);
    let got = otaledger_projections::fleet::load_views(pool)
        .await
        .unwrap();
    assert_eq!(got.len(), want.len(), "device count");
    for (id, w) in &want {
        assert_eq!(got.get(id), Some(w), "device {id}");
    }
    // The maintained counts agree with the rows.
    let counts: Vec<(String, String, i64)> =
        sqlx::query_as("SELECT dimension, value, devices FROM fleet_counts WHERE devices <> 0")
            .fetch_all(pool)
            .await
            .unwrap();
    let mut by_fw: BTreeMap<String, i64> = BTreeMap::new();
    for v in want.values() {
        *by_fw
            .entry(
                v.firmware_version
                    .clone()
                    .unwrap_or_else(|| "unknown".into()),
            )
            .or_default() += 1;
    }
    let got_fw: BTreeMap<String, i64> = counts
        .iter()
        .filter(|c| c.0 == "firmware")
        .map(|c| (c.1.clone(), c.2))
        .collect();
    assert_eq!(got_fw, by_fw, "firmware counts");
    let total = counts.iter().find(|c| c.0 == "total").map_or(0, |c| c.2);
    assert_eq!(total, want.len() as i64);
}

fn kill(child: &mut otaledger_tests::Process) {
    // SIGKILL: no chance to finish a batch or release anything.
    child.kill();
}

fn log_path(name: &str, what: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{name}-{what}.log"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projector_killed_mid_stream_and_restarted_loses_and_duplicates_nothing() {
    let services = Services::get().await;
    let name = unique("proj_kill");
    let cfg = config(&services, &name);
    prepare(&cfg).await.unwrap();
    let pool = test_pool(&cfg, 2).await;

    let producing = produce(&cfg, 500, 0..80);
    let mut first = spawn_process(&cfg, "projector", "p1", &log_path(&name, "p1"));
    eventually(
        Duration::from_secs(60),
        "the projector to apply a first batch",
        || {
            let pool = pool.clone();
            async move { (applied(&pool).await > 0).then_some(()) }
        },
    )
    .await;
    kill(&mut first);
    let at_kill = applied(&pool).await;
    assert!(!producing.is_finished(), "the kill must land mid-stream");

    let mut second = spawn_process(&cfg, "projector", "p2", &log_path(&name, "p2"));
    let ends = producing.await.unwrap();
    caught_up(&cfg, &pool, ends).await;
    assert!(applied(&pool).await > at_kill);
    assert_table_equals_fold(&cfg, &pool).await;
    kill(&mut second);
    otaledger_tests::drop_schema(&services, &cfg.database.schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_projectors_share_the_partitions_and_the_survivor_takes_over() {
    let services = Services::get().await;
    let name = unique("proj_pair");
    let cfg = config(&services, &name);
    prepare(&cfg).await.unwrap();
    let pool = test_pool(&cfg, 2).await;

    let mut a = spawn_process(&cfg, "projector", "a", &log_path(&name, "a"));
    let mut b = spawn_process(&cfg, "projector", "b", &log_path(&name, "b"));
    let producing = produce(&cfg, 400, 0..120);
    // Each owns half of the four partitions.
    eventually(Duration::from_secs(60), "both projectors to own two partitions each", || {
        let pool = pool.clone();
        async move {
            let owners: Vec<(String, i64)> =
                sqlx::query_as("SELECT owner, count(*) FROM consumer_offsets WHERE next_offset > 0 GROUP BY owner ORDER BY owner")
                    .fetch_all(&pool)
                    .await
                    .ok()?;
            (owners == vec![("a".to_owned(), 2), ("b".to_owned(), 2)]).then_some(())
        }
    })
    .await;
    let epochs_before: BTreeMap<i32, i64> =
        sqlx::query_as("SELECT partition, epoch FROM consumer_offsets WHERE owner = 'a'")
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    kill(&mut a);
    assert!(!producing.is_finished(), "the kill must land mid-stream");
    let ends = producing.await.unwrap();
    caught_up(&cfg, &pool, ends).await;
    let after: Vec<(i32, String, i64)> =
        sqlx::query_as("SELECT partition, owner, epoch FROM consumer_offsets ORDER BY partition")
            .fetch_all(&pool)
            .await
            .unwrap();
    for (p, owner, epoch) in &after {
        assert_eq!(owner, "b", "partition {p} taken over");
        if let Some(before) = epochs_before.get(p) {
            assert!(
                epoch > before,
                "partition {p}: a takeover bumps the epoch that fences the old owner"
            );
        }
    }
    assert_table_equals_fold(&cfg, &pool).await;
    kill(&mut b);
    otaledger_tests::drop_schema(&services, &cfg.database.schema).await;
}

/// The projector's cache of each device's firmware/model/site is only sound while this instance
/// owns the device: another owner's writes make it stale (shown first, on device `x`), and
/// clearing it on an ownership change, as the runner does, keeps the counts exact (device `y`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dimension_cache_must_be_cleared_when_ownership_changes() {
    use otaledger_domain::device_view::{DeviceView, Position};
    use otaledger_projections::projector::{merge_patches, DimensionCache};

    async fn apply(pool: &PgPool, device: &str, fw: &str, offset: i64, cache: &mut DimensionCache) {
        let e = event(Payload::DeviceRegistered(DeviceRegistered {
            device_id: device.into(),
            model: "m".into(),
            site: "s".into(),
            tags: vec![],
            firmware_version: fw.into(),
            gateway_id: None,
            hardware_rev: None,
        }));
        let v = DeviceView::apply(
            None,
            &e,
            Position {
                partition: 0,
                offset,
            },
        )
        .unwrap();
        let mut tx = pool.begin().await.unwrap();
        merge_patches(&mut tx, BTreeMap::from([(device.to_owned(), v)]), cache)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        cache.commit();
    }
    async fn firmware_counts(pool: &PgPool) -> Vec<(String, i64)> {
        sqlx::query_as("SELECT value, devices FROM fleet_counts WHERE dimension = 'firmware' AND devices <> 0 ORDER BY value")
            .fetch_all(pool)
            .await
            .unwrap()
    }

    let services = Services::get().await;
    let cfg = config(&services, &unique("proj_cache"));
    let pool = migrated_test_pool(&cfg, 2).await;
    let (mut a, mut b) = (DimensionCache::new(), DimensionCache::new());

    // Instance A owns x, B takes it over and writes, A gets it back without forgetting: wrong.
    apply(&pool, "x", "1.0", 1, &mut a).await;
    apply(&pool, "x", "2.0", 2, &mut b).await;
    apply(&pool, "x", "3.0", 3, &mut a).await;
    assert_ne!(
        firmware_counts(&pool).await,
        vec![("3.0".to_owned(), 1)],
        "a stale cache miscounts"
    );

    // The same history on y, with A clearing its cache when ownership changes: exact.
    sqlx::query("DELETE FROM fleet_counts")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM devices")
        .execute(&pool)
        .await
        .unwrap();
    let (mut a, mut b) = (DimensionCache::new(), DimensionCache::new());
    apply(&pool, "y", "1.0", 1, &mut a).await;
    a.clear();
    apply(&pool, "y", "2.0", 2, &mut b).await;
    a.clear();
    apply(&pool, "y", "3.0", 3, &mut a).await;
    assert_eq!(firmware_counts(&pool).await, vec![("3.0".to_owned(), 1)]);
    otaledger_tests::drop_schema(&services, &cfg.database.schema).await;
}

/// A projector that is behind gathers full batches into one transaction. When the stream ends
/// right after a full batch, the pause must commit what was gathered: waiting for the fold
/// window (here an hour) would leave the last events unapplied (a rebuild seemed to hang).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gathering_projector_commits_when_the_stream_pauses_after_a_full_batch() {
    let services = Services::get().await;
    let name = unique("proj_pause");
    let mut cfg = config(&services, &name);
    gather_for_an_hour(&mut cfg);
    cfg.projector.fold_max_events = 1_000_000;
    prepare(&cfg).await.unwrap();
    // 200 events, all in Kafka before the projector starts: it reads four full batches.
    let ends = produce(&cfg, 100, 0..2).await.unwrap();
    assert_eq!(ends.values().sum::<i64>(), 200);
    project_once(&cfg, &ends).await;
}

/// Batches of 50, gathered whatever their age into live windows that only their event and row
/// limits end, and no rebalancing: each test sets the limit it is about.
fn gather_for_an_hour(cfg: &mut Config) {
    cfg.projector.batch_max = 50;
    cfg.projector.fold_max_rows = 1_000_000;
    cfg.projector.fold_max_wait_ms = 3_600_000;
    cfg.projector.fold_when_behind_ms = 0;
    cfg.projector.rebalance_ms = 3_600_000;
}

/// Transactions the projector has committed in this test process.
fn projector_transactions() -> u64 {
    otaledger_ledger::metrics::REGISTRY
        .histogram(
            "otaledger_consumer_batch_seconds",
            "",
            &[("consumer", "projector")],
        )
        .count()
}

/// Projects the whole topic into a fresh schema; resolves to the transactions it took.
async fn project_once(cfg: &Config, ends: &BTreeMap<i32, i64>) -> u64 {
    prepare(cfg).await.unwrap();
    let pool = test_pool(cfg, 2).await;
    let before = projector_transactions();
    let (shutdown, handles) =
        otaledger_tests::spawn_components(cfg, &[otaledger_cli::components::Component::Projector]);
    caught_up(cfg, &pool, ends.clone()).await;
    assert_table_equals_fold(cfg, &pool).await;
    shutdown.trigger();
    for h in handles {
        h.await.unwrap();
    }
    pool.close().await;
    projector_transactions() - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projector_far_behind_folds_its_backlog_in_deep_windows() {
    let services = Services::get().await;
    let name = unique("proj_deep");
    let mut cfg = config(&services, &name);
    gather_for_an_hour(&mut cfg);
    // Live windows of one round (100 events), gathered whenever batches arrive full.
    cfg.projector.fold_max_events = 100;
    cfg.projector.deep_fold_max_events = 1_000_000;
    cfg.projector.deep_fold_max_rows = 1_000_000;
    cfg.projector.deep_fold_max_wait_ms = 3_600_000;
    cfg.projector.deep_fold_when_behind_ms = 1000;
    prepare(&cfg).await.unwrap();
    let ends = produce(&cfg, 100, 0..10).await.unwrap();
    assert_eq!(ends.values().sum::<i64>(), 1000);
    // Older than the deep threshold before any projector reads them.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let deep = project_once(&cfg, &ends).await;
    cfg.projector.deep_fold_max_events = 0;
    cfg.database.schema = format!("{}_live", cfg.database.schema);
    let live = project_once(&cfg, &ends).await;
    assert!(
        live >= 10,
        "live windows of 100 events need at least 10 transactions for 1,000 events, took {live}"
    );
    assert!(
        deep <= 2,
        "the backlog fits one deep window, but it took {deep} transactions (live: {live})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projector_process_serves_its_metrics() {
    let services = Services::get().await;
    let name = unique("proj_metrics");
    let mut cfg = config(&services, &name);
    cfg.http.metrics_listen = otaledger_bench::process::free_loopback_addr().unwrap();
    let addr = cfg.http.metrics_listen.clone();
    prepare(&cfg).await.unwrap();
    let pool = test_pool(&cfg, 2).await;
    let mut child = spawn_process(&cfg, "projector", "p", &log_path(&name, "p"));
    let ends = produce(&cfg, 50, 0..2).await.unwrap();
    caught_up(&cfg, &pool, ends).await;
    let line = "otaledger_consumer_events_total{consumer=\"projector\"} 100";
    eventually(
        Duration::from_secs(30),
        "the projector's /metrics to count its 100 events",
        || {
            let addr = addr.clone();
            async move {
                otaledger_bench::process::http_get(&addr, "/metrics")
                    .await
                    .filter(|body| body.lines().any(|l| l == line))
                    .map(drop)
            }
        },
    )
    .await;
    assert!(otaledger_bench::process::http_get(&addr, "/healthz")
        .await
        .is_some());
    kill(&mut child);
    otaledger_tests::drop_schema(&services, &cfg.database.schema).await;
}

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! Recovery from broker restarts (issue 17, item 2), for real: `otaledger up` runs as a process
//! against a Kafka-API broker of the test's own (tansu, durable storage on SQLite). The broker
//! is killed (SIGKILL) and started again on the same storage, at once and after an outage
//! longer than the producer's delivery timeout, then frozen (SIGSTOP) for longer than that
//! timeout with a record in flight. What is sent while it is away is not acknowledged (503,
//! the device sends again); after each fault, without otaledger restarted, HTTP ingest answers
//! 202 again, the projector folds the new reports into the fleet view, and `/readyz` is ready.
//! (Before producers were replaced after a timed-out record, the longer outage and the freeze
//! each ended with every record refused for good: librdkafka's epoch bump panicked tansu's
//! SQLite storage, lite.rs:503.)

use std::time::Duration;

use otaledger_cli::components::prepare;
use otaledger_domain::access::Role;
use otaledger_ledger::kafka::EventProducer;
use otaledger_tests::broker::Broker;
use otaledger_tests::{
    config, eventually, issue_token, migrated_test_pool, spawn_command, unique, Services,
};

/// The status of a heartbeat of `device` with `uptime` sent over HTTP with `token`.
fn send_heartbeat(api: &str, device: &str, token: &str, uptime: i64) -> String {
    let body = format!(
        r#"{{"firmware_version":"1.0.0","uptime_s":{uptime},"cpu_pct":1,"mem_pct":1,"temperature_c":20}}"#
    );
    let auth = format!("authorization: Bearer {token}");
    let url = format!("http://{api}/v1/devices/{device}/heartbeats");
    let headers = ["-H", &auth, "-H", "content-type: application/json"];
    otaledger_tests::curl_status(20, &[&headers[..], &["-d", &body, &url]].concat()).1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_and_projections_resume_by_themselves_after_the_broker_restarts() {
    let name = unique("broker_restart");
    let dir = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    let mut broker = Broker::new(dir.clone(), "sqlite://ledger.db");
    broker.start();
    let port = broker.port;
    broker.ready().await;

    let mut cfg = config(&Services::get().await, &name);
    cfg.kafka.brokers = format!("127.0.0.1:{port}");
    cfg.kafka.partitions = 2;
    // Records not delivered within 5 s fail (their senders answer 503 or do not acknowledge).
    cfg.kafka.message_timeout_ms = 5_000;
    let api = format!("127.0.0.1:{}", otaledger_tests::free_port());
    cfg.http.listen = api.clone();
    prepare(&cfg).await.unwrap();
    let pool = migrated_test_pool(&cfg, 2).await;
    let token = {
        let producer = EventProducer::new(&cfg.kafka).unwrap();
        issue_token(&pool, &producer, "br-dev", Role::Device).await
    };
    let _stack = otaledger_tests::Reaped {
        child: spawn_command(&cfg, &["up"], "broker-restart", &dir.join("otaledger.log")),
        grace: Duration::from_secs(5),
    };

    // Sends heartbeats until one is answered 202 and the fleet view shows its uptime.
    let through = |uptime: i64, what: &'static str| {
        let (api, token, pool) = (api.clone(), token.clone(), pool.clone());
        async move {
            let api2 = api.clone();
            eventually(Duration::from_secs(90), what, || {
                let (api, token) = (api2.clone(), token.clone());
                async move {
                    let status = tokio::task::spawn_blocking(move || {
                        send_heartbeat(&api, "br-dev", &token, uptime)
                    })
                    .await
                    .unwrap();
                    if status != "202" {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    (status == "202").then_some(())
                }
            })
            .await;
            eventually(Duration::from_secs(60), "the projector folding it", || {
                let pool = pool.clone();
                async move {
                    let seen: Option<i64> = sqlx::query_scalar(
                        "SELECT uptime_s FROM devices WHERE device_id = 'br-dev'",
                    )
                    .fetch_optional(&pool)
                    .await
                    .ok()
                    .flatten();
                    (seen == Some(uptime)).then_some(())
                }
            })
            .await;
        }
    };
    through(1, "ingest before the restart").await;

    // Killed and started again on the same storage.
    broker.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    broker.start();
    through(2, "ingest after the broker was killed and restarted").await;

    // Down for longer than the delivery timeout, with a heartbeat sent meanwhile: it is not
    // acknowledged (503), and ingest resumes once the broker is back.
    broker.kill();
    let (api2, token2) = (api.clone(), token.clone());
    let during = tokio::task::spawn_blocking(move || send_heartbeat(&api2, "br-dev", &token2, 99))
        .await
        .unwrap();
    assert_ne!(
        during, "202",
        "a heartbeat was acknowledged while the broker was down"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    broker.start();
    through(3, "ingest after a longer outage").await;

    // Frozen (SIGSTOP) for longer than the delivery timeout, with a heartbeat in flight.
    broker.signal("-STOP");
    let (api2, token2) = (api.clone(), token.clone());
    let frozen = tokio::task::spawn_blocking(move || send_heartbeat(&api2, "br-dev", &token2, 98));
    tokio::time::sleep(Duration::from_secs(8)).await;
    broker.signal("-CONT");
    assert_ne!(
        frozen.await.unwrap(),
        "202",
        "acknowledged while the broker was frozen"
    );
    through(4, "ingest after the broker was frozen").await;

    let addr = api.clone();
    eventually(Duration::from_secs(30), "/readyz ready", || {
        let addr = addr.clone();
        async move { otaledger_bench::process::http_get(&addr, "/readyz").await }
    })
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

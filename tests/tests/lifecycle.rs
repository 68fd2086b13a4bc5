#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! `otaledger up` as an operator runs it: it serves the API and stops cleanly on SIGTERM.

use std::time::Duration;

use otaledger_tests::{config, eventually, spawn_command, unique, Services};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_serves_and_stops_gracefully_on_sigterm() {
    let services = Services::get().await;
    let name = unique("lifecycle");
    let mut cfg = config(&services, &name);
    cfg.http.listen = otaledger_bench::process::free_loopback_addr().unwrap();
    let log = std::env::temp_dir().join(format!("{name}-up.log"));
    let mut child = spawn_command(&cfg, &["up"], "up", &log);

    // Every component comes up: the API answers ready, the projector owns its partitions.
    let ready = eventually(Duration::from_secs(60), "the API to be ready", || {
        otaledger_bench::process::http_get(&cfg.http.listen, "/readyz")
    })
    .await;
    assert!(ready.contains("\"ready\":true"), "{ready}");
    eventually(
        Duration::from_secs(30),
        "the projector and bridges to start",
        || {
            let log = log.clone();
            async move {
                let text = std::fs::read_to_string(&log).ok()?;
                let all = [
                    "partition ownership changed",
                    "MQTT bridge connected",
                    "AMQP bridge consuming",
                ]
                .iter()
                .all(|m| text.contains(m));
                all.then_some(())
            }
        },
    )
    .await;

    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = eventually(
        Duration::from_secs(30),
        "otaledger to exit after SIGTERM",
        || {
            let s = child.try_wait().unwrap();
            async move { s }
        },
    )
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "exit status {status:?}\n{text}");
    for stopped in [
        "consumer stopped",
        "MQTT bridge stopped",
        "AMQP bridge stopped",
    ] {
        assert!(text.contains(stopped), "missing {stopped:?} in\n{text}");
    }
    otaledger_tests::drop_schema(&services, &cfg.database.schema).await;
}

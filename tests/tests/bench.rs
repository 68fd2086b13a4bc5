#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! `otaledger bench` runs every scenario against the real services at a tiny size and reports
//! each figure (never asserting speed: figures are for people, not for pass/fail).

use otaledger_bench::{run, BenchArgs, Scenario};
use otaledger_tests::{config, unique, Services};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_all_reports_every_figure_and_writes_json() {
    let services = Services::get().await;
    let cfg = config(&services, &unique("bench"));
    let out = std::env::temp_dir().join(format!("{}.json", unique("bench_report")));
    let args = BenchArgs {
        scenario: Scenario::All,
        events: 2_000,
        devices: 150,
        naive_events: 300,
        lag_duration: std::time::Duration::from_secs(2),
        lag_rate: None,
        api_devices: 2_000,
        api_rate: 200.0,
        api_duration: std::time::Duration::from_secs(1),
        rollout_devices: 300,
        mqtt_devices: 200,
        mqtt_tls: std::env::var("OTALEDGER_TEST_TLS_CA").ok().map(|ca| {
            otaledger_bench::mqtt_ingest::TlsListener {
                port: std::env::var("OTALEDGER_TEST_MQTT_TLS")
                    .ok()
                    .and_then(|t| t.rsplit_once(':').and_then(|(_, p)| p.parse().ok()))
                    .unwrap_or(8883),
                ca,
            }
        }),
        out: out.clone(),
        components: otaledger_tests::binary(),
        download: otaledger_bench::DownloadSize {
            artifact_bytes: 1 << 20,
            run: std::time::Duration::from_millis(300),
            fleet_devices: 40,
            gateways: 4,
            release_bytes: 100_000,
        },
    };
    let report = run(&cfg, &args).await.unwrap();
    let names: Vec<&str> = report.figures.iter().map(|f| f.name).collect();
    for want in [
        "Avro encode (1 core)",
        "raw produce",
        "raw consume",
        "postgres COPY",
        "otaledger producer (Avro, acks=all)",
        "projector catch-up",
        "projector catch-up, far behind",
        "2 instances catch-up, far behind",
        "naive projector (1 event per tx)",
        "occurred-at to commit p99",
        "raw produce to consume p99",
        "devices/{id} p99",
        "summary p99",
        "rebuild into a shadow schema",
        "commands dispatched",
        "commands dispatched while waiting",
        "dispatcher alone, commands queued",
        "commands over MQTT",
        "commands over AMQP",
        "request to completion",
        "saga decision p99",
        "peak RSS, projector",
        "peak RSS, dispatcher",
        "peak RSS, saga",
        "MQTT ingest, plain",
        "MQTT ingest, TLS",
        "artifact download (API)",
        "origin bytes, fleet via gateways",
        "gateway cache hits",
    ] {
        let f = report
            .figures
            .iter()
            .find(|f| f.name == want)
            .unwrap_or_else(|| panic!("{want} missing from {names:?}"));
        assert!(f.value > 0.0, "{want}");
    }
    let errors: f64 = report
        .figures
        .iter()
        .filter(|f| f.name.ends_with("errors"))
        .map(|f| f.value)
        .sum();
    assert_eq!(errors, 0.0, "every API request of the load answered 200");
    // Each gateway fetched the release once; its other devices were served from its cache.
    let figure = |name: &str| {
        report
            .figures
            .iter()
            .find(|f| f.name == name)
            .unwrap()
            .value
    };
    assert_eq!(
        figure("origin bytes, fleet via gateways"),
        0.4,
        "4 x 100 kB"
    );
    assert_eq!(figure("gateway cache hits"), 36.0);
    // Each figure is printed against the machine's own limit.
    for (name, against) in [
        ("otaledger producer (Avro, acks=all)", "raw produce"),
        ("occurred-at to commit p99", "raw produce to consume p99"),
    ] {
        let figure = report.figures.iter().find(|f| f.name == name).unwrap();
        assert_eq!(figure.against, Some(against), "{name}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(json["events"], 2000);
    assert_eq!(
        json["figures"].as_array().unwrap().len(),
        report.figures.len()
    );
}

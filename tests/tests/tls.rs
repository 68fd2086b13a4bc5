#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! TLS (ADR 0028), tried with clients no one here wrote: the API given a certificate and key
//! serves HTTPS only (curl verifies it against the CA; a client that does not trust the CA, or
//! speaks plain HTTP, gets nothing); Mosquitto's TLS listener that scripts/services.sh adds
//! admits a login over TLS and nothing in plain text.

use std::process::Command;
use std::time::Duration;

use otaledger_cli::components::{prepare, run, Component};
use otaledger_ledger::shutdown::Shutdown;
use otaledger_tests::{
    certificates, config, curl_status, eventually, tansu_binary, unique, Reaped, Services,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_serves_https_only_with_its_certificate() {
    let services = Services::get().await;
    let name = unique("tls_api");
    let mut cfg = config(&services, &name);
    prepare(&cfg).await.unwrap();
    let (ca, cert, key) = certificates(&std::env::temp_dir().join(&name));
    let port = otaledger_tests::free_port();
    cfg.http.listen = format!("127.0.0.1:{port}");
    cfg.http.tls_cert = cert.display().to_string();
    cfg.http.tls_key = key.display().to_string();
    let shutdown = Shutdown::new();
    let api = tokio::spawn(run(Component::Api, cfg.clone(), shutdown.signal()));
    let ca = ca.display().to_string();
    let https = |path: &str| format!("https://localhost:{port}{path}");
    let (code, status) = eventually(Duration::from_secs(30), "the API over HTTPS", || {
        let (ca, url) = (ca.clone(), https("/healthz"));
        async move {
            let r = tokio::task::spawn_blocking(move || curl_status(5, &["--cacert", &ca, &url]))
                .await
                .ok()?;
            (r.0 == 0).then_some(r)
        }
    })
    .await;
    assert_eq!((code, status.as_str()), (0, "200"));
    let blocking = |args: Vec<String>| async move {
        tokio::task::spawn_blocking(move || {
            curl_status(5, &args.iter().map(String::as_str).collect::<Vec<_>>())
        })
        .await
        .unwrap()
    };
    // The same router behind TLS: a /v1 route still wants a token.
    let (_, status) = blocking(vec![
        "--cacert".into(),
        ca.clone(),
        https("/v1/fleet/summary"),
    ])
    .await;
    assert_eq!(status, "401");
    // By IP address too (the certificate names 127.0.0.1).
    let (code, status) = blocking(vec![
        "--cacert".into(),
        ca.clone(),
        format!("https://127.0.0.1:{port}/healthz"),
    ])
    .await;
    assert_eq!((code, status.as_str()), (0, "200"));
    // A client that does not trust the CA refuses the server (curl 60: certificate problem).
    let (code, _) = blocking(vec![https("/healthz")]).await;
    assert_eq!(code, 60, "a certificate no trusted CA signed was accepted");
    // Plain HTTP to the TLS port gets no answer.
    let (code, status) = blocking(vec![format!("http://127.0.0.1:{port}/healthz")]).await;
    assert_ne!(code, 0, "plain HTTP was answered ({status})");
    shutdown.trigger();
    api.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_refuses_to_start_with_half_a_tls_configuration() {
    let services = Services::get().await;
    let mut cfg = config(&services, &unique("tls_half"));
    prepare(&cfg).await.unwrap();
    cfg.http.tls_cert = "/nonexistent/cert.pem".into();
    let err = run(Component::Api, cfg.clone(), Shutdown::new().signal())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("both http.tls_cert and http.tls_key"),
        "{err}"
    );
    cfg.http.tls_key = "/nonexistent/key.pem".into();
    let err = run(Component::Api, cfg, Shutdown::new().signal())
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("/nonexistent/cert.pem"),
        "{err:#}"
    );
}

#[test]
fn mosquitto_admits_logins_over_tls_and_nothing_in_plain_text_on_its_tls_listener() {
    let (Ok(tls), Ok(ca), Ok(user), Ok(password)) = (
        std::env::var("OTALEDGER_TEST_MQTT_TLS"),
        std::env::var("OTALEDGER_TEST_TLS_CA"),
        std::env::var("OTALEDGER_TEST_MQTT_USERNAME"),
        std::env::var("OTALEDGER_TEST_MQTT_PASSWORD"),
    ) else {
        panic!("set OTALEDGER_TEST_MQTT_TLS, OTALEDGER_TEST_TLS_CA and the MQTT login (scripts/test.sh does)");
    };
    let (host, port) = tls.rsplit_once(':').unwrap();
    let host = if host == "127.0.0.1" {
        "localhost"
    } else {
        host
    };
    let publish = |extra: &[&str]| {
        Command::new("mosquitto_pub")
            .args([
                "-h",
                host,
                "-p",
                port,
                "-t",
                &format!("{}/tls/check", unique("tls")),
                "-m",
                "x",
                "-q",
                "1",
            ])
            .args(extra)
            .output()
            .unwrap()
            .status
            .success()
    };
    assert!(
        publish(&["--cafile", &ca, "-u", &user, "-P", &password]),
        "the service login over TLS"
    );
    assert!(
        !publish(&["-u", &user, "-P", &password]),
        "plain text on the TLS listener"
    );
    assert!(!publish(&["--cafile", &ca]), "an anonymous client over TLS");
    assert!(
        !publish(&["--cafile", &ca, "-u", &user, "-P", "wrong"]),
        "a wrong password over TLS"
    );
}

/// The components and the simulator over Mosquitto's TLS listener (`mqtt.tls_ca`): devices
/// report over TLS, the bridge reads them over TLS, and the fleet view holds them; with a CA
/// that did not sign the broker's certificate nothing connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_bridge_and_simulated_devices_talk_mqtt_over_tls() {
    use otaledger_simulator::{self as simulator, SimConfig};
    use otaledger_tests::rollouts::wait_fleet;

    let (Ok(tls), Ok(ca)) = (
        std::env::var("OTALEDGER_TEST_MQTT_TLS"),
        std::env::var("OTALEDGER_TEST_TLS_CA"),
    ) else {
        panic!("set OTALEDGER_TEST_MQTT_TLS and OTALEDGER_TEST_TLS_CA (scripts/test.sh does)");
    };
    let name = unique("mqtt_tls");
    let mut cfg = config(&Services::get().await, &name);
    let (host, port) = tls.rsplit_once(':').unwrap();
    cfg.mqtt.host = host.to_owned();
    cfg.mqtt.port = port.parse().unwrap();
    cfg.mqtt.tls_ca = Some(ca);
    prepare(&cfg).await.unwrap();
    let app = otaledger_tests::api_app(&cfg).await;
    let (stop, _) =
        otaledger_tests::spawn_components(&cfg, &[Component::MqttBridge, Component::Projector]);
    otaledger_tests::mqtt_bridge_subscribed(&cfg).await;
    let sim = SimConfig {
        devices: 20,
        rate: 200.0,
        gateway_share: 0.0,
        id_prefix: format!("{name}-"),
        rounds: Some(1),
        mqtt_connections: 2,
        mqtt: cfg.mqtt.clone(),
        amqp: cfg.amqp.clone(),
        ..SimConfig::default()
    };
    let stats = simulator::run(sim.clone(), Shutdown::new().signal())
        .await
        .unwrap();
    assert_eq!(
        stats.mqtt_messages, 40,
        "20 registrations and 20 heartbeats"
    );
    wait_fleet(&app, 20).await;

    // A CA that did not sign the broker's certificate: the device cannot connect.
    let dir = std::env::temp_dir().join(unique("other_ca"));
    let (other_ca, _, _) = certificates(&dir);
    let mut untrusting = sim;
    untrusting.mqtt.tls_ca = Some(other_ca.display().to_string());
    untrusting.id_prefix = format!("{name}-untrusted-");
    let refused = tokio::time::timeout(
        Duration::from_secs(20),
        simulator::run(untrusting, Shutdown::new().signal()),
    )
    .await;
    assert!(
        !matches!(refused, Ok(Ok(_))),
        "a device that does not trust the broker's CA reported anyway"
    );
    stop.trigger();
    let _ = std::fs::remove_dir_all(&dir);
}

/// PostgreSQL over TLS when the URL asks (`sslmode`, `sslrootcert`; ADR 0028): the session is
/// encrypted, and a server whose certificate the named CA did not sign is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_use_tls_when_the_url_asks() {
    let url = Services::get().await.database_url;
    let sep = if url.contains('?') { '&' } else { '?' };
    let pool = otaledger_ledger::db::pool(&format!("{url}{sep}sslmode=require"), "public", 1)
        .await
        .unwrap();
    let encrypted: bool =
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(encrypted, "sslmode=require gave a plain-text session");
    let dir = std::env::temp_dir().join(unique("pg_ca"));
    let (other_ca, _, _) = certificates(&dir);
    let refused = otaledger_ledger::db::pool(
        &format!(
            "{url}{sep}sslmode=verify-full&sslrootcert={}",
            other_ca.display()
        ),
        "public",
        1,
    )
    .await;
    assert!(
        refused.is_err(),
        "a server certificate the CA did not sign was accepted"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The AMQP bridge and a gateway over RabbitMQ's TLS listener (`amqps://`, `amqp.tls_ca`): the
/// batch reaches the ledger; with a CA that did not sign the broker's certificate the
/// connection is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_amqp_bridge_and_a_gateway_talk_over_tls() {
    use otaledger_domain::Payload;
    use otaledger_ledger::amqp::{connect, publish_batch};

    let (Ok(tls), Ok(ca)) = (
        std::env::var("OTALEDGER_TEST_AMQP_TLS"),
        std::env::var("OTALEDGER_TEST_TLS_CA"),
    ) else {
        panic!("set OTALEDGER_TEST_AMQP_TLS and OTALEDGER_TEST_TLS_CA (scripts/test.sh does)");
    };
    let name = unique("amqp_tls");
    let mut cfg = config(&Services::get().await, &name);
    let login = cfg
        .amqp
        .url
        .split_once("://")
        .and_then(|(_, rest)| rest.rsplit_once('@'))
        .map_or("guest:guest", |(l, _)| l)
        .to_owned();
    cfg.amqp.url = format!("amqps://{login}@{tls}/%2f");
    cfg.amqp.tls_ca = Some(ca);
    prepare(&cfg).await.unwrap();
    let (stop, _) = otaledger_tests::spawn_components(&cfg, &[Component::AmqpBridge]);
    let conn = eventually(Duration::from_secs(20), "a TLS connection", || {
        let cfg = cfg.clone();
        async move { connect(&cfg.amqp).await.ok() }
    })
    .await;
    let batch = serde_json::json!({"gateway_id": "gw-tls", "reports": [
        {"device_id": "dev-tls", "kind": "heartbeat", "data": {"firmware_version": "1", "uptime_s": 1,
         "cpu_pct": 1, "mem_pct": 1, "temperature_c": 1}}]});
    let relay = cfg.amqp.login();
    // The bridge declares the reports exchange when it starts: publish once it has (a publish
    // to a missing exchange closes its channel, so each try takes a new one).
    let conn = &conn;
    eventually(Duration::from_secs(20), "the batch published", || {
        let (cfg, relay, body) = (cfg.clone(), relay.clone(), batch.to_string());
        async move {
            let channel = conn.create_channel().await.ok()?;
            channel
                .confirm_select(lapin::options::ConfirmSelectOptions::default())
                .await
                .ok()?;
            publish_batch(&channel, &cfg.amqp, &relay, body.as_bytes())
                .await
                .ok()
        }
    })
    .await;
    let topic = cfg.kafka.topics().device_events;
    otaledger_tests::records_when(&cfg.kafka, &topic, "the heartbeat", |r| {
        otaledger_tests::decode_all(r)
            .iter()
            .any(|(_, e)| matches!(&e.payload, Payload::Heartbeat(h) if h.device_id == "dev-tls"))
    })
    .await;

    let dir = std::env::temp_dir().join(unique("amqp_ca"));
    let (other_ca, _, _) = certificates(&dir);
    let mut untrusting = cfg.amqp.clone();
    untrusting.tls_ca = Some(other_ca.display().to_string());
    assert!(
        connect(&untrusting).await.is_err(),
        "a broker certificate the CA did not sign was accepted"
    );
    stop.trigger();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Kafka over TLS (`kafka.security_protocol = "ssl"`, `ssl_ca_location`; ADR 0028): neither
/// tansu nor this machine has a TLS Kafka listener, so the test puts TLS in front of a tansu of
/// its own (rustls, terminating on the port that broker advertises, so every connection the
/// client makes after the bootstrap goes through TLS as well). The ledger's own code creates
/// the topics, appends and reads back through it with the CA. It is refused without the CA
/// (the system's roots do not hold it), with a CA that did not sign the certificate, and in
/// plain text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_is_reached_over_kafka_tls_with_its_ca_only() {
    use otaledger_domain::Event;
    use otaledger_ledger::config::KafkaConfig;
    use otaledger_ledger::kafka::{client_config, EventProducer};
    use rdkafka::consumer::{BaseConsumer, Consumer};

    let dir = std::env::temp_dir().join(unique("kafka_tls"));
    let (ca, cert, key) = certificates(&dir.join("good"));
    let (other_ca, _, _) = certificates(&dir.join("other"));
    let (inner, outer) = (otaledger_tests::free_port(), otaledger_tests::free_port());
    let _broker = Reaped {
        child: Command::new(tansu_binary())
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{inner}"),
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{outer}"),
                "--storage-engine",
                "memory://tansu/",
            ])
            .current_dir(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
        grace: Duration::ZERO,
    };
    otaledger_tests::listening(inner, "tansu listening").await;
    // The TLS front: every connection on the advertised port, decrypted, to the broker.
    let acceptor = otaledger_api::tls::acceptor(&cert, &key).unwrap();
    let front = tokio::net::TcpListener::bind(("127.0.0.1", outer))
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = front.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(client).await else {
                    return;
                };
                let Ok(mut broker) = tokio::net::TcpStream::connect(("127.0.0.1", inner)).await
                else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut broker).await;
            });
        }
    });

    let mut cfg = config(&Services::get().await, &unique("kafka_tls"));
    cfg.kafka = KafkaConfig {
        brokers: format!("127.0.0.1:{outer}"),
        security_protocol: "ssl".into(),
        ssl_ca_location: Some(ca.display().to_string()),
        partitions: 1,
        ..cfg.kafka.clone()
    };
    otaledger_ledger::kafka::ensure_topics(&cfg.kafka)
        .await
        .unwrap();
    let producer = EventProducer::new(&cfg.kafka).unwrap();
    let event = Event::now(
        otaledger_tests::heartbeat_payload("dev-kafka-tls", "1.0.0"),
        "trace",
    );
    producer.append(&event).await.unwrap();
    let topic = cfg.kafka.topics().device_events;
    otaledger_tests::records_when(&cfg.kafka, &topic, "the heartbeat over TLS", |r| {
        otaledger_tests::decode_all(r)
            .iter()
            .any(|(_, e)| e.meta.event_id == event.meta.event_id)
    })
    .await;

    // Without the CA, with another CA, and in plain text: no metadata, no ledger.
    let refused = |kafka: KafkaConfig| async move {
        tokio::task::spawn_blocking(move || {
            let probe: BaseConsumer = client_config(&kafka).create().unwrap();
            probe.fetch_metadata(None, Duration::from_secs(5)).is_err()
        })
        .await
        .unwrap()
    };
    for (what, kafka) in [
        (
            "the system's roots",
            KafkaConfig {
                ssl_ca_location: None,
                ..cfg.kafka.clone()
            },
        ),
        (
            "another CA",
            KafkaConfig {
                ssl_ca_location: Some(other_ca.display().to_string()),
                ..cfg.kafka.clone()
            },
        ),
        (
            "plain text",
            KafkaConfig {
                security_protocol: "plaintext".into(),
                ssl_ca_location: None,
                ..cfg.kafka.clone()
            },
        ),
    ] {
        assert!(refused(kafka).await, "Kafka answered a client with {what}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

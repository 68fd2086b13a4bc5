//! Harness for the end-to-end tests: service endpoints from the environment, a private
//! namespace per test (topic prefix, PostgreSQL schema, MQTT topic root, AMQP queue), helpers to
//! run components in-process or as `otaledger` processes, and to read topics back.

pub mod broker;
pub mod rollouts;
pub mod store;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use otaledger_domain::device_view::{DeviceView, Position};
use otaledger_domain::Event;
use otaledger_ledger::config::Config;
use otaledger_ledger::config::KafkaConfig;
use otaledger_ledger::reader::{Body, Decode, LedgerReader, ReaderConfig};
use otaledger_ledger::shutdown::Shutdown;

/// Service endpoints, from `OTALEDGER_TEST_*` variables.
#[derive(Debug, Clone)]
pub struct Services {
    pub kafka: String,
    pub database_url: String,
    pub amqp_url: String,
    pub mqtt_host: String,
    pub mqtt_port: u16,
    /// Mosquitto's logins (ADR 0026), from `OTALEDGER_TEST_MQTT_USERNAME`/`_PASSWORD` (the
    /// service login) and `OTALEDGER_TEST_MQTT_ADMIN_USERNAME`/`_PASSWORD` (the admin login that
    /// adds device logins); scripts/test.sh reads them from what scripts/services.sh made.
    pub mqtt_login: Option<(String, String)>,
    pub mqtt_admin: Option<(String, String)>,
    /// RabbitMQ's management API with an administrator login (ADR 0029), from
    /// `OTALEDGER_TEST_AMQP_ADMIN_URL`: gateways are provisioned through it.
    pub amqp_admin_url: Option<String>,
}

/// A user name and password pair from two variables, when both are set.
fn login(user: &str, password: &str) -> Option<(String, String)> {
    Some((var(user)?, var(password)?))
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Services {
    /// The services to test against: from `OTALEDGER_TEST_*` variables when they are set
    /// (scripts/test.sh sets them to the loopback services it checked or started); otherwise,
    /// where a Docker engine is reachable, containers started once per test process with
    /// testcontainers (Apache Kafka, PostgreSQL, RabbitMQ, Mosquitto).
    ///
    /// # Panics
    /// When neither is available, naming the variables to set.
    pub async fn get() -> Self {
        if let Some(s) = Self::from_env() {
            return s;
        }
        assert!(
            docker_reachable(),
            "no services: set OTALEDGER_TEST_KAFKA, OTALEDGER_TEST_DATABASE_URL, OTALEDGER_TEST_AMQP_URL and \
             OTALEDGER_TEST_MQTT (host:port), run scripts/test.sh, or make a Docker engine reachable"
        );
        containers::services().await
    }

    /// The endpoints named by the environment, if all are set.
    ///
    /// # Panics
    /// When only some are set.
    #[must_use]
    pub fn from_env() -> Option<Self> {
        const VARS: [&str; 4] = [
            "OTALEDGER_TEST_KAFKA",
            "OTALEDGER_TEST_DATABASE_URL",
            "OTALEDGER_TEST_AMQP_URL",
            "OTALEDGER_TEST_MQTT",
        ];
        let set: Vec<Option<String>> = VARS.iter().map(|v| var(v)).collect();
        if set.iter().all(Option::is_none) {
            return None;
        }
        if let Some(i) = set.iter().position(Option::is_none) {
            panic!(
                "{} is not set while other OTALEDGER_TEST_* variables are",
                VARS[i]
            );
        }
        let [kafka, database_url, amqp_url, mqtt] =
            [0, 1, 2, 3].map(|i| set[i].clone().unwrap_or_default());
        let (mqtt_host, mqtt_port) = mqtt.rsplit_once(':').unwrap_or((&mqtt, "1883"));
        Some(Services {
            kafka,
            database_url,
            amqp_url,
            mqtt_host: mqtt_host.to_owned(),
            mqtt_port: mqtt_port.parse().unwrap_or(1883),
            mqtt_login: login(
                "OTALEDGER_TEST_MQTT_USERNAME",
                "OTALEDGER_TEST_MQTT_PASSWORD",
            ),
            mqtt_admin: login(
                "OTALEDGER_TEST_MQTT_ADMIN_USERNAME",
                "OTALEDGER_TEST_MQTT_ADMIN_PASSWORD",
            ),
            amqp_admin_url: var("OTALEDGER_TEST_AMQP_ADMIN_URL"),
        })
    }
}

fn docker_reachable() -> bool {
    var("DOCKER_HOST").is_some() || std::path::Path::new("/var/run/docker.sock").exists()
}

mod containers {
    //! Services in containers, started once per test process and kept for its lifetime.

    use std::any::Any;

    use testcontainers_modules::kafka::apache::{Kafka, KAFKA_PORT};
    use testcontainers_modules::mosquitto::Mosquitto;
    use testcontainers_modules::postgres::Postgres;
    use testcontainers_modules::rabbitmq::RabbitMq;
    use testcontainers_modules::testcontainers::runners::AsyncRunner;
    use tokio::sync::OnceCell;

    use super::Services;

    type Kept = Vec<Box<dyn Any + Send + Sync>>;
    static STARTED: OnceCell<(Services, Kept)> = OnceCell::const_new();

    pub(super) async fn services() -> Services {
        let (services, _) = STARTED
            .get_or_init(|| async {
                let kafka = Kafka::default().start().await.expect("starting Kafka");
                let postgres = Postgres::default()
                    .with_host_auth()
                    .start()
                    .await
                    .expect("starting PostgreSQL");
                let rabbit = RabbitMq::default()
                    .start()
                    .await
                    .expect("starting RabbitMQ");
                let mosquitto = Mosquitto::default()
                    .start()
                    .await
                    .expect("starting Mosquitto");
                let port = |p: Result<u16, _>| -> u16 { p.expect("mapped port") };
                let services = Services {
                    kafka: format!(
                        "127.0.0.1:{}",
                        port(kafka.get_host_port_ipv4(KAFKA_PORT).await)
                    ),
                    database_url: format!(
                        "postgres://postgres@127.0.0.1:{}/postgres",
                        port(postgres.get_host_port_ipv4(5432).await)
                    ),
                    amqp_url: format!(
                        "amqp://guest:guest@127.0.0.1:{}/%2f",
                        port(rabbit.get_host_port_ipv4(5672).await)
                    ),
                    mqtt_host: "127.0.0.1".into(),
                    mqtt_port: port(mosquitto.get_host_port_ipv4(1883).await),
                    // The container's broker is anonymous (no dynamic-security plugin): the
                    // broker-enforced identity tests need the loopback services.
                    mqtt_login: None,
                    mqtt_admin: None,
                    // The image is RabbitMQ's management variant.
                    amqp_admin_url: Some(format!(
                        "http://guest:guest@127.0.0.1:{}",
                        port(rabbit.get_host_port_ipv4(15672).await)
                    )),
                };
                let kept: Kept = vec![
                    Box::new(kafka),
                    Box::new(postgres),
                    Box::new(rabbit),
                    Box::new(mosquitto),
                ];
                (services, kept)
            })
            .await;
        services.clone()
    }
}

/// A unique lowercase name for one test run.
#[must_use]
pub fn unique(test: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("t_{test}_{}", &id[..10])
}

/// A configuration whose topics, schema, MQTT root and AMQP queue belong to this test alone.
#[must_use]
pub fn config(services: &Services, name: &str) -> Config {
    let mut cfg = Config {
        kafka: KafkaConfig {
            brokers: services.kafka.clone(),
            topic_prefix: format!("{name}."),
            partitions: 4,
            replication_factor: 1,
            ..KafkaConfig::default()
        },
        ..Config::default()
    };
    cfg.database.url = services.database_url.clone();
    cfg.database.schema = name.to_owned();
    cfg.database.max_connections = 4;
    // The simulator sends at least 50 heartbeats a second, so a test's fleet of a few devices
    // is over the bridges' per-device rate (ADR 0040); the flood tests set theirs.
    cfg.ingest.device_rate_per_s = 0.0;
    cfg.mqtt.host = services.mqtt_host.clone();
    cfg.mqtt.port = services.mqtt_port;
    cfg.mqtt.topic_root = format!("{name}/devices");
    cfg.mqtt.username = services.mqtt_login.as_ref().map(|l| l.0.clone());
    cfg.mqtt.password = services.mqtt_login.as_ref().map(|l| l.1.clone());
    cfg.mqtt.admin_username = services.mqtt_admin.as_ref().map(|l| l.0.clone());
    cfg.mqtt.admin_password = services.mqtt_admin.as_ref().map(|l| l.1.clone());
    cfg.amqp.url = services.amqp_url.clone();
    cfg.amqp.reports_queue = format!("{name}.reports");
    cfg.amqp.commands_exchange = format!("{name}.gateway-commands");
    cfg.amqp.admin_url.clone_from(&services.amqp_admin_url);
    cfg.saga.tick_ms = 100;
    cfg.saga.join_every_ms = 500;
    cfg.saga.settle_ms = 400;
    cfg.http.listen = "127.0.0.1:0".into();
    cfg.projector.rebalance_ms = 500;
    cfg.projector.batch_wait_ms = 10;
    cfg
}

/// A pool on the test's schema (created when missing).
///
/// # Panics
/// When PostgreSQL cannot be reached.
pub async fn test_pool(cfg: &Config, max_connections: u32) -> sqlx::PgPool {
    otaledger_ledger::db::pool(&cfg.database.url, &cfg.database.schema, max_connections)
        .await
        .expect("a pool on the test's schema")
}

/// A pool on the test's schema with the projection tables migrated.
///
/// # Panics
/// When PostgreSQL cannot be reached or a migration fails.
pub async fn migrated_test_pool(cfg: &Config, max_connections: u32) -> sqlx::PgPool {
    otaledger_projections::migrations::migrated_pool(
        &cfg.database.url,
        &cfg.database.schema,
        max_connections,
    )
    .await
    .expect("a migrated pool on the test's schema")
}

/// The API over the test's (migrated) schema and topics, for `oneshot` requests.
///
/// # Panics
/// When PostgreSQL or Kafka cannot be reached.
pub async fn api_app(cfg: &Config) -> axum::Router {
    let pool = migrated_test_pool(cfg, 4).await;
    let producer = otaledger_ledger::kafka::EventProducer::new(&cfg.kafka).expect("producer");
    let state = app_state(cfg, &pool, &producer);
    as_client(otaledger_api::app(state), pool, producer).await
}

/// The API's state over the test's store and topics (an API instance; wrap its app with
/// [`as_client`] to send requests with credentials).
///
/// # Panics
/// When the Kafka probe cannot be created.
#[must_use]
pub fn app_state(
    cfg: &Config,
    pool: &sqlx::PgPool,
    producer: &otaledger_ledger::kafka::EventProducer,
) -> otaledger_api::AppState {
    otaledger_api::AppState::new(
        pool.clone(),
        producer.clone(),
        cfg.kafka.clone(),
        cfg.offline_after(),
    )
    .expect("the API's state")
    .with_device_rate(cfg.ingest.device_rate_per_s, cfg.ingest.device_burst)
}

/// Issues a token directly through the credential store (and the ledger), as `otaledger token
/// create` does.
///
/// # Panics
/// When PostgreSQL or Kafka cannot be reached, or the name has a live token.
pub async fn issue_token(
    pool: &sqlx::PgPool,
    producer: &otaledger_ledger::kafka::EventProducer,
    name: &str,
    role: otaledger_domain::access::Role,
) -> String {
    otaledger_api::tokens::issue(pool, producer, name, role, None, "test-harness", None)
        .await
        .expect("issuing a token")
        .token
}

/// The app as seen by a client that holds credentials: a request without `Authorization` is
/// sent with an admin token, or, for a device's report, with that device's own credential
/// (provisioned on first use). Tests of authentication itself use the bare app.
///
/// # Panics
/// When the admin token cannot be issued.
pub async fn as_client(
    app: axum::Router,
    pool: sqlx::PgPool,
    producer: otaledger_ledger::kafka::EventProducer,
) -> axum::Router {
    use axum::http::{header, HeaderValue};
    use otaledger_domain::access::Role;
    use std::sync::Arc;
    use tokio::sync::Mutex;
    let admin = issue_token(&pool, &producer, "test-admin", Role::Admin).await;
    let devices: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    app.layer(axum::middleware::from_fn(
        move |mut req: axum::extract::Request, next: axum::middleware::Next| {
            let (admin, devices, pool, producer) =
                (admin.clone(), devices.clone(), pool.clone(), producer.clone());
            async move {
                if !req.headers().contains_key(header::AUTHORIZATION) {
                    let parts: Vec<&str> = req.uri().path().split('/').collect();
                    let token = match parts[..] {
                        ["", "v1", "devices", id, "heartbeats" | "registrations" | "install-reports"] => {
                            let mut known = devices.lock().await;
                            match known.get(id) {
                                Some(t) => t.clone(),
                                None => {
                                    let t = issue_token(&pool, &producer, id, Role::Device).await;
                                    known.insert(id.to_owned(), t.clone());
                                    t
                                }
                            }
                        }
                        _ => admin,
                    };
                    let value = HeaderValue::from_str(&format!("Bearer {token}"));
                    req.headers_mut()
                        .insert(header::AUTHORIZATION, value.expect("a token is ASCII"));
                }
                next.run(req).await
            }
        },
    ))
}

/// A registration of `device` (model `m`, site `s`, firmware 1.0.0), recorded now.
#[must_use]
pub fn registered(device: &str) -> Event {
    let now = otaledger_domain::time::now_micros();
    Event::at(
        otaledger_domain::Payload::DeviceRegistered(otaledger_domain::events::DeviceRegistered {
            device_id: device.to_owned(),
            model: "m".into(),
            site: "s".into(),
            tags: vec![],
            firmware_version: "1.0.0".into(),
            gateway_id: None,
            hardware_rev: None,
        }),
        now - 5,
        now,
        "t",
    )
}

/// An event with a fresh id that occurred (and was recorded) at `at`.
#[must_use]
pub fn event_at(at: i64, payload: otaledger_domain::Payload) -> otaledger_domain::Event {
    otaledger_domain::Event::at(payload, at, at, "t")
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Components running in this process until the returned [`Shutdown`] is triggered.
pub fn spawn_components(
    cfg: &Config,
    components: &[otaledger_cli::components::Component],
) -> (Shutdown, Vec<tokio::task::JoinHandle<()>>) {
    let shutdown = Shutdown::new();
    let handles = components
        .iter()
        .map(|&c| {
            let cfg = cfg.clone();
            let signal = shutdown.signal();
            tokio::spawn(async move {
                if let Err(e) = otaledger_cli::components::run(c, cfg, signal).await {
                    panic!("{} failed: {e}", c.name());
                }
            })
        })
        .collect();
    (shutdown, handles)
}

/// The `otaledger` binary next to the test executable (scripts/test.sh builds it first), or
/// `OTALEDGER_BIN`.
///
/// # Panics
/// When the binary is missing.
#[must_use]
pub fn binary() -> PathBuf {
    if let Some(p) = var("OTALEDGER_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target directory");
    let bin = dir.join("otaledger");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p otaledger-cli` first (scripts/test.sh does)",
        bin.display()
    );
    bin
}

/// A child process killed (SIGKILL) and reaped when dropped, so a failing test leaves no
/// component running that could interfere with the next one.
#[derive(Debug)]
pub struct Process(pub Child);

impl Process {
    /// Kills the process now (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `otaledger run <component>` with the test's configuration in its environment.
#[must_use]
pub fn spawn_process(
    cfg: &Config,
    component: &str,
    member: &str,
    log: &std::path::Path,
) -> Process {
    Process(spawn_command(cfg, &["run", component], member, log))
}

/// `otaledger <args>` with the whole test configuration in its environment, not started.
#[must_use]
pub fn otaledger_command(cfg: &Config, args: &[&str], member: &str) -> Command {
    let mut c = Command::new(binary());
    c.args(args)
        .envs(cfg.env())
        .env("OTALEDGER_PROJECTOR_MEMBER", member)
        .env("RUST_LOG", "info");
    c
}

/// Starts `otaledger <args>` with the whole test configuration in its environment.
///
/// # Panics
/// When the process cannot start.
#[must_use]
pub fn spawn_command(cfg: &Config, args: &[&str], member: &str, log: &std::path::Path) -> Child {
    let log = std::fs::File::create(log).expect("log file");
    otaledger_command(cfg, args, member)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting otaledger")
}

/// One record read back from a topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub headers: BTreeMap<String, String>,
}

/// Reads a whole topic from the beginning: at least to the high watermarks at the time of the
/// call, then on until nothing new arrives for a second (tansu under-reports high watermarks,
/// so they are a lower bound here, never the end).
///
/// # Panics
/// On Kafka errors.
pub async fn read_topic(kafka: &KafkaConfig, topic: &str) -> Vec<Record> {
    let reader = LedgerReader::new(
        kafka,
        ReaderConfig::tool("tests-reader", vec![topic.to_owned()], Decode::Raw),
    )
    .expect("reader");
    // The shared test broker, loaded by a parallel run, sometimes answers metadata late: a few
    // tries before the test fails on it.
    let mut tries = 0;
    while let Err(e) = reader.assign_to_watermarks(|_, _| 0).await {
        tries += 1;
        assert!(tries < 5, "assign: {e:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut out = Vec::new();
    let read = reader.read_to_end(Duration::from_secs(1), |batch| {
        for r in batch.records {
            if let Body::Raw(raw) = r.body {
                out.push(Record {
                    partition: r.position.partition,
                    offset: r.position.offset,
                    key: raw.key,
                    payload: raw.payload,
                    headers: raw.headers.into_iter().collect(),
                });
            }
        }
        Ok::<(), std::convert::Infallible>(())
    });
    if tokio::time::timeout(Duration::from_secs(120), read)
        .await
        .is_err()
    {
        panic!("reading {topic} timed out at {:?}", reader.positions());
    }
    out
}

/// Re-reads a topic until its records satisfy `done`.
pub async fn records_when(
    kafka: &KafkaConfig,
    topic: &str,
    what: &str,
    done: impl Fn(&[Record]) -> bool,
) -> Vec<Record> {
    let done = &done;
    eventually(Duration::from_secs(30), what, || async move {
        let records = read_topic(kafka, topic).await;
        done(&records).then_some(records)
    })
    .await
}

/// Decodes records as events, with their positions.
///
/// # Panics
/// When a record does not decode.
#[must_use]
pub fn decode_all(records: &[Record]) -> Vec<(Position, Event)> {
    records
        .iter()
        .map(|r| {
            let d = otaledger_schemas::decode(&r.payload).expect("decodable event");
            (
                Position {
                    partition: r.partition,
                    offset: r.offset,
                },
                d.event,
            )
        })
        .collect()
}

/// The reference fleet view: a plain fold of the whole topic, in partition order.
#[must_use]
pub fn fold_topic(records: &[Record]) -> BTreeMap<String, DeviceView> {
    let mut events = decode_all(records);
    events.sort_by_key(|(p, _)| *p);
    let mut views: BTreeMap<String, DeviceView> = BTreeMap::new();
    for (pos, e) in events {
        if !DeviceView::is_relevant(&e) {
            continue;
        }
        let key = e.key().to_owned();
        let prev = views.remove(&key);
        if let Some(v) = DeviceView::apply(prev, &e, pos) {
            views.insert(key, v);
        }
    }
    views
}

/// Drops a test's schema (best effort; a failed test keeps its schema for inspection).
pub async fn drop_schema(services: &Services, schema: &str) {
    if let Ok(pool) = sqlx::PgPool::connect(&services.database_url).await {
        let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .execute(&pool)
            .await;
        pool.close().await;
    }
}

/// Waits until the MQTT bridge of `cfg` holds its subscription (messages published before
/// that would have no session to wait in).
pub async fn mqtt_bridge_subscribed(cfg: &Config) {
    let gauge = otaledger_ledger::metrics::REGISTRY.gauge(
        "otaledger_mqtt_bridge_subscribed",
        "1 while the MQTT bridge holds its subscription",
        &[("client_id", &cfg.mqtt.bridge_client_id())],
    );
    eventually(
        Duration::from_secs(30),
        "the MQTT bridge subscription",
        || {
            let g = gauge.clone();
            async move { (g.get() == 1).then_some(()) }
        },
    )
    .await;
}

/// A CA and a certificate for localhost and 127.0.0.1 signed by it, made with openssl.
///
/// # Panics
/// When openssl fails.
#[must_use]
pub fn certificates(dir: &std::path::Path) -> (PathBuf, PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).expect("the certificates' directory");
    let ossl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("running openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ossl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    ossl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .expect("the certificate's extensions");
    ossl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext",
        "-out",
        "server.pem",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    )
}

/// A healthy heartbeat of `device` running `firmware`.
#[must_use]
pub fn heartbeat_payload(device: &str, firmware: &str) -> otaledger_domain::Payload {
    use otaledger_domain::events::{Health, Heartbeat};
    otaledger_domain::Payload::Heartbeat(Heartbeat {
        device_id: device.to_owned(),
        firmware_version: firmware.to_owned(),
        gateway_id: None,
        health: Health {
            uptime_s: 5,
            cpu_pct: 1.0,
            mem_pct: 1.0,
            temperature_c: 30.0,
            error_count: 0,
            signal_dbm: None,
        },
    })
}

/// A loopback port free at the time of asking, for a server a test starts itself.
///
/// # Panics
/// When no port can be bound.
#[must_use]
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Waits until something accepts connections on loopback `port` (a server the test started).
pub async fn listening(port: u16, what: &str) {
    eventually(Duration::from_secs(20), what, || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
    })
    .await;
}

/// tansu's binary (`OTALEDGER_TEST_TANSU`, which scripts/test.sh sets, or cargo's), for the
/// tests that start a Kafka-API broker of their own.
///
/// # Panics
/// When there is none.
#[must_use]
pub fn tansu_binary() -> PathBuf {
    std::env::var_os("OTALEDGER_TEST_TANSU")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin/tansu")))
        .filter(|p| p.exists())
        .expect("set OTALEDGER_TEST_TANSU to tansu's binary (scripts/test.sh does)")
}

/// A process a test started, stopped when the test ends, passing or not: asked with SIGTERM
/// first when given `grace` (a graceful stop), killed after it.
pub struct Reaped {
    pub child: Child,
    pub grace: Duration,
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if !self.grace.is_zero() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let deadline = std::time::Instant::now() + self.grace;
            while std::time::Instant::now() < deadline {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// curl's exit code and the HTTP status it printed for `args` (at most `max_time_s` seconds).
///
/// # Panics
/// When curl cannot be run.
#[must_use]
pub fn curl_status(max_time_s: u32, args: &[&str]) -> (i32, String) {
    let max_time = max_time_s.to_string();
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            &max_time,
        ])
        .args(args)
        .output()
        .expect("running curl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

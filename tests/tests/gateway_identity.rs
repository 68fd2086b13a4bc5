#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! Gateway identities enforced by RabbitMQ and the AMQP bridge (ADR 0029), tried as attacks
//! against the real broker: provisioning through the API makes each gateway its own RabbitMQ
//! user; a gateway's batch is believed only for the devices provisioning attached to it and
//! only when the broker vouches for its sender; a gateway cannot read another gateway's
//! commands, forge a command into another gateway's queue, rebind its queue, or pass itself off
//! as another login; revoking closes its connection for good.

use std::time::Duration;

use axum::http::StatusCode;
use futures_util::StreamExt as _;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use otaledger_cli::components::{prepare, Component};
use otaledger_domain::Payload;
use otaledger_ledger::amqp::publish_batch;
use otaledger_ledger::amqp_admin::RabbitAdmin;
use otaledger_ledger::config::Config;
use otaledger_ledger::kafka::EventProducer;
use otaledger_ledger::shutdown::Shutdown;
use otaledger_tests::rollouts::call;
use otaledger_tests::{
    as_client, config, decode_all, migrated_test_pool, records_when, spawn_components, unique,
    Services,
};
use serde_json::json;

/// A test's configuration and the API with RabbitMQ's management login, with the AMQP bridge
/// running in this process.
/// Gateway ids are RabbitMQ user names, which every test shares: each test's are its own.
async fn setup(test: &str) -> (Config, axum::Router, Shutdown, String, String) {
    let name = unique(test);
    let cfg = config(&Services::get().await, &name);
    prepare(&cfg).await.unwrap();
    assert!(
        cfg.amqp.admin_url.is_some(),
        "these tests need RabbitMQ's management API: OTALEDGER_TEST_AMQP_ADMIN_URL (scripts/test.sh \
         sets it; scripts/services.sh enables the plugin)"
    );
    let pool = migrated_test_pool(&cfg, 4).await;
    let producer = EventProducer::new(&cfg.kafka).unwrap();
    let state = otaledger_tests::app_state(&cfg, &pool, &producer)
        .with_rabbit_admin(RabbitAdmin::new(&cfg.amqp).unwrap());
    let app = as_client(otaledger_api::app(state), pool, producer).await;
    let (stop, _) = spawn_components(&cfg, &[Component::AmqpBridge]);
    (
        cfg,
        app,
        stop,
        format!("{name}-gw-a"),
        format!("{name}-gw-b"),
    )
}

async fn revoke(app: &axum::Router, id: &str) {
    let (status, body) = call(app, "DELETE", &format!("/v1/tokens/{id}"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Provisions a gateway through `POST /v1/gateways`; its credential.
async fn gateway(app: &axum::Router, id: &str) -> String {
    let (status, body) = call(
        app,
        "POST",
        "/v1/gateways",
        Some(&json!({"gateway_id": id})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["role"], "gateway");
    body["token"].as_str().unwrap().to_owned()
}

async fn device(app: &axum::Router, id: &str, gateway: Option<&str>) {
    let (status, body) = call(
        app,
        "POST",
        "/v1/devices",
        Some(&json!({"device_id": id, "gateway_id": gateway})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

/// A connection logged in as `user`; `Err` when the broker refuses the login.
async fn login(cfg: &Config, user: &str, password: &str) -> Result<Connection, lapin::Error> {
    let host = cfg
        .amqp
        .url
        .rsplit_once('@')
        .map_or("127.0.0.1:5672/%2f", |(_, h)| h);
    let url = format!("amqp://{user}:{password}@{host}");
    Connection::connect(&url, ConnectionProperties::default()).await
}

async fn confirming(conn: &Connection) -> lapin::Channel {
    let channel = conn.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    channel
}

fn heartbeat(device: &str) -> serde_json::Value {
    json!({"device_id": device, "kind": "heartbeat", "data": {
        "firmware_version": "1.0.0", "uptime_s": 5, "cpu_pct": 5, "mem_pct": 5,
        "temperature_c": 30, "gateway_id": "gw-claimed-by-the-report"}})
}

fn batch(gateway: &str, devices: &[&str]) -> Vec<u8> {
    let reports: Vec<_> = devices.iter().map(|d| heartbeat(d)).collect();
    json!({"gateway_id": gateway, "reports": reports})
        .to_string()
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_gateway_is_believed_only_as_itself_and_only_for_its_own_devices() {
    let (cfg, app, stop, gw_a, gw_b) = setup("gw_reports").await;
    let (gw_a, gw_b) = (gw_a.as_str(), gw_b.as_str());
    let token_a = gateway(&app, gw_a).await;
    gateway(&app, gw_b).await;
    device(&app, "dev-a", Some(gw_a)).await;
    device(&app, "dev-b", Some(gw_b)).await;
    device(&app, "dev-direct", None).await;
    // Attaching to a gateway nobody provisioned is refused.
    let (status, body) = call(
        &app,
        "POST",
        "/v1/devices",
        Some(&json!({"device_id": "dev-x", "gateway_id": "gw-nobody"})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error"], "unknown_gateway");

    let conn = login(&cfg, gw_a, &token_a).await.unwrap();
    let channel = confirming(&conn).await;
    // Its own device, another gateway's device and a direct device, as itself.
    publish_batch(
        &channel,
        &cfg.amqp,
        gw_a,
        &batch(gw_a, &["dev-a", "dev-b", "dev-direct"]),
    )
    .await
    .unwrap();
    // A batch naming the other gateway, sent with its own login.
    publish_batch(&channel, &cfg.amqp, gw_a, &batch(gw_b, &["dev-b"]))
        .await
        .unwrap();
    // Passing itself off as the other gateway: the broker refuses the message.
    let forged = confirming(&conn).await;
    assert!(
        publish_batch(&forged, &cfg.amqp, gw_b, &batch(gw_b, &["dev-b"]))
            .await
            .is_err(),
        "RabbitMQ took a message whose user_id is not the sender's login"
    );
    // A login that does not say who it is (no user_id): even the service's own.
    let service = Connection::connect(&cfg.amqp.url, ConnectionProperties::default())
        .await
        .unwrap();
    let anonymous = confirming(&service).await;
    anonymous
        .basic_publish(
            cfg.amqp.reports_queue.as_str().into(),
            "".into(),
            BasicPublishOptions::default(),
            &batch(gw_b, &["dev-b"]),
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();

    let topics = cfg.kafka.topics();
    let dead = records_when(&cfg.kafka, &topics.dead_letters, "4 dead letters", |d| {
        d.len() >= 4
    })
    .await;
    let mut refused: Vec<(String, String)> = dead
        .iter()
        .map(|r| {
            (
                String::from_utf8_lossy(&r.key).into_owned(),
                r.headers["dlq-reason"].clone(),
            )
        })
        .collect();
    refused.sort();
    assert_eq!(
        refused,
        [
            ("dev-b", "unauthorized"),
            ("dev-b", "unauthorized"),
            ("dev-b", "unauthorized"),
            ("dev-direct", "unauthorized"),
        ]
        .map(|(k, r)| (k.to_owned(), r.to_owned()))
    );
    let events = records_when(
        &cfg.kafka,
        &topics.device_events,
        "dev-a's heartbeat",
        |r| {
            decode_all(r)
                .iter()
                .any(|(_, e)| matches!(&e.payload, Payload::Heartbeat(_)))
        },
    )
    .await;
    let heartbeats: Vec<_> = decode_all(&events)
        .into_iter()
        .filter_map(|(_, e)| match e.payload {
            Payload::Heartbeat(h) => Some((h.device_id, h.gateway_id)),
            _ => None,
        })
        .collect();
    // Only its own device's, with its gateway the batch's, not what the report claimed.
    assert_eq!(heartbeats, [("dev-a".to_owned(), Some(gw_a.to_owned()))]);
    revoke(&app, gw_a).await;
    revoke(&app, gw_b).await;
    stop.trigger();
}

/// The operation's outcome on a fresh channel: `Err` when the broker refuses it.
async fn tried<F, Fut>(conn: &Connection, op: F) -> Result<(), lapin::Error>
where
    F: FnOnce(lapin::Channel) -> Fut,
    Fut: std::future::Future<Output = Result<(), lapin::Error>>,
{
    let channel = conn.create_channel().await?;
    op(channel).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_broker_confines_a_gateway_to_its_own_queue_and_revoking_ends_it() {
    let (cfg, app, stop, gw_a, gw_b) = setup("gw_broker").await;
    let (gw_a, gw_b) = (gw_a.as_str(), gw_b.as_str());
    let token_a = gateway(&app, gw_a).await;
    gateway(&app, gw_b).await;
    let conn = login(&cfg, gw_a, &token_a).await.unwrap();
    let (queue_a, queue_b) = (cfg.amqp.gateway_queue(gw_a), cfg.amqp.gateway_queue(gw_b));

    // Reading the other gateway's commands.
    let q = queue_b.clone();
    let read_other = tried(&conn, |c| async move {
        c.basic_consume(
            q.as_str().into(),
            "thief".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map(drop)
    })
    .await;
    assert!(read_other.is_err(), "gw-a consumed gw-b's command queue");
    // Forging a command into the other gateway's queue through the default exchange.
    let q = queue_b.clone();
    let forge = tried(&conn, |c| async move {
        c.confirm_select(ConfirmSelectOptions::default()).await?;
        c.basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions::default(),
            b"{\"forged\": true}",
            BasicProperties::default(),
        )
        .await?
        .await
        .map(drop)
    })
    .await;
    assert!(forge.is_err(), "gw-a published into gw-b's queue");
    // Binding its own queue to the other gateway's routing key.
    let (q, exchange, key) = (
        queue_a.clone(),
        cfg.amqp.commands_exchange.clone(),
        gw_b.to_owned(),
    );
    let rebind = tried(&conn, |c| async move {
        c.queue_bind(
            q.as_str().into(),
            exchange.as_str().into(),
            key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
    })
    .await;
    assert!(rebind.is_err(), "gw-a bound its queue to gw-b's commands");
    // Declaring a queue of its own to bind.
    let private = format!("{queue_a}-private");
    let declare = tried(&conn, |c| async move {
        c.queue_declare(
            private.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .map(drop)
    })
    .await;
    assert!(declare.is_err(), "gw-a declared a queue");

    // Its own commands do reach it.
    let own = conn.create_channel().await.unwrap();
    let mut commands = own
        .basic_consume(
            queue_a.as_str().into(),
            "gw-a".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let service = Connection::connect(&cfg.amqp.url, ConnectionProperties::default())
        .await
        .unwrap();
    let dispatcher = confirming(&service).await;
    for to in [gw_b, gw_a] {
        dispatcher
            .basic_publish(
                cfg.amqp.commands_exchange.as_str().into(),
                to.into(),
                BasicPublishOptions::default(),
                format!("for {to}").as_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let got = tokio::time::timeout(Duration::from_secs(10), commands.next())
        .await
        .expect("gw-a's command never arrived")
        .unwrap()
        .unwrap();
    assert_eq!(
        got.data,
        format!("for {gw_a}").into_bytes(),
        "gw-a got another gateway's command"
    );

    // A wrong password and an unknown login are refused.
    assert!(login(&cfg, gw_a, "otl_0000000000000000_00").await.is_err());
    assert!(login(&cfg, &format!("{gw_a}-nobody"), &token_a)
        .await
        .is_err());

    // Revoking: the open connection is closed, and the login refused after.
    revoke(&app, gw_a).await;
    let closed = otaledger_tests::eventually(Duration::from_secs(10), "gw-a disconnected", || {
        let connected = conn.status().connected();
        async move { (!connected).then_some(()) }
    })
    .await;
    let () = closed;
    assert!(login(&cfg, gw_a, &token_a).await.is_err());
    revoke(&app, gw_b).await;
    stop.trigger();
}

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! Device identities enforced by the MQTT broker (ADR 0026), tried as attacks against the real
//! Mosquitto that scripts/services.sh configured: provisioning through the API gives a device
//! its login; the device cannot publish as another device, cannot read another device's
//! commands, cannot log in with another client id or a wrong password; an unprovisioned or
//! anonymous client cannot connect; revoking the credential disconnects the device for good.
//! A simulated fleet logging in with its own credentials reaches the fleet view.

use std::time::Duration;

use axum::http::StatusCode;
use otaledger_cli::components::{prepare, Component};
use otaledger_ledger::config::Config;
use otaledger_ledger::kafka::EventProducer;
use otaledger_ledger::mqtt_admin::MqttAdmin;
use otaledger_ledger::shutdown::Shutdown;
use otaledger_simulator::{self as simulator, DeviceCredentials, SimConfig};
use otaledger_tests::rollouts::{call, fleet_size, provision, sim_config, wait_fleet};
use otaledger_tests::{
    as_client, config, migrated_test_pool, mqtt_bridge_subscribed, spawn_components, unique,
    Services,
};
use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS};
use serde_json::json;
use tokio::sync::mpsc;

/// A test's configuration, topics and tables, and the API with the broker's admin login, as
/// `otaledger run api` has it when configured.
async fn setup(test: &str) -> (String, Config, axum::Router) {
    let name = unique(test);
    let cfg = config(&Services::get().await, &name);
    prepare(&cfg).await.unwrap();
    assert!(
        cfg.mqtt.admin_username.is_some(),
        "these tests need Mosquitto's logins: OTALEDGER_TEST_MQTT_USERNAME/_PASSWORD and \
         OTALEDGER_TEST_MQTT_ADMIN_USERNAME/_PASSWORD (scripts/test.sh sets them)"
    );
    let pool = migrated_test_pool(&cfg, 4).await;
    let producer = EventProducer::new(&cfg.kafka).unwrap();
    let state = otaledger_tests::app_state(&cfg, &pool, &producer)
        .with_mqtt_admin(MqttAdmin::connect(&cfg.mqtt).unwrap());
    let app = as_client(otaledger_api::app(state), pool, producer).await;
    (name, cfg, app)
}

async fn revoke(app: &axum::Router, device: &str) {
    let (status, body) = call(app, "DELETE", &format!("/v1/tokens/{device}"), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// A client's connection; `Err` when the broker refuses it.
async fn connect(
    cfg: &Config,
    client_id: &str,
    login: Option<(&str, &str)>,
) -> Result<(AsyncClient, EventLoop), ConnectionError> {
    let mut opts = MqttOptions::new(client_id, &cfg.mqtt.host, cfg.mqtt.port);
    opts.set_keep_alive(Duration::from_secs(5));
    if let Some((user, password)) = login {
        opts.set_credentials(user, password);
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 100);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => return Ok((client, eventloop)),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => panic!("no answer to CONNECT from {client_id}"),
        }
    }
}

/// What a connection receives: `Some(topic)` per message, `None` once the broker closed it.
fn drive(mut eventloop: EventLoop) -> mpsc::UnboundedReceiver<Option<String>> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(Some(p.topic.clone()));
                }
                Ok(_) => {}
                Err(_) => {
                    let _ = tx.send(None);
                    return;
                }
            }
        }
    });
    rx
}

/// Receives until `want` arrives; every topic received meanwhile.
async fn until(rx: &mut mpsc::UnboundedReceiver<Option<String>>, want: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let topic = tokio::time::timeout(Duration::from_secs(15), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{want} never arrived; seen {seen:?}"))
            .flatten()
            .unwrap_or_else(|| panic!("connection closed before {want}; seen {seen:?}"));
        seen.push(topic.clone());
        if topic == want {
            return seen;
        }
    }
}

async fn subscribed(
    client: &AsyncClient,
    filter: &str,
    rx: &mut mpsc::UnboundedReceiver<Option<String>>,
    probe: &str,
    publisher: &AsyncClient,
) {
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    // The subscription is in place once a probe published after it arrives.
    for _ in 0..50 {
        publisher
            .publish(probe, QoS::AtLeastOnce, false, "probe")
            .await
            .unwrap();
        if let Ok(Some(Some(t))) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await
        {
            if t == probe {
                return;
            }
        }
    }
    panic!("subscription to {filter} never delivered {probe}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_confines_each_device_to_its_own_identity_and_topics() {
    let (name, cfg, app) = setup("mqtt_id").await;
    let root = cfg.mqtt.topic_root.clone();
    let (a, b) = (format!("{name}-a"), format!("{name}-b"));
    let token_a = provision(&app, &a).await;
    let token_b = provision(&app, &b).await;
    // otaledger's own logins cannot be taken (nor replaced) by provisioning a device.
    for reserved in ["otaledger-service", "otaledger-admin"] {
        let body = json!({"device_id": reserved});
        let (status, answer) = call(&app, "POST", "/v1/devices", Some(&body)).await;
        assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    }

    // otaledger's service login sees everything under the root, as the bridge does.
    let service = cfg.mqtt.username.clone().unwrap();
    let service_password = cfg.mqtt.password.clone().unwrap();
    let (observer, observer_loop) = connect(
        &cfg,
        &unique("observer"),
        Some((&service, &service_password)),
    )
    .await
    .unwrap();
    let mut seen = drive(observer_loop);
    subscribed(
        &observer,
        &format!("{root}/#"),
        &mut seen,
        &format!("{root}/probe/x"),
        &observer,
    )
    .await;

    // A publishes as B, then as itself: the broker drops the first; the bridge never sees it.
    let (dev_a, loop_a) = connect(&cfg, &a, Some((&a, &token_a))).await.unwrap();
    let mut inbox_a = drive(loop_a);
    let forged = format!("{root}/{b}/heartbeat");
    let own = format!("{root}/{a}/heartbeat");
    for (topic, body) in [(&forged, "forged"), (&own, "own")] {
        dev_a
            .publish(topic.as_str(), QoS::AtLeastOnce, false, body)
            .await
            .unwrap();
    }
    let observed = until(&mut seen, &own).await;
    assert!(
        !observed.contains(&forged),
        "a forged report reached the bridge: {observed:?}"
    );
    // Nor outside the layout.
    dev_a
        .publish(format!("{root}/{a}/x/y"), QoS::AtLeastOnce, false, "deep")
        .await
        .unwrap();
    dev_a
        .publish(
            format!("{root}/{a}/install"),
            QoS::AtLeastOnce,
            false,
            "own",
        )
        .await
        .unwrap();
    let observed = until(&mut seen, &format!("{root}/{a}/install")).await;
    assert!(
        observed.iter().all(|t| !t.ends_with("/x/y")),
        "{observed:?}"
    );

    // A subscribes to every device's commands: it receives only its own.
    dev_a
        .subscribe(format!("{root}/+/commands"), QoS::AtLeastOnce)
        .await
        .unwrap();
    dev_a.subscribe("#", QoS::AtLeastOnce).await.unwrap();
    let own_commands = format!("{root}/{a}/commands");
    let b_commands = format!("{root}/{b}/commands");
    let mut delivered = Vec::new();
    for _ in 0..50 {
        observer
            .publish(b_commands.as_str(), QoS::AtLeastOnce, false, "for b")
            .await
            .unwrap();
        observer
            .publish(own_commands.as_str(), QoS::AtLeastOnce, false, "for a")
            .await
            .unwrap();
        if let Ok(Some(Some(t))) =
            tokio::time::timeout(Duration::from_millis(300), inbox_a.recv()).await
        {
            delivered.push(t.clone());
            if t == own_commands {
                break;
            }
        }
    }
    delivered.extend(std::iter::from_fn(|| inbox_a.try_recv().ok().flatten()));
    assert!(delivered.contains(&own_commands), "{delivered:?}");
    assert!(
        delivered.iter().all(|t| *t == own_commands),
        "a device read what is not its own: {delivered:?}"
    );

    // Logins the broker refuses: a wrong password, another device's credential, another
    // client id, an unprovisioned device, no login at all.
    let refused = |r: Result<(AsyncClient, EventLoop), ConnectionError>, what: &str| {
        assert!(
            matches!(r, Err(ConnectionError::ConnectionRefused(_))),
            "{what} was admitted"
        );
    };
    refused(
        connect(&cfg, &b, Some((&b, &token_a))).await,
        "B with A's credential",
    );
    refused(
        connect(&cfg, &b, Some((&b, "otl_0000000000000000_x"))).await,
        "a wrong password",
    );
    refused(
        connect(&cfg, "someone-else", Some((&b, &token_b))).await,
        "B under another client id",
    );
    let stranger = format!("{name}-stranger");
    refused(
        connect(&cfg, &stranger, Some((&stranger, &token_b))).await,
        "an unprovisioned device",
    );
    refused(
        connect(&cfg, &unique("anon"), None).await,
        "an anonymous client",
    );

    // Revoking A's credential closes its connection, and it cannot come back.
    revoke(&app, &a).await;
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(m) = inbox_a.recv().await {
            if m.is_none() {
                return;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the revoked device stayed connected");
    refused(
        connect(&cfg, &a, Some((&a, &token_a))).await,
        "a revoked device",
    );
    // B is still admitted; its login goes with its credential (the broker keeps no test's
    // devices).
    connect(&cfg, &b, Some((&b, &token_b))).await.unwrap();
    revoke(&app, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_logging_in_with_its_own_credentials_reaches_the_fleet_view() {
    let (name, cfg, app) = setup("mqtt_fleet").await;
    let (stack, _tasks) = spawn_components(&cfg, &[Component::MqttBridge, Component::Projector]);
    mqtt_bridge_subscribed(&cfg).await;

    let sim = SimConfig {
        gateway_share: 0.0,
        rounds: Some(2),
        ..sim_config(
            &cfg,
            8,
            &format!("{name}-"),
            simulator::Behaviour::default(),
        )
    };
    let mut credentials = DeviceCredentials::default();
    for d in simulator::fleet(&sim) {
        let token = provision(&app, &d.device_id).await;
        credentials.insert(d.device_id, token, None);
    }
    assert_eq!(
        format!("{credentials:?}"),
        "DeviceCredentials(8 devices)",
        "no secret shown"
    );
    // Each device on its own connection, logged in as itself; the service login is not used.
    let mut device_sim = SimConfig {
        credentials: Some(credentials),
        ..sim.clone()
    };
    device_sim.mqtt.username = None;
    device_sim.mqtt.password = None;
    let stats = simulator::run(device_sim, Shutdown::new().signal())
        .await
        .unwrap();
    assert_eq!(
        stats.mqtt_messages,
        8 * 3,
        "a registration and two heartbeats each"
    );
    wait_fleet(&app, 8).await;
    assert_eq!(fleet_size(&app).await, 8);

    // Without credentials for every device, the simulator says which is missing.
    let mut partial = DeviceCredentials::default();
    partial.insert(format!("{name}-dev-000000"), "x".into(), None);
    let err = simulator::run(
        SimConfig {
            credentials: Some(partial),
            ..sim.clone()
        },
        Shutdown::new().signal(),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("no credential for device"),
        "{err}"
    );

    for d in simulator::fleet(&sim) {
        revoke(&app, &d.device_id).await;
    }
    stack.trigger();
}

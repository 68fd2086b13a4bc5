#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! Rollouts under faults, on real services: components killed mid-rollout, a command that
//! cannot be routed, an operator's abort while devices install.

use std::time::Duration;

use otaledger_cli::components::Component;
use otaledger_domain::events::{CommandKind, Payload, Verdict};
use otaledger_domain::Event;
use otaledger_ledger::kafka::ensure_topics;
use otaledger_simulator::{Behaviour, SimConfig};
use otaledger_tests::{
    config, eventually, read_topic, spawn_components, spawn_process, unique, Services,
};
use serde_json::json;

use otaledger_tests::rollouts::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_saga_and_the_dispatcher_killed_mid_rollout_lose_nothing_and_repeat_nothing() {
    let (cfg, app, stack) = start_stack("rollout_kill", false).await;
    let logs = std::env::temp_dir().join(&cfg.database.schema);
    std::fs::create_dir_all(&logs).unwrap();
    let mut saga = spawn_process(&cfg, "saga", "saga-1", &logs.join("saga-1.log"));
    let mut dispatcher = spawn_process(
        &cfg,
        "dispatcher",
        "dispatcher-1",
        &logs.join("dispatcher-1.log"),
    );
    let behaviour = Behaviour {
        install_ms: 100,
        ..Behaviour::default()
    };
    let (sim_stop, sim) = start_sim(sim_config(&cfg, 400, "k-", behaviour));
    wait_fleet(&app, 400).await;
    let id = request_rollout(
        &app,
        &rollout_body(
            "7.7.7",
            all_models(),
            json!({"waves_pct": [5, 50, 100], "max_in_flight": 40}),
        ),
    )
    .await;
    let commanded = |n: usize| {
        let cfg = cfg.clone();
        async move {
            let c = updates_by_device(&rollout_events(&cfg).await).len();
            (c >= n).then_some(c)
        }
    };
    eventually(
        Duration::from_secs(180),
        "the second wave to be under way",
        || commanded(60),
    )
    .await;
    saga.kill();
    let mut saga = spawn_process(&cfg, "saga", "saga-2", &logs.join("saga-2.log"));
    eventually(
        Duration::from_secs(180),
        "the third wave to be under way",
        || commanded(250),
    )
    .await;
    dispatcher.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let dispatcher = spawn_process(
        &cfg,
        "dispatcher",
        "dispatcher-2",
        &logs.join("dispatcher-2.log"),
    );
    saga.kill();
    let saga = spawn_process(&cfg, "saga", "saga-3", &logs.join("saga-3.log"));

    let done = wait_over(&app, &id, Duration::from_secs(180)).await;
    assert_eq!(done["state"], "COMPLETED", "{done}");
    assert_eq!(done["states"]["SUCCEEDED"], 400, "{done}");
    let events = rollout_events(&cfg).await;
    let updates = updates_by_device(&events);
    assert_eq!(updates.len(), 400);
    let twice: Vec<_> = updates.iter().filter(|(_, u)| u.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "devices commanded more than once: {twice:?}"
    );
    let v: Vec<(i32, Verdict)> = verdicts(&events)
        .into_iter()
        .map(|(w, v, _)| (w, v))
        .collect();
    assert_eq!(
        v,
        vec![
            (0, Verdict::NextWave),
            (1, Verdict::NextWave),
            (2, Verdict::Complete)
        ]
    );
    eventually(Duration::from_secs(90), "every device on 7.7.7", || async {
        (firmware_counts(&cfg, "k-").await.get("7.7.7") == Some(&400)).then_some(())
    })
    .await;
    sim_stop.trigger();
    let stats = sim.await.unwrap();
    // Devices de-duplicate what a restarted dispatcher sends again.
    println!("simulator: {stats:?}");
    assert_eq!(stats.commands - stats.duplicate_commands, 400);
    drop((saga, dispatcher));
    stack.trigger();
}

/// A command for the dispatcher alone (no rollout waits on it): cancel `command_id` on `device`,
/// through `gateway` when it has one.
fn cancel_command(command_id: uuid::Uuid, device: &str, gateway: Option<&str>) -> Event {
    Event::new(
        command_id,
        Payload::CancelCommand(otaledger_domain::events::CancelCommand {
            command_id,
            device_id: device.into(),
            rollout_id: "r-1".into(),
            gateway_id: gateway.map(Into::into),
            reason: "test".into(),
        }),
        1,
        1,
        "t",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unroutable_gateway_command_is_retried_reported_and_dead_lettered() {
    let services = Services::get().await;
    let name = unique("rollout_unroutable");
    let mut cfg = config(&services, &name);
    cfg.dispatcher.attempts = 3;
    cfg.dispatcher.backoff_ms = 50;
    ensure_topics(&cfg.kafka).await.unwrap();
    let (stack, _handles) = spawn_components(&cfg, &[Component::Dispatcher]);
    let producer = otaledger_ledger::kafka::EventProducer::new(&cfg.kafka).unwrap();
    let command_id = uuid::Uuid::from_u128(0xfeed);
    let cmd = cancel_command(
        command_id,
        "d-behind-nowhere",
        Some("gw-that-does-not-exist"),
    );
    producer.append(&cmd).await.unwrap();
    let failures = eventually(
        Duration::from_secs(60),
        "three recorded delivery failures",
        || async {
            let f: Vec<_> = command_events(&cfg)
                .await
                .into_iter()
                .filter_map(|e| match e.payload {
                    Payload::CommandDeliveryFailed(f) => Some(f),
                    _ => None,
                })
                .collect();
            (f.len() >= 3).then_some(f)
        },
    )
    .await;
    assert_eq!(
        failures.iter().map(|f| f.attempt).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(
        failures.iter().map(|f| f.gave_up).collect::<Vec<_>>(),
        [false, false, true]
    );
    assert!(
        failures[0].error.contains("NO_ROUTE") || failures[0].error.contains("312"),
        "{}",
        failures[0].error
    );
    assert_eq!(failures[0].channel, "amqp");
    let dead = read_topic(&cfg.kafka, &cfg.kafka.topics().dead_letters).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].headers.get("dlq-reason").map(String::as_str),
        Some("undeliverable")
    );
    assert_eq!(
        otaledger_schemas::decode(&dead[0].payload).unwrap().event,
        cmd
    );
    stack.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatcher_waiting_for_a_down_mqtt_broker_stops_at_shutdown_and_keeps_the_command() {
    let services = Services::get().await;
    let name = unique("dispatch_shutdown");
    let mut cfg = config(&services, &name);
    // An MQTT broker that is down: nothing listens there.
    cfg.mqtt.port = otaledger_tests::free_port();
    cfg.dispatcher.backoff_ms = 50;
    ensure_topics(&cfg.kafka).await.unwrap();
    let producer = otaledger_ledger::kafka::EventProducer::new(&cfg.kafka).unwrap();
    let command_id = uuid::Uuid::from_u128(0xd0d0);
    let cmd = cancel_command(command_id, "d-direct", None);
    producer.append(&cmd).await.unwrap();
    let stop = otaledger_ledger::shutdown::Shutdown::new();
    let dispatcher = tokio::spawn(otaledger_cli::components::run(
        Component::Dispatcher,
        cfg.clone(),
        stop.signal(),
    ));
    // The dispatcher holds the command and waits for the broker: it tried at least twice.
    let pool = otaledger_tests::test_pool(&cfg, 1).await;
    let failures = || {
        let text = otaledger_ledger::metrics::REGISTRY.render();
        text.lines()
            .find_map(|l| {
                l.strip_prefix("otaledger_command_delivery_failures_total{channel=\"mqtt\"} ")
            })
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    eventually(
        Duration::from_secs(60),
        "the broker tried twice",
        || async { (failures() >= 2.0).then_some(()) },
    )
    .await;
    stop.trigger();
    // It stops instead of waiting for the broker for ever (a hang fails here), with nothing
    // recorded as sent: the command goes out at the next start.
    let stopped = tokio::time::timeout(Duration::from_secs(60), dispatcher)
        .await
        .expect("the dispatcher stopped at shutdown")
        .unwrap();
    let error = stopped.unwrap_err();
    assert!(
        otaledger_cli::components::interrupted(&error),
        "a stop, not a failure: {error:#}"
    );
    assert!(format!("{error:#}").contains("MQTT broker was down"));
    let sent: i64 = sqlx::query_scalar("SELECT count(*) FROM dispatched_commands")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(sent, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_abort_cancels_devices_in_flight_and_rolls_back_the_updated_ones() {
    let (cfg, app, stack) = start_stack("rollout_abort", true).await;
    let behaviour = Behaviour {
        install_ms: 1500,
        ..Behaviour::default()
    };
    let (sim_stop, sim) = start_sim(sim_config(&cfg, 60, "a-", behaviour));
    wait_fleet(&app, 60).await;
    let id = request_rollout(
        &app,
        &rollout_body(
            "3.3.3",
            all_models(),
            json!({"waves_pct": [100], "max_in_flight": 10, "success_threshold_pct": 0,
                   "failure_threshold_pct": 100, "health_gate_window_s": 0}),
        ),
    )
    .await;
    // Once the first devices updated (and others are installing), the operator aborts.
    eventually(
        Duration::from_secs(60),
        "a first device to update",
        || async {
            let (_, v) = call(&app, "GET", &format!("/v1/rollouts/{id}"), None).await;
            (v["states"]["SUCCEEDED"].as_i64().unwrap_or(0) >= 10).then_some(())
        },
    )
    .await;
    operator_request(&app, &id, "abort", "field reports").await;
    let done = wait_state(&app, &id, &["ROLLED_BACK"], Duration::from_secs(60)).await;
    assert!(
        done["state_reason"]
            .as_str()
            .unwrap()
            .contains("field reports"),
        "{done}"
    );
    let events = rollout_events(&cfg).await;
    let kinds = |k: CommandKind| {
        events
            .iter()
            .filter(|e| matches!(&e.payload, Payload::DeviceCommanded(c) if c.kind == k))
            .count()
    };
    let (rollbacks, cancels) = (kinds(CommandKind::Rollback), kinds(CommandKind::Cancel));
    assert!(rollbacks >= 10, "{rollbacks} rollbacks");
    assert!(cancels >= 1, "devices in flight were cancelled");
    // Nothing new is commanded after the abort, and every device ends rolled back, cancelled
    // or never commanded.
    eventually(
        Duration::from_secs(60),
        "every rollback and cancel to be reported",
        || async {
            let (_, v) = call(&app, "GET", &format!("/v1/rollouts/{id}"), None).await;
            let s = &v["states"];
            let n = |k: &str| s[k].as_i64().unwrap_or(0);
            (n("ROLLED_BACK") == i64::try_from(rollbacks).unwrap()
                && n("CANCELLED") + n("ROLLED_BACK") + n("TARGETED")
                    == v["targeted"].as_i64().unwrap())
            .then_some(())
        },
    )
    .await;
    let (_, timeline) = call(&app, "GET", &format!("/v1/rollouts/{id}/decisions"), None).await;
    assert!(
        timeline
            .to_string()
            .contains("test-admin asked to abort: field reports"),
        "{timeline}"
    );
    sim_stop.trigger();
    sim.await.unwrap();
    stack.trigger();
}

/// Install results that name a command id never issued to the device for the rollout (a
/// made-up id, the id anyone could compute from public values, another device's real id) are
/// dead-lettered `unauthorized` and move nothing; the device's own id still counts (ADR 0027).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn install_results_naming_commands_never_issued_are_dead_lettered_unauthorized() {
    let (cfg, app, stack) = start_stack("forged_results", true).await;
    // Devices that never answer: only a report of the test's can move them.
    let behaviour = Behaviour {
        silent: vec![rule("*=1")],
        ..Behaviour::default()
    };
    let (sim_stop, sim) = start_sim(SimConfig {
        gateway_share: 0.0,
        ..sim_config(&cfg, 4, "f-", behaviour)
    });
    wait_fleet(&app, 4).await;
    let id = request_rollout(
        &app,
        &rollout_body("9.0.0", all_models(), json!({"waves_pct": [100]})),
    )
    .await;
    let devices = eventually(
        Duration::from_secs(60),
        "every device commanded",
        || async {
            let (_, v) = get(&app, &format!("/v1/rollouts/{id}/devices")).await;
            let items = v["items"].as_array()?.clone();
            (items.len() == 4 && items.iter().all(|d| d["command_id"].is_string())).then_some(items)
        },
    )
    .await;
    let (a, b) = (
        devices[0]["device_id"].as_str().unwrap(),
        devices[1]["device_id"].as_str().unwrap(),
    );
    let command_of_b = devices[1]["command_id"].as_str().unwrap();
    let report = |device: &str, command_id: String| {
        let uri = format!("/v1/devices/{device}/install-reports");
        let body = json!({"kind": "result", "rollout_id": id, "command_id": command_id, "outcome": "SUCCEEDED",
                          "firmware_version": "9.0.0"});
        let app = app.clone();
        async move {
            let (status, answer) = call(&app, "POST", &uri, Some(&body)).await;
            assert_eq!(status, axum::http::StatusCode::ACCEPTED, "{answer}");
        }
    };
    let public = otaledger_domain::ids::derived_event_id(&[&id, a, "update", "1"]);
    for forged in [
        uuid::Uuid::new_v4().to_string(),
        public.to_string(),
        command_of_b.to_owned(),
    ] {
        report(a, forged).await;
    }
    report(b, command_of_b.to_owned()).await;

    let topic = cfg.kafka.topics().dead_letters;
    let unauthorized = |records: &[otaledger_tests::Record]| {
        records
            .iter()
            .filter(|r| r.headers.get("dlq-reason").map(String::as_str) == Some("unauthorized"))
            .count()
    };
    let records = otaledger_tests::records_when(&cfg.kafka, &topic, "3 unauthorized", |r| {
        unauthorized(r) >= 3
    })
    .await;
    assert_eq!(unauthorized(&records), 3, "each forged result, once");
    assert!(records
        .iter()
        .all(|r| r.headers.get("dlq-consumer").map(String::as_str) == Some("saga")));
    // B's own result counts; A's forged ones moved nothing.
    eventually(Duration::from_secs(30), "B's result applied", || async {
        let (_, v) = get(&app, &format!("/v1/rollouts/{id}/devices")).await;
        let items = v["items"].as_array()?.clone();
        let state = |d: &str| {
            items
                .iter()
                .find(|i| i["device_id"] == d)
                .map(|i| i["state"].as_str().unwrap_or("").to_owned())
        };
        // Counted: past COMMANDED (into the health gate, where the simulator's heartbeats on
        // the old firmware fail it).
        (state(b)? != "COMMANDED").then_some(())?;
        assert_eq!(
            state(a).as_deref(),
            Some("COMMANDED"),
            "a forged result counted"
        );
        Some(())
    })
    .await;
    sim_stop.trigger();
    sim.await.unwrap();
    stack.trigger();
}

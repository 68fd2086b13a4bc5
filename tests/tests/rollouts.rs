#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! Rollouts end to end on real services: the simulator's devices (over Mosquitto, and behind
//! gateways over RabbitMQ) report to the bridges, the projector builds the fleet view, the
//! saga resolves waves from it and commands devices through the dispatcher, the router brings
//! results and health heartbeats back, the rollout projector answers the API.

use std::collections::HashSet;
use std::time::Duration;

use axum::http::StatusCode;
use otaledger_domain::events::{CommandKind, Payload, Verdict};
use otaledger_simulator::{self as simulator, Behaviour, SimConfig};
use otaledger_tests::eventually;
use serde_json::json;

use otaledger_tests::rollouts::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rollout_moves_wave_by_wave_until_every_device_runs_the_release() {
    let (cfg, app, stack) = start_stack("rollout_waves", true).await;
    let behaviour = Behaviour {
        install_ms: 50,
        progress: true,
        ..Behaviour::default()
    };
    let (sim_stop, sim) = start_sim(sim_config(&cfg, 1000, "w-", behaviour));
    wait_fleet(&app, 1000).await;

    let started = std::time::Instant::now();
    let id = request_rollout(
        &app,
        &rollout_body(
            "9.0.0",
            all_models(),
            json!({"waves_pct": [1, 10, 50, 100], "max_in_flight": 200}),
        ),
    )
    .await;
    let done = wait_over(&app, &id, Duration::from_secs(180)).await;
    let took = started.elapsed();
    assert_eq!(done["state"], "COMPLETED", "{done}");
    println!("1,000-device rollout: request to completion in {took:?}");
    assert_eq!(done["targeted"], 1000);
    assert_eq!(done["states"]["SUCCEEDED"], 1000, "{done}");
    let waves: Vec<i64> = done["waves"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["devices"].as_i64().unwrap())
        .collect();
    assert_eq!(waves, vec![10, 90, 400, 500], "{done}");

    // Every targeted device reports the release (health gate: a heartbeat on it).
    eventually(
        Duration::from_secs(30),
        "every device on 9.0.0 in the fleet view",
        || async {
            let counts = firmware_counts(&cfg, "w-").await;
            (counts.get("9.0.0") == Some(&1000)).then_some(())
        },
    )
    .await;

    // The decisions explain the course: three waves advanced, then complete.
    let (_, timeline) = call(
        &app,
        "GET",
        &format!("/v1/rollouts/{id}/decisions?limit=1000"),
        None,
    )
    .await;
    let summaries: Vec<&str> = timeline["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["summary"].as_str().unwrap())
        .collect();
    assert!(
        summaries
            .iter()
            .filter(|s| s.starts_with("NextWave"))
            .count()
            == 3,
        "{summaries:#?}"
    );
    assert!(
        summaries.iter().any(|s| s.starts_with("Complete")),
        "{summaries:#?}"
    );
    let events = rollout_events(&cfg).await;
    let v = verdicts(&events);
    assert_eq!(
        v.iter().map(|(w, v, _)| (*w, *v)).collect::<Vec<_>>(),
        vec![
            (0, Verdict::NextWave),
            (1, Verdict::NextWave),
            (2, Verdict::NextWave),
            (3, Verdict::Complete)
        ]
    );

    // One update per device, each command id once, a share of them through the gateways.
    let updates = updates_by_device(&events);
    assert_eq!(updates.len(), 1000);
    assert!(
        updates.values().all(|u| u.len() == 1),
        "a device was commanded twice"
    );
    let commands = command_events(&cfg).await;
    let mut ids = HashSet::new();
    let mut via_gateway = 0;
    for e in &commands {
        if let Payload::UpdateCommand(c) = &e.payload {
            assert!(
                ids.insert(c.command_id),
                "command id {} appended twice",
                c.command_id
            );
            via_gateway += usize::from(c.gateway_id.is_some());
        }
    }
    assert_eq!(ids.len(), 1000);
    assert!(
        (100..350).contains(&via_gateway),
        "{via_gateway} commands through gateways"
    );
    let (_, page) = call(
        &app,
        "GET",
        &format!("/v1/rollouts/{id}/devices?state=succeeded&limit=5"),
        None,
    )
    .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 5);
    assert_eq!(page["items"][0]["state"], "SUCCEEDED");
    let (status, _) = call(
        &app,
        "GET",
        &format!("/v1/rollouts/{id}/devices?state=bogus"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = call(&app, "GET", "/v1/rollouts/nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = call(&app, "GET", "/v1/rollouts?state=COMPLETED", None).await;
    assert_eq!(list["items"][0]["rollout_id"], id.as_str());

    sim_stop.trigger();
    let stats = sim.await.unwrap();
    assert!(stats.commands >= 1000, "{stats:?}");
    stack.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_release_aborts_at_the_canary_and_rolls_back_the_devices_that_updated() {
    let (cfg, app, stack) = start_stack("rollout_bad", true).await;
    let behaviour = Behaviour {
        install_ms: 20,
        failures: vec![rule("6.6.6=0.5")],
        ..Behaviour::default()
    };
    let (sim_stop, sim) = start_sim(sim_config(&cfg, 200, "b-", behaviour));
    wait_fleet(&app, 200).await;
    let before = firmware_counts(&cfg, "b-").await;

    let id = request_rollout(
        &app,
        &rollout_body(
            "6.6.6",
            all_models(),
            json!({"waves_pct": [10, 50, 100], "max_in_flight": 50, "success_threshold_pct": 90,
                   "failure_threshold_pct": 20, "min_devices_for_verdict": 20,
                   "health_gate_window_s": 0}),
        ),
    )
    .await;
    let done = wait_state(
        &app,
        &id,
        &["ROLLED_BACK", "ABORTED"],
        Duration::from_secs(120),
    )
    .await;
    // The saga appends "aborted" and "rolled back" in one decision; the rollout view may commit
    // between the two (a projection shows a prefix of the ledger), so ABORTED can be seen first.
    let done = if done["state"] == "ABORTED" {
        wait_state(&app, &id, &["ROLLED_BACK"], Duration::from_secs(10)).await
    } else {
        done
    };
    assert_eq!(done["state"], "ROLLED_BACK", "{done}");
    assert_eq!(done["targeted"], 20, "only the canary was targeted: {done}");

    let events = rollout_events(&cfg).await;
    let v = verdicts(&events);
    assert_eq!(v.len(), 1, "{v:?}");
    assert_eq!(v[0].1, Verdict::Abort);
    assert!(
        v[0].2.contains("at or over the failure threshold 20%"),
        "{}",
        v[0].2
    );
    let rollbacks: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.payload {
            Payload::DeviceCommanded(c) if c.kind == CommandKind::Rollback => {
                Some(c.device_id.clone())
            }
            _ => None,
        })
        .collect();
    assert!(!rollbacks.is_empty());
    // Rollbacks reach the devices that updated: each reports it and runs its old version again.
    eventually(
        Duration::from_secs(60),
        "every rollback to be reported",
        || async {
            let (_, page) = call(
                &app,
                "GET",
                &format!("/v1/rollouts/{id}/devices?state=ROLLED_BACK&limit=1000"),
                None,
            )
            .await;
            (page["items"].as_array().map_or(0, Vec::len) == rollbacks.len()).then_some(())
        },
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "no device left on 6.6.6",
        || async {
            let now = firmware_counts(&cfg, "b-").await;
            (!now.contains_key("6.6.6") && now == before).then_some(())
        },
    )
    .await;
    // The timeline says why.
    let (_, timeline) = call(&app, "GET", &format!("/v1/rollouts/{id}/decisions"), None).await;
    let text = timeline.to_string();
    assert!(text.contains("Abort: wave 0"), "{text}");
    assert!(text.contains("rollback sent to"), "{text}");
    sim_stop.trigger();
    sim.await.unwrap();
    stack.trigger();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn timeouts_retries_the_health_gate_pause_resume_and_joining_devices() {
    let (cfg, app, stack) = start_stack("rollout_edges", true).await;
    let behaviour = Behaviour {
        install_ms: 300,
        silent: vec![rule("5.0.0=0.15")],
        unhealthy: vec![rule("5.0.0=0.1")],
        ..Behaviour::default()
    };
    let (sim_stop, sim) = start_sim(sim_config(&cfg, 100, "e-", behaviour.clone()));
    wait_fleet(&app, 100).await;

    let id = request_rollout(
        &app,
        &rollout_body(
            "5.0.0",
            json!({"models": ["elevator-gen2", "elevator-gen3"]}),
            json!({"waves_pct": [100], "max_in_flight": 10, "success_threshold_pct": 0,
                   "failure_threshold_pct": 100, "device_timeout_s": 10, "max_retries": 1,
                   "retry_backoff_s": 1, "health_gate_window_s": 3, "rollback_policy": "none"}),
        ),
    )
    .await;
    wait_state(&app, &id, &["RUNNING"], Duration::from_secs(30)).await;

    // Pause: nothing new is commanded until resumed.
    operator_request(&app, &id, "pause", "lunch").await;
    wait_state(&app, &id, &["PAUSED"], Duration::from_secs(30)).await;
    let paused_at = updates_by_device(&rollout_events(&cfg).await)
        .values()
        .map(Vec::len)
        .sum::<usize>();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let still = updates_by_device(&rollout_events(&cfg).await)
        .values()
        .map(Vec::len)
        .sum::<usize>();
    assert_eq!(paused_at, still, "commands went out while paused");

    // Devices joining while it runs are picked up (same models, new ids).
    let (join_stop, joiners) = start_sim(SimConfig {
        seed: 4,
        ..sim_config(&cfg, 10, "j-", behaviour)
    });
    wait_fleet(&app, 110).await;
    operator_request(&app, &id, "resume", "back").await;
    let done = wait_state(&app, &id, &["COMPLETED"], Duration::from_secs(180)).await;

    let events = rollout_events(&cfg).await;
    let joined: usize = events
        .iter()
        .filter_map(|e| match &e.payload {
            Payload::DevicesJoined(j) => {
                Some(j.device_ids.iter().filter(|d| d.starts_with("j-")).count())
            }
            _ => None,
        })
        .sum();
    let joiners_matching = simulator::fleet(&SimConfig {
        seed: 4,
        ..sim_config(&cfg, 10, "j-", Behaviour::default())
    })
    .iter()
    .filter(|d| d.model.starts_with("elevator"))
    .count();
    assert_eq!(joined, joiners_matching, "every matching joiner was added");
    // Silent devices time out after a retry; unhealthy ones fail the health gate.
    let timed_out: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.payload {
            Payload::DeviceTimedOut(t) => {
                Some((t.device_id.clone(), t.attempt, t.retry_at.is_some()))
            }
            _ => None,
        })
        .collect();
    assert!(
        timed_out.iter().any(|t| t.1 == 1 && t.2),
        "a retry was scheduled: {timed_out:?}"
    );
    assert!(
        timed_out.iter().any(|t| t.1 == 2 && !t.2),
        "retries ran out: {timed_out:?}"
    );
    let updates = updates_by_device(&events);
    assert!(updates
        .values()
        .any(|u| u.iter().map(|(a, _)| *a).collect::<Vec<_>>() == [1, 2]));
    let states = &done["states"];
    assert!(states["TIMED_OUT"].as_i64().unwrap_or(0) > 0, "{done}");
    assert!(states["FAILED"].as_i64().unwrap_or(0) > 0, "{done}");
    let (_, failed) = call(
        &app,
        "GET",
        &format!("/v1/rollouts/{id}/devices?state=FAILED"),
        None,
    )
    .await;
    assert!(
        failed.to_string().contains("health gate failed"),
        "{failed}"
    );
    let state_changes: Vec<String> = events
        .iter()
        .filter_map(|e| match &e.payload {
            Payload::RolloutStateChanged(c) => Some(format!("{:?}", c.to)),
            _ => None,
        })
        .collect();
    assert_eq!(state_changes, ["Running", "Paused", "Running", "Completed"]);
    join_stop.trigger();
    joiners.await.unwrap();
    sim_stop.trigger();
    sim.await.unwrap();
    stack.trigger();
}

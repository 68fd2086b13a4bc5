#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! A frozen saga is fenced (ADR 0039): SIGSTOP it mid-rollout, let another take its partitions
//! over, append what a zombie would (an abort and a command of its own, stamped with its old
//! epoch), SIGCONT it, and show that nothing it appended after the new owner's fence takes
//! effect: not in the saga, not in the rollout views, not at the devices.

use std::process::Command;
use std::time::{Duration, Instant};

use otaledger_domain::events::{
    CommandKind, DeviceCommanded, Payload, Release, RolloutState, RolloutStateChanged,
    UpdateCommand,
};
use otaledger_domain::time::now_micros;
use otaledger_domain::Event;
use otaledger_ledger::config::Config;
use otaledger_ledger::fence::{Stamp, Writer};
use otaledger_ledger::kafka::EventProducer;
use otaledger_ledger::reader::{Body, Decode, LedgerReader, ReaderConfig};
use otaledger_simulator::Behaviour;
use otaledger_tests::rollouts::*;
use otaledger_tests::{eventually, spawn_process, test_pool};
use serde_json::json;
use uuid::Uuid;

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// Every record of `topic` as stored, markers and stale records included, with its stamp.
async fn stored(cfg: &Config, topic: &str) -> Vec<(i32, i64, Stamp, Option<Event>)> {
    let reader = LedgerReader::new(
        &cfg.kafka,
        ReaderConfig::tool("tests-unfenced", vec![topic.to_owned()], Decode::Raw),
    )
    .unwrap()
    .unfenced();
    reader.assign_to_watermarks(|_, _| 0).await.unwrap();
    let mut out = Vec::new();
    reader
        .read_to_end(Duration::from_secs(1), |batch| {
            for r in batch.records {
                if let Body::Raw(raw) = r.body {
                    let stamp = Stamp::from_headers(
                        raw.headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes())),
                    );
                    let event = otaledger_schemas::decode(&raw.payload)
                        .ok()
                        .map(|d| d.event);
                    out.push((r.position.partition, r.position.offset, stamp, event));
                }
            }
            Ok::<(), std::convert::Infallible>(())
        })
        .await
        .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_saga_thawed_after_a_takeover_changes_nothing() {
    let (cfg, app, stack) = start_stack("saga_fence", false).await;
    let logs = std::env::temp_dir().join(&cfg.database.schema);
    std::fs::create_dir_all(&logs).unwrap();
    let saga1 = spawn_process(&cfg, "saga", "saga-1", &logs.join("saga-1.log"));
    let dispatcher = spawn_process(&cfg, "dispatcher", "dispatcher-1", &logs.join("d.log"));
    // Slow enough (about a minute) that the rollout is still running when saga-2 takes over.
    let behaviour = Behaviour {
        install_ms: 3_000,
        ..Behaviour::default()
    };
    let (sim_stop, sim) = start_sim(sim_config(&cfg, 200, "zf-", behaviour));
    wait_fleet(&app, 200).await;
    let id = request_rollout(
        &app,
        &rollout_body(
            "8.8.8",
            all_models(),
            json!({"waves_pct": [10, 100], "max_in_flight": 10}),
        ),
    )
    .await;
    eventually(
        Duration::from_secs(120),
        "the first wave commanded",
        || async { (updates_by_device(&rollout_events(&cfg).await).len() >= 10).then_some(()) },
    )
    .await;

    // Where the rollout lives, and the epoch saga-1 holds it with.
    let topic = cfg.kafka.topics().rollout_events.clone();
    let partition = stored(&cfg, &topic)
        .await
        .into_iter()
        .find_map(|(p, _, _, e)| e.filter(|e| e.key() == id).map(|_| p))
        .unwrap();
    let pool = test_pool(&cfg, 2).await;
    let epoch_of = |owner: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT epoch FROM consumer_offsets
                 WHERE consumer = 'saga' AND partition = $1 AND owner = $2",
            )
            .bind(partition)
            .bind(owner)
            .fetch_optional(&pool)
            .await
            .unwrap()
        }
    };
    let old = epoch_of("saga-1").await.unwrap();

    // Freeze saga-1: its process keeps its TCP connections, so only the lease frees its locks.
    let pid = saga1.0.id();
    signal(pid, "-STOP");
    let frozen_at = Instant::now();
    let decided = rollout_events(&cfg).await.len();
    let saga2 = spawn_process(&cfg, "saga", "saga-2", &logs.join("saga-2.log"));
    let new = eventually(
        Duration::from_secs(60),
        "saga-2 to take the partition",
        || epoch_of("saga-2"),
    )
    .await;
    let took_over = frozen_at.elapsed();
    assert!(new > old, "a takeover raises the epoch: {old} -> {new}");
    eventually(Duration::from_secs(60), "saga-2 to decide", || async {
        (rollout_events(&cfg).await.len() > decided).then_some(())
    })
    .await;

    // What a zombie would append: an abort, and a command to a device it picked, stamped with
    // the epoch it held. A fence that works leaves both unread.
    let device = updates_by_device(&rollout_events(&cfg).await)
        .into_keys()
        .next()
        .unwrap();
    let zombie = Writer::saga(partition, old);
    let now = now_micros();
    let forged_command = Uuid::new_v4();
    let abort = Event::at(
        Payload::RolloutStateChanged(RolloutStateChanged {
            rollout_id: id.clone(),
            from: RolloutState::Running,
            to: RolloutState::Aborted,
            reason: "a zombie's abort".into(),
        }),
        now,
        now,
        "zombie",
    );
    let commanded = Event::at(
        Payload::DeviceCommanded(DeviceCommanded {
            rollout_id: id.clone(),
            device_id: device.clone(),
            command_id: forged_command,
            kind: CommandKind::Update,
            attempt: 9,
            deadline: now + 600_000_000,
        }),
        now,
        now,
        "zombie",
    );
    let command = Event::new(
        forged_command,
        Payload::UpdateCommand(UpdateCommand {
            command_id: forged_command,
            device_id: device.clone(),
            rollout_id: id.clone(),
            gateway_id: None,
            release: Release {
                version: "6.6.6".into(),
                artifact_uri: "https://artifacts.example/fw/6.6.6.bin".into(),
                sha256: "ab".repeat(32),
                size_bytes: 1_000,
                signature: "sig".into(),
            },
            deadline: now + 600_000_000,
            director: None,
        }),
        now,
        now,
        "zombie",
    );
    let producer = EventProducer::new(&cfg.kafka).unwrap();
    for e in [&command, &commanded, &abort] {
        producer
            .enqueue_as(e, Some(&zombie))
            .await
            .unwrap()
            .acked()
            .await
            .unwrap();
    }
    signal(pid, "-CONT");

    let done = wait_over(&app, &id, Duration::from_secs(180)).await;
    assert_eq!(
        done["state"], "COMPLETED",
        "the zombie's abort took effect: {done}"
    );
    assert_eq!(done["states"]["SUCCEEDED"], 200, "{done}");

    // The zombie's records are in the ledger, after saga-2's fence, and nobody read them.
    let all = stored(&cfg, &topic).await;
    let fence_at = all
        .iter()
        .find_map(|(p, o, s, _)| {
            matches!(s, Stamp::Marker(w) if *p == partition && w.scope == zombie.scope && w.epoch == new)
                .then_some(*o)
        })
        .unwrap();
    let late: Vec<i64> = all
        .iter()
        .filter(|(p, o, s, _)| {
            *p == partition
                && *o > fence_at
                && matches!(s, Stamp::Record(w) if w.scope == zombie.scope && w.epoch < new)
        })
        .map(|(_, o, _, _)| *o)
        .collect();
    let abort_at = all
        .iter()
        .find_map(|(_, o, _, e)| {
            e.as_ref()
                .filter(|e| e.meta.event_id == abort.meta.event_id)
                .map(|_| *o)
        })
        .unwrap();
    assert!(abort_at > fence_at && late.contains(&abort_at), "{late:?}");
    let read = rollout_events(&cfg).await;
    assert!(
        read.iter().all(|e| e.meta.event_id != abort.meta.event_id
            && e.meta.event_id != commanded.meta.event_id),
        "a fenced reader handed on the zombie's decisions"
    );
    let updates = updates_by_device(&read);
    assert_eq!(updates.len(), 200);
    assert!(updates.values().all(|u| u.len() == 1), "{updates:?}");

    // The forged command never left the dispatcher, and every device ran one update.
    let dispatched: i64 =
        sqlx::query_scalar("SELECT count(*) FROM dispatched_commands WHERE command_id = $1")
            .bind(forged_command)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(dispatched, 0);
    sim_stop.trigger();
    let stats = sim.await.unwrap();
    assert_eq!(stats.commands - stats.duplicate_commands, 200, "{stats:?}");
    println!(
        "saga-1 frozen; saga-2 held partition {partition} (epoch {old} -> {new}) {took_over:?} later; \
         {} records of the old epoch after the fence, none read",
        late.len()
    );
    drop((saga1, saga2, dispatcher));
    pool.close().await;
    stack.trigger();
}

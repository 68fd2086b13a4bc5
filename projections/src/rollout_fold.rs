//! The rollout views' pure fold: a batch of `ota.rollout-events` becomes the rows to write
//! (new rollouts, one patch per rollout header and per targeted device, the decisions), so that
//! a device's events of one batch coalesce into one row update. [`crate::rollouts`] writes it.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use otaledger_domain::events::{
    CommandKind, DeviceRolloutState, Payload, RolloutState, UpdateRequested,
};
use otaledger_ledger::Positioned;
use serde_json::json;
use uuid::Uuid;

use crate::projector::ts;

/// What one batch of rollout events changes.
#[derive(Debug, Default)]
pub(crate) struct RolloutBatch {
    pub(crate) new_rollouts: Vec<(UpdateRequested, DateTime<Utc>)>,
    pub(crate) headers: HashMap<String, HeaderPatch>,
    pub(crate) devices: HashMap<(String, String), DevicePatch>,
    pub(crate) decisions: Vec<Decision>,
}

#[derive(Debug, Default)]
pub(crate) struct DevicePatch {
    pub(crate) wave: Option<i32>,
    pub(crate) state: Option<&'static str>,
    pub(crate) attempt: Option<i32>,
    pub(crate) command_id: Option<Uuid>,
    pub(crate) from_version: Option<String>,
    pub(crate) reason: Option<String>,
    pub(crate) updated_at: DateTime<Utc>,
}

#[derive(Debug, Default)]
pub(crate) struct HeaderPatch {
    pub(crate) state: Option<(&'static str, String)>,
    pub(crate) current_wave: Option<i32>,
    pub(crate) targeted: i64,
    pub(crate) started_at: Option<DateTime<Utc>>,
    pub(crate) finished_at: Option<DateTime<Utc>>,
    pub(crate) updated_at: DateTime<Utc>,
}

#[derive(Debug)]
pub(crate) struct Decision {
    pub(crate) rollout_id: String,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) event_id: Uuid,
    pub(crate) event_type: &'static str,
    pub(crate) occurred_at: DateTime<Utc>,
    pub(crate) summary: String,
    pub(crate) detail: serde_json::Value,
}

fn decision(p: &Payload) -> Option<(String, serde_json::Value)> {
    let detail = |v: &dyn erased::Ser| v.value();
    Some(match p {
        Payload::UpdateRequested(r) => (
            format!(
                "{} requested release {} ({} waves: {:?} %)",
                r.requested_by,
                r.release.version,
                r.strategy.waves_pct.len(),
                r.strategy.waves_pct
            ),
            detail(r),
        ),
        Payload::PauseRequested(o) => (
            format!("{} asked to pause: {}", o.requested_by, o.reason),
            detail(o),
        ),
        Payload::ResumeRequested(o) => (
            format!("{} asked to resume: {}", o.requested_by, o.reason),
            detail(o),
        ),
        Payload::AbortRequested(o) => (
            format!("{} asked to abort: {}", o.requested_by, o.reason),
            detail(o),
        ),
        Payload::WaveStarted(w) => (
            format!(
                "wave {} started with {} devices (chunk {} of {})",
                w.wave,
                w.device_ids.len(),
                w.chunk + 1,
                w.chunks
            ),
            json!({"wave": w.wave, "chunk": w.chunk, "chunks": w.chunks, "devices": w.device_ids.len()}),
        ),
        Payload::DevicesJoined(j) => (
            format!(
                "{} devices joined the fleet and were added to wave {}",
                j.device_ids.len(),
                j.wave
            ),
            json!({"wave": j.wave, "device_ids": j.device_ids}),
        ),
        Payload::ThresholdEvaluated(t) => (format!("{:?}: {}", t.verdict, t.rule), detail(t)),
        Payload::RolloutStateChanged(c) => (
            format!("{} → {}: {}", c.from.as_str(), c.to.as_str(), c.reason),
            detail(c),
        ),
        _ => return None,
    })
}

/// `serde_json::to_value` behind a trait object, so `decision` stays one match.
mod erased {
    pub trait Ser {
        fn value(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> Ser for T {
        fn value(&self) -> serde_json::Value {
            serde_json::to_value(self).unwrap_or_default()
        }
    }
}

fn patch<'m>(
    devices: &'m mut HashMap<(String, String), DevicePatch>,
    rollout_id: &str,
    device_id: &str,
    at: DateTime<Utc>,
) -> &'m mut DevicePatch {
    let d = devices
        .entry((rollout_id.to_owned(), device_id.to_owned()))
        .or_default();
    d.updated_at = at;
    d
}

impl RolloutBatch {
    /// Folds a batch, in order.
    pub(crate) fn fold(events: &[Positioned]) -> Self {
        let mut b = RolloutBatch::default();
        let (new_rollouts, headers, devices, decisions) = (
            &mut b.new_rollouts,
            &mut b.headers,
            &mut b.devices,
            &mut b.decisions,
        );
        for p in events {
            let e = &p.event;
            let at = ts(e.meta.occurred_at);
            let rid = e.key().to_owned();
            if let Some((summary, detail)) = decision(&e.payload) {
                decisions.push(Decision {
                    rollout_id: rid.clone(),
                    partition: p.position.partition,
                    offset: p.position.offset,
                    event_id: e.meta.event_id,
                    event_type: e.event_type().name(),
                    occurred_at: at,
                    summary,
                    detail,
                });
            }
            match &e.payload {
                Payload::UpdateRequested(r) => new_rollouts.push((r.clone(), at)),
                Payload::WaveStarted(w) => {
                    for (i, id) in w.device_ids.iter().enumerate() {
                        let d = patch(devices, &rid, id, at);
                        d.wave = Some(w.wave);
                        d.state = Some(DeviceRolloutState::Targeted.as_str());
                        d.from_version = w.from_versions.get(i).cloned();
                    }
                    let h = headers.entry(rid.clone()).or_default();
                    h.current_wave = Some(w.wave);
                    h.targeted += w.device_ids.len() as i64;
                    h.updated_at = at;
                }
                Payload::DevicesJoined(j) => {
                    for (i, id) in j.device_ids.iter().enumerate() {
                        let d = patch(devices, &rid, id, at);
                        d.wave = Some(j.wave);
                        d.state = Some(DeviceRolloutState::Targeted.as_str());
                        d.from_version = j.from_versions.get(i).cloned();
                        d.reason = Some("joined the fleet during the rollout".into());
                    }
                    let h = headers.entry(rid.clone()).or_default();
                    h.targeted += j.device_ids.len() as i64;
                    h.updated_at = at;
                }
                Payload::DeviceCommanded(c) => {
                    let d = patch(devices, &rid, &c.device_id, at);
                    if c.kind == CommandKind::Update {
                        d.state = Some(DeviceRolloutState::Commanded.as_str());
                        d.attempt = Some(c.attempt);
                        d.command_id = Some(c.command_id);
                        d.reason = Some(format!("update sent (attempt {})", c.attempt));
                    } else {
                        d.reason = Some(format!("{:?} command sent", c.kind).to_lowercase());
                    }
                }
                Payload::DeviceTimedOut(t) if t.retry_at.is_some() => {
                    let d = patch(devices, &rid, &t.device_id, at);
                    d.state = Some(DeviceRolloutState::Targeted.as_str());
                    d.reason = Some(format!("attempt {} timed out; retry scheduled", t.attempt));
                }
                Payload::DeviceOutcome(o) => {
                    let d = patch(devices, &rid, &o.device_id, at);
                    d.state = Some(o.state.as_str());
                    d.reason = Some(o.reason.clone());
                }
                Payload::RolloutStateChanged(c) => {
                    let h = headers.entry(rid.clone()).or_default();
                    h.state = Some((c.to.as_str(), c.reason.clone()));
                    if c.to == RolloutState::Running && h.started_at.is_none() {
                        h.started_at = Some(at);
                    }
                    if matches!(
                        c.to,
                        RolloutState::Completed | RolloutState::Aborted | RolloutState::RolledBack
                    ) {
                        h.finished_at = Some(at);
                    }
                    h.updated_at = at;
                }
                _ => {}
            }
        }
        b
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // test code: a panic is the failure report
    use super::*;
    use otaledger_domain::device_view::Position;
    use otaledger_domain::events::{
        DeviceCommanded, DeviceOutcome, DeviceRolloutState, DeviceTimedOut, DevicesJoined,
        RolloutStateChanged, WaveStarted,
    };
    use otaledger_domain::Event;

    const T0: i64 = 1_700_000_000_000_000;

    /// Events of rollout `r1`, one second apart, at offsets 0, 1, ...
    fn given(payloads: Vec<Payload>) -> Vec<Positioned> {
        payloads
            .into_iter()
            .enumerate()
            .map(|(i, payload)| Positioned {
                position: Position {
                    partition: 0,
                    offset: i as i64,
                },
                event: Event::new(
                    Uuid::from_u128(i as u128 + 1),
                    payload,
                    T0 + i as i64 * 1_000_000,
                    T0 + i as i64 * 1_000_000,
                    "",
                ),
            })
            .collect()
    }

    fn wave(wave: i32, ids: &[&str]) -> Payload {
        Payload::WaveStarted(WaveStarted {
            rollout_id: "r1".into(),
            wave,
            chunk: 0,
            chunks: 1,
            device_ids: ids.iter().map(|s| (*s).to_owned()).collect(),
            from_versions: ids.iter().map(|_| "1.0.0".to_owned()).collect(),
        })
    }

    fn commanded(device: &str, kind: CommandKind, attempt: i32) -> Payload {
        Payload::DeviceCommanded(DeviceCommanded {
            rollout_id: "r1".into(),
            device_id: device.into(),
            command_id: Uuid::from_u128(99),
            kind,
            attempt,
            deadline: T0,
        })
    }

    fn state_changed(from: RolloutState, to: RolloutState) -> Payload {
        Payload::RolloutStateChanged(RolloutStateChanged {
            rollout_id: "r1".into(),
            from,
            to,
            reason: format!("to {to:?}"),
        })
    }

    fn device<'b>(b: &'b RolloutBatch, id: &str) -> &'b DevicePatch {
        b.devices.get(&("r1".to_owned(), id.to_owned())).unwrap()
    }

    #[test]
    fn a_devices_events_of_one_batch_coalesce_into_its_last_state() {
        let b = RolloutBatch::fold(&given(vec![
            wave(0, &["d1", "d2"]),
            commanded("d1", CommandKind::Update, 1),
            Payload::DeviceOutcome(DeviceOutcome {
                rollout_id: "r1".into(),
                device_id: "d1".into(),
                command_id: Some(Uuid::from_u128(99)),
                state: DeviceRolloutState::Succeeded,
                reason: "installed".into(),
                verify_until: None,
            }),
        ]));
        assert_eq!(b.devices.len(), 2);
        let d1 = device(&b, "d1");
        assert_eq!(d1.state, Some("SUCCEEDED"));
        assert_eq!(d1.wave, Some(0));
        assert_eq!(d1.attempt, Some(1));
        assert_eq!(d1.command_id, Some(Uuid::from_u128(99)));
        assert_eq!(d1.from_version.as_deref(), Some("1.0.0"));
        assert_eq!(d1.reason.as_deref(), Some("installed"));
        assert_eq!(d1.updated_at, ts(T0 + 2_000_000), "the last event's time");
        assert_eq!(device(&b, "d2").state, Some("TARGETED"));
        let h = &b.headers["r1"];
        assert_eq!((h.current_wave, h.targeted), (Some(0), 2));
    }

    #[test]
    fn targeted_counts_add_up_over_waves_and_joiners() {
        let b = RolloutBatch::fold(&given(vec![
            wave(0, &["d1"]),
            wave(1, &["d2", "d3"]),
            Payload::DevicesJoined(DevicesJoined {
                rollout_id: "r1".into(),
                wave: 1,
                device_ids: vec!["d4".into()],
                from_versions: vec!["0.9.0".into()],
            }),
        ]));
        let h = &b.headers["r1"];
        assert_eq!((h.current_wave, h.targeted), (Some(1), 4));
        let d4 = device(&b, "d4");
        assert_eq!((d4.wave, d4.state), (Some(1), Some("TARGETED")));
        assert_eq!(d4.from_version.as_deref(), Some("0.9.0"));
        assert_eq!(
            d4.reason.as_deref(),
            Some("joined the fleet during the rollout")
        );
        assert_eq!(
            b.decisions.last().map(|d| d.summary.as_str()),
            Some("1 devices joined the fleet and were added to wave 1")
        );
    }

    #[test]
    fn a_rollback_command_explains_itself_without_changing_the_device_state() {
        let b = RolloutBatch::fold(&given(vec![commanded("d1", CommandKind::Rollback, 1)]));
        let d1 = device(&b, "d1");
        assert_eq!((d1.state, d1.attempt, d1.command_id), (None, None, None));
        assert_eq!(d1.reason.as_deref(), Some("rollback command sent"));
    }

    #[test]
    fn a_timeout_with_a_retry_targets_the_device_again_and_a_final_one_leaves_it() {
        let timed_out = |device: &str, retry_at| {
            Payload::DeviceTimedOut(DeviceTimedOut {
                rollout_id: "r1".into(),
                device_id: device.into(),
                command_id: Uuid::from_u128(99),
                attempt: 2,
                retry_at,
            })
        };
        let b = RolloutBatch::fold(&given(vec![
            timed_out("d1", Some(T0)),
            timed_out("d2", None),
        ]));
        assert_eq!(device(&b, "d1").state, Some("TARGETED"));
        assert_eq!(
            device(&b, "d1").reason.as_deref(),
            Some("attempt 2 timed out; retry scheduled")
        );
        assert!(
            !b.devices.contains_key(&("r1".to_owned(), "d2".to_owned())),
            "its outcome event says what became of it"
        );
    }

    #[test]
    fn the_header_keeps_the_first_start_and_the_final_state() {
        let b = RolloutBatch::fold(&given(vec![
            state_changed(RolloutState::Requested, RolloutState::Running),
            state_changed(RolloutState::Running, RolloutState::Paused),
            state_changed(RolloutState::Paused, RolloutState::Running),
            state_changed(RolloutState::Running, RolloutState::Aborted),
        ]));
        let h = &b.headers["r1"];
        assert_eq!(h.started_at, Some(ts(T0)), "started when it first ran");
        assert_eq!(h.finished_at, Some(ts(T0 + 3_000_000)));
        assert_eq!(
            h.state.as_ref().map(|(s, r)| (*s, r.as_str())),
            Some(("ABORTED", "to Aborted"))
        );
        assert_eq!(h.updated_at, ts(T0 + 3_000_000));
    }

    #[test]
    fn paused_and_running_are_not_finished_and_completed_and_rolled_back_are() {
        for (to, finished) in [
            (RolloutState::Paused, false),
            (RolloutState::Running, false),
            (RolloutState::Completed, true),
            (RolloutState::RolledBack, true),
        ] {
            let b = RolloutBatch::fold(&given(vec![state_changed(RolloutState::Running, to)]));
            assert_eq!(b.headers["r1"].finished_at.is_some(), finished, "{to:?}");
        }
    }

    #[test]
    fn only_rollout_level_decisions_enter_the_timeline() {
        let b = RolloutBatch::fold(&given(vec![
            wave(0, &["d1"]),
            commanded("d1", CommandKind::Update, 1),
            state_changed(RolloutState::Requested, RolloutState::Running),
        ]));
        let kinds: Vec<&str> = b.decisions.iter().map(|d| d.event_type).collect();
        assert_eq!(kinds, ["WaveStarted", "RolloutStateChanged"]);
        assert_eq!(
            b.decisions[0].summary,
            "wave 0 started with 1 devices (chunk 1 of 1)"
        );
        assert_eq!(b.decisions[1].summary, "REQUESTED → RUNNING: to Running");
        assert_eq!((b.decisions[1].partition, b.decisions[1].offset), (0, 2));
        assert!(b.new_rollouts.is_empty());
    }

    #[test]
    fn every_request_and_verdict_enters_the_timeline_with_its_inputs() {
        use otaledger_domain::events::{
            OperatorRequest, Release, StateCounts, Strategy, TargetSelector, ThresholdEvaluated,
            Verdict,
        };
        // Alice's pause, resume or abort request.
        let asked = |request: fn(OperatorRequest) -> Payload, reason: &str| {
            request(OperatorRequest {
                rollout_id: "r1".into(),
                requested_by: "alice".into(),
                reason: reason.into(),
            })
        };
        let request = UpdateRequested {
            catalogue: None,
            rollout_id: "r1".into(),
            requested_by: "alice".into(),
            release: Release {
                version: "2.0.0".into(),
                artifact_uri: "https://a/fw.bin".into(),
                sha256: "ab".repeat(32),
                size_bytes: 10,
                signature: "s".into(),
            },
            selector: TargetSelector::default(),
            strategy: Strategy::default(),
        };
        let b = RolloutBatch::fold(&given(vec![
            Payload::UpdateRequested(request.clone()),
            asked(Payload::PauseRequested, "lunch"),
            asked(Payload::ResumeRequested, "back"),
            asked(Payload::AbortRequested, "enough"),
            Payload::ThresholdEvaluated(ThresholdEvaluated {
                rollout_id: "r1".into(),
                wave: 0,
                counts: StateCounts::default(),
                success_threshold_pct: 95.0,
                failure_threshold_pct: 5.0,
                min_devices_for_verdict: 1,
                rule: "failures at or over 5%".into(),
                verdict: Verdict::Abort,
            }),
        ]));
        let summaries: Vec<&str> = b.decisions.iter().map(|d| d.summary.as_str()).collect();
        assert_eq!(
            summaries,
            [
                "alice requested release 2.0.0 (4 waves: [1.0, 10.0, 50.0, 100.0] %)",
                "alice asked to pause: lunch",
                "alice asked to resume: back",
                "alice asked to abort: enough",
                "Abort: failures at or over 5%",
            ]
        );
        assert_eq!(b.decisions[0].detail["release"]["version"], "2.0.0");
        assert_eq!(b.decisions[3].detail["reason"], "enough");
        assert_eq!(b.decisions[4].detail["rule"], "failures at or over 5%");
        assert_eq!(b.new_rollouts.len(), 1);
        assert_eq!(b.new_rollouts[0].0, request);
        assert_eq!(b.new_rollouts[0].1, ts(T0));
    }
}

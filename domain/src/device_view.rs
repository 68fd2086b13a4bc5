//! The fleet view of one device, as a pure fold over its device events.
//!
//! The projector folds each batch of a device's events into a [`DeviceView`] patch and merges the
//! patch into the stored row with [`DeviceView::merge`]'s rules (written again in SQL). Because
//! `fold(a ++ b) == merge(fold(a), fold(b))`, batching never changes the result, and tests compare
//! the table with a plain in-memory fold of the whole topic.

use crate::events::{Event, Health, InstallOutcome, Payload};
use crate::time::Micros;

/// Where an event sits in the ledger: partition and offset of `ota.device-events`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub partition: i32,
    pub offset: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeviceView {
    pub device_id: String,
    pub model: Option<String>,
    pub site: Option<String>,
    pub tags: Option<Vec<String>>,
    pub gateway_id: Option<String>,
    pub hardware_rev: Option<String>,
    pub firmware_version: Option<String>,
    /// Earliest and latest time otaledger recorded an event of this device.
    pub first_seen_at: Micros,
    pub last_seen_at: Micros,
    /// Device-clock time of the latest heartbeat; `Some` exactly when `health` is.
    pub last_heartbeat_at: Option<Micros>,
    pub health: Option<Health>,
    pub events: i64,
    pub last_position: Position,
}

impl DeviceView {
    /// Whether an event changes the device view at all.
    #[must_use]
    pub fn is_relevant(event: &Event) -> bool {
        matches!(
            event.payload,
            Payload::DeviceRegistered(_)
                | Payload::Heartbeat(_)
                | Payload::InstallProgress(_)
                | Payload::InstallResult(_)
        )
    }

    /// Folds one event into the view (`None` when the device has not been seen yet).
    #[must_use]
    pub fn apply(view: Option<Self>, event: &Event, position: Position) -> Option<Self> {
        if !Self::is_relevant(event) {
            return view;
        }
        let mut v = view.unwrap_or_else(|| Self::unseen(event, position));
        v.absorb(event, position);
        Some(v)
    }

    /// The view of a device before its first event.
    fn unseen(event: &Event, position: Position) -> Self {
        let recorded = event.meta.recorded_at;
        DeviceView {
            device_id: event.key().to_owned(),
            model: None,
            site: None,
            tags: None,
            gateway_id: None,
            hardware_rev: None,
            firmware_version: None,
            first_seen_at: recorded,
            last_seen_at: recorded,
            last_heartbeat_at: None,
            health: None,
            events: 0,
            last_position: position,
        }
    }

    /// Folds one event of this device into the view in place (a fold over a large backlog
    /// keeps each view where it is instead of moving it out and back per event).
    pub fn absorb(&mut self, event: &Event, position: Position) {
        if !Self::is_relevant(event) {
            return;
        }
        let recorded = event.meta.recorded_at;
        self.first_seen_at = self.first_seen_at.min(recorded);
        self.last_seen_at = self.last_seen_at.max(recorded);
        self.events += 1;
        self.last_position = position;
        match &event.payload {
            Payload::DeviceRegistered(r) => {
                self.model = Some(r.model.clone());
                self.site = Some(r.site.clone());
                self.tags = Some(r.tags.clone());
                self.firmware_version = Some(r.firmware_version.clone());
                if r.gateway_id.is_some() {
                    self.gateway_id.clone_from(&r.gateway_id);
                }
                if r.hardware_rev.is_some() {
                    self.hardware_rev.clone_from(&r.hardware_rev);
                }
            }
            Payload::Heartbeat(h) => {
                self.firmware_version = Some(h.firmware_version.clone());
                if h.gateway_id.is_some() {
                    self.gateway_id.clone_from(&h.gateway_id);
                }
                self.health = Some(h.health.clone());
                self.last_heartbeat_at = Some(
                    self.last_heartbeat_at
                        .map_or(event.meta.occurred_at, |t| t.max(event.meta.occurred_at)),
                );
            }
            Payload::InstallResult(r) if r.outcome != InstallOutcome::Rejected => {
                self.firmware_version = Some(r.firmware_version.clone());
            }
            _ => {}
        }
    }

    /// Merges a patch (the fold of later events) into an older view.
    #[must_use]
    pub fn merge(old: Self, patch: Self) -> Self {
        let has_health = patch.health.is_some();
        DeviceView {
            device_id: patch.device_id,
            model: patch.model.or(old.model),
            site: patch.site.or(old.site),
            tags: patch.tags.or(old.tags),
            gateway_id: patch.gateway_id.or(old.gateway_id),
            hardware_rev: patch.hardware_rev.or(old.hardware_rev),
            firmware_version: patch.firmware_version.or(old.firmware_version),
            first_seen_at: old.first_seen_at.min(patch.first_seen_at),
            last_seen_at: old.last_seen_at.max(patch.last_seen_at),
            last_heartbeat_at: match (old.last_heartbeat_at, patch.last_heartbeat_at) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            },
            health: if has_health { patch.health } else { old.health },
            events: old.events + patch.events,
            last_position: patch.last_position,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{DeviceRegistered, Heartbeat, InstallResult};
    use uuid::Uuid;

    fn ev(t: i64, payload: Payload) -> Event {
        Event::new(Uuid::from_u128(t as u128), payload, t, t + 1, "t")
    }

    fn hb(fw: &str, temp: f32, signal: Option<i32>) -> Payload {
        Payload::Heartbeat(Heartbeat {
            device_id: "d1".into(),
            firmware_version: fw.into(),
            gateway_id: None,
            health: Health {
                uptime_s: 1,
                cpu_pct: 1.0,
                mem_pct: 2.0,
                temperature_c: temp,
                error_count: 0,
                signal_dbm: signal,
            },
        })
    }

    fn history() -> Vec<Event> {
        vec![
            ev(10, hb("1.0.0", 40.0, Some(-60))),
            ev(
                20,
                Payload::DeviceRegistered(DeviceRegistered {
                    device_id: "d1".into(),
                    model: "elevator-x".into(),
                    site: "berlin".into(),
                    tags: vec!["eu".into()],
                    firmware_version: "1.0.0".into(),
                    gateway_id: Some("gw1".into()),
                    hardware_rev: None,
                }),
            ),
            ev(30, hb("1.0.0", 41.0, None)),
            ev(
                40,
                Payload::InstallResult(InstallResult {
                    device_id: "d1".into(),
                    rollout_id: None,
                    command_id: None,
                    outcome: InstallOutcome::Succeeded,
                    firmware_version: "1.1.0".into(),
                    error_code: None,
                    message: None,
                }),
            ),
            ev(35, hb("1.1.0", 39.5, Some(-70))),
        ]
    }

    fn fold(events: &[Event], from: usize) -> Option<DeviceView> {
        events.iter().enumerate().fold(None, |v, (i, e)| {
            DeviceView::apply(
                v,
                e,
                Position {
                    partition: 0,
                    offset: (from + i) as i64,
                },
            )
        })
    }

    #[test]
    fn given_a_history_when_folded_then_the_latest_facts_win() {
        let v = fold(&history(), 0).unwrap();
        assert_eq!(v.model.as_deref(), Some("elevator-x"));
        assert_eq!(v.gateway_id.as_deref(), Some("gw1"));
        assert_eq!(v.firmware_version.as_deref(), Some("1.1.0"));
        assert_eq!(v.first_seen_at, 11);
        assert_eq!(v.last_seen_at, 41);
        // Device clocks may go backwards: the latest heartbeat time is the maximum seen.
        assert_eq!(v.last_heartbeat_at, Some(35));
        assert_eq!(v.health.unwrap().signal_dbm, Some(-70));
        assert_eq!(v.events, 5);
        assert_eq!(v.last_position.offset, 4);
    }

    #[test]
    fn batching_at_any_split_gives_the_same_view() {
        let events = history();
        let whole = fold(&events, 0).unwrap();
        for split in 1..events.len() {
            let a = fold(&events[..split], 0).unwrap();
            let b = fold(&events[split..], split).unwrap();
            assert_eq!(DeviceView::merge(a, b), whole, "split at {split}");
        }
    }

    #[test]
    fn a_heartbeat_without_signal_clears_the_old_signal() {
        let events = history();
        let a = fold(&events[..1], 0).unwrap();
        let b = fold(&events[2..3], 2).unwrap();
        assert_eq!(DeviceView::merge(a, b).health.unwrap().signal_dbm, None);
    }

    #[test]
    fn events_about_no_device_view_field_leave_the_view_alone() {
        use crate::events::{CancelCommand, CommandKind, DeviceCommanded};
        let cancel = ev(
            50,
            Payload::CancelCommand(CancelCommand {
                command_id: Uuid::nil(),
                device_id: "d1".into(),
                rollout_id: "r".into(),
                gateway_id: None,
                reason: "stop".into(),
            }),
        );
        let commanded = ev(
            60,
            Payload::DeviceCommanded(DeviceCommanded {
                rollout_id: "r".into(),
                device_id: "d1".into(),
                command_id: Uuid::nil(),
                kind: CommandKind::Update,
                attempt: 1,
                deadline: 0,
            }),
        );
        let pos = Position {
            partition: 0,
            offset: 9,
        };
        for e in [&cancel, &commanded] {
            assert!(!DeviceView::is_relevant(e));
            assert_eq!(DeviceView::apply(None, e, pos), None);
        }
        let v = fold(&history(), 0).unwrap();
        assert_eq!(
            DeviceView::apply(Some(v.clone()), &cancel, pos),
            Some(v.clone())
        );
        let mut w = v.clone();
        w.absorb(&commanded, pos);
        assert_eq!(w, v);
    }

    #[test]
    fn an_install_result_sets_the_firmware_unless_rejected() {
        let result = |outcome| {
            ev(
                50,
                Payload::InstallResult(InstallResult {
                    device_id: "d1".into(),
                    rollout_id: None,
                    command_id: None,
                    outcome,
                    firmware_version: "9.9.9".into(),
                    error_code: None,
                    message: None,
                }),
            )
        };
        let pos = |offset| Position {
            partition: 0,
            offset,
        };
        let v = fold(&history()[..2], 0).unwrap();
        assert_eq!(v.firmware_version.as_deref(), Some("1.0.0"));
        for (outcome, fw) in [
            (InstallOutcome::Succeeded, "9.9.9"),
            (InstallOutcome::Failed, "9.9.9"),
            (InstallOutcome::RolledBack, "9.9.9"),
            (InstallOutcome::Rejected, "1.0.0"),
        ] {
            let after = DeviceView::apply(Some(v.clone()), &result(outcome), pos(2)).unwrap();
            assert_eq!(after.firmware_version.as_deref(), Some(fw), "{outcome:?}");
            assert_eq!(after.events, v.events + 1, "{outcome:?}");
        }
    }
}

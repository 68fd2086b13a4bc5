//! A fence in the ledger itself for single writers (ADR 0039): what a writer that lost its
//! ownership without noticing (a process frozen, then thawed) appends afterwards is read by
//! nobody.
//!
//! A fenced writer stamps each record with its scope and the epoch it owns the scope with
//! (headers [`WRITER`] and [`WRITER_EPOCH`]). A new owner, before it reads anything, appends a
//! marker (header [`FENCE`]) with its epoch to every partition its records may reach. Readers
//! keep, per partition, the highest marker epoch of each scope ([`Fences`]) and drop a stamped
//! record whose epoch is below it: the log's order alone decides, so every reader (the saga, the
//! projections, the dispatcher, replay and audit) agrees on what counts, and a replay agrees
//! with the live run. Markers themselves are never handed on.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Header naming the writer's scope, e.g. `saga/3`.
pub const WRITER: &str = "writer";
/// Header carrying the epoch the writer owns its scope with.
pub const WRITER_EPOCH: &str = "writer-epoch";
/// Header marking a fence: the record raises its scope's fence to its epoch.
pub const FENCE: &str = "fence";

/// A writer's scope and the epoch it owns it with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Writer {
    pub scope: String,
    pub epoch: i64,
}

impl Writer {
    /// The rollout saga owning partition `partition` of `ota.rollout-events`.
    #[must_use]
    pub fn saga(partition: i32, epoch: i64) -> Self {
        Writer {
            scope: format!("saga/{partition}"),
            epoch,
        }
    }
}

/// What a record's headers say of its writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stamp {
    /// Not written by a fenced writer: always read.
    None,
    /// Written by this writer.
    Record(Writer),
    /// This writer's fence marker.
    Marker(Writer),
}

impl Stamp {
    /// Reads the stamp from a record's headers. A scope without a readable epoch counts as
    /// epoch 0, below every owner's (epochs start at 1), so a mangled stamp is never trusted.
    pub fn from_headers<'a>(headers: impl Iterator<Item = (&'a str, &'a [u8])>) -> Self {
        let mut scope = None;
        let mut epoch = 0;
        let mut marker = false;
        for (key, value) in headers {
            match key {
                WRITER => scope = std::str::from_utf8(value).ok().map(str::to_owned),
                WRITER_EPOCH => {
                    epoch = std::str::from_utf8(value)
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                }
                FENCE => marker = true,
                _ => {}
            }
        }
        match scope {
            None => Stamp::None,
            Some(scope) if marker => Stamp::Marker(Writer { scope, epoch }),
            Some(scope) => Stamp::Record(Writer { scope, epoch }),
        }
    }
}

/// What a reader does with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Hand it on.
    Read,
    /// A marker: the fence is raised (or already higher); not handed on.
    Marker,
    /// Written by an owner older than a fence before it: not handed on.
    Stale,
}

/// Per scope, the highest marker epoch read so far in one partition. Kept with a consumer's
/// offsets, so that reading on from a stored offset judges as reading from the start would.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Fences(BTreeMap<String, i64>);

impl Fences {
    /// Judges the next record of the partition, raising the fence at a marker.
    pub fn judge(&mut self, stamp: &Stamp) -> Verdict {
        match stamp {
            Stamp::None => Verdict::Read,
            Stamp::Record(w) => {
                if self.0.get(&w.scope).is_some_and(|fence| w.epoch < *fence) {
                    Verdict::Stale
                } else {
                    Verdict::Read
                }
            }
            Stamp::Marker(w) => {
                let fence = self.0.entry(w.scope.clone()).or_insert(w.epoch);
                *fence = (*fence).max(w.epoch);
                Verdict::Marker
            }
        }
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The fence of `scope`, if a marker of it was read.
    #[must_use]
    pub fn get(&self, scope: &str) -> Option<i64> {
        self.0.get(scope).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(scope: &str, epoch: i64) -> Stamp {
        Stamp::Record(Writer {
            scope: scope.to_owned(),
            epoch,
        })
    }

    fn marker(scope: &str, epoch: i64) -> Stamp {
        Stamp::Marker(Writer {
            scope: scope.to_owned(),
            epoch,
        })
    }

    fn judged(fences: &mut Fences, stamps: &[Stamp]) -> Vec<Verdict> {
        stamps.iter().map(|s| fences.judge(s)).collect()
    }

    #[test]
    fn without_a_marker_every_record_is_read() {
        let mut f = Fences::default();
        assert_eq!(
            judged(
                &mut f,
                &[Stamp::None, record("saga/0", 1), record("saga/0", 0)]
            ),
            [Verdict::Read; 3]
        );
        assert!(f.is_empty());
    }

    #[test]
    fn after_a_marker_only_its_epoch_and_later_are_read() {
        let mut f = Fences::default();
        let verdicts = judged(
            &mut f,
            &[
                record("saga/0", 4),
                marker("saga/0", 5),
                record("saga/0", 4),
                record("saga/0", 5),
                record("saga/0", 6),
                Stamp::None,
            ],
        );
        assert_eq!(
            verdicts,
            [
                Verdict::Read,
                Verdict::Marker,
                Verdict::Stale,
                Verdict::Read,
                Verdict::Read,
                Verdict::Read
            ]
        );
        assert_eq!(f.get("saga/0"), Some(5));
    }

    #[test]
    fn a_late_lower_marker_never_lowers_the_fence() {
        let mut f = Fences::default();
        f.judge(&marker("saga/1", 7));
        assert_eq!(f.judge(&marker("saga/1", 6)), Verdict::Marker);
        assert_eq!(f.get("saga/1"), Some(7));
        assert_eq!(f.judge(&record("saga/1", 6)), Verdict::Stale);
    }

    #[test]
    fn scopes_are_fenced_apart() {
        let mut f = Fences::default();
        f.judge(&marker("saga/0", 9));
        assert_eq!(f.judge(&record("saga/1", 1)), Verdict::Read);
        assert_eq!(f.judge(&record("saga/0", 8)), Verdict::Stale);
    }

    #[test]
    fn stamps_are_read_from_headers() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            Stamp::from_headers(pairs.iter().map(|(k, v)| (*k, v.as_bytes())))
        };
        assert_eq!(h(&[("event-type", "WaveStarted")]), Stamp::None);
        assert_eq!(
            h(&[("writer", "saga/2"), ("writer-epoch", "12")]),
            record("saga/2", 12)
        );
        assert_eq!(
            h(&[("writer", "saga/2"), ("writer-epoch", "12"), ("fence", "")]),
            marker("saga/2", 12)
        );
        // A stamp whose epoch cannot be read is below every fence.
        assert_eq!(
            h(&[("writer", "saga/2"), ("writer-epoch", "x")]),
            record("saga/2", 0)
        );
        assert_eq!(
            Writer::saga(3, 4),
            Writer {
                scope: "saga/3".into(),
                epoch: 4
            }
        );
    }

    #[test]
    fn fences_round_trip_as_a_json_object() {
        let mut f = Fences::default();
        f.judge(&marker("saga/0", 3));
        let json = serde_json::to_string(&f).unwrap_or_default();
        assert_eq!(json, r#"{"saga/0":3}"#);
        assert_eq!(serde_json::from_str::<Fences>(&json).ok(), Some(f));
    }
}

//! Each device's history, folded from `ota.device-events`: one row per registration and install
//! report, heartbeats summarised as runs per firmware version (the audit timeline's rules), so
//! the API pages through a device's life without scanning the ledger.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use otaledger_domain::audit::describe;
use otaledger_domain::events::Payload;
use otaledger_domain::time::Micros;
use otaledger_ledger::{Positioned, Projection};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use crate::projector::ts;
use crate::{DbContext, Error, Result};

/// A silence longer than this starts a new heartbeat run.
pub const RUN_GAP_MICROS: Micros = 10 * 60 * 1_000_000;

/// Projects `ota.device-events` into `device_history`. Heartbeats fold into runs across
/// batches; each device's newest run is remembered once committed, so extending it needs no
/// read while this instance owns the device's partition.
#[derive(Debug, Default)]
pub struct HistoryProjector {
    /// The newest committed run per device.
    open: HashMap<String, OpenRun>,
    /// What the last `apply` wrote as each device's newest run, kept once it committed.
    staged_open: Vec<(String, OpenRun)>,
    /// Registrations and install reports folded since the last transaction.
    rows: Vec<Row_>,
    /// Heartbeat runs folded since the last transaction, per device.
    runs: HashMap<String, DeviceRuns>,
}

/// The most devices whose newest run is remembered before the memory starts over.
const OPEN_LIMIT: usize = 1_000_000;

/// (device, partition, offset, version, until, count, first heartbeat) of a stored run.
type RunRow = (String, i32, i64, String, DateTime<Utc>, i64, DateTime<Utc>);

/// A heartbeat run of a device: its row key (first heartbeat), version and last heartbeat.
#[derive(Debug, Clone)]
struct OpenRun {
    partition: i32,
    offset: i64,
    version: String,
    until: DateTime<Utc>,
    count: i64,
    first: DateTime<Utc>,
}

impl OpenRun {
    /// This stored run with `next`, a run folded later, joined to it when `next` continues it:
    /// the stored row's key, the later end, both counts.
    fn joined_by(&self, next: &OpenRun) -> Option<OpenRun> {
        self.continued_by(&next.version, next.first)
            .then(|| OpenRun {
                until: self.until.max(next.until),
                count: self.count + next.count,
                ..self.clone()
            })
    }

    /// Whether a heartbeat on `version` at `at` continues this run.
    fn continued_by(&self, version: &str, at: DateTime<Utc>) -> bool {
        self.version == version
            && (at - self.until).num_microseconds().unwrap_or(i64::MAX) <= RUN_GAP_MICROS
    }
}

/// A device's runs folded since the last transaction, oldest first.
#[derive(Debug)]
struct DeviceRuns {
    runs: Vec<OpenRun>,
    /// `false` while the first run may continue the device's stored run, which was not in
    /// memory when the run began (resolved in `apply` with one read for all such devices).
    resolved: bool,
    /// The first run is a stored row that this fold extends (every other run is a new row).
    extends_stored: bool,
}

#[derive(Debug)]
struct Row_ {
    device_id: String,
    partition: i32,
    offset: i64,
    at: DateTime<Utc>,
    event_type: &'static str,
    summary: String,
}

fn run_summary(r: &OpenRun) -> String {
    let secs = (r.until - r.first).num_seconds();
    format!("{} heartbeat(s) on {} over {secs} s", r.count, r.version)
}

impl HistoryProjector {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn fold_events(&mut self, events: &[Positioned]) {
        for p in events {
            let e = &p.event;
            let at = ts(e.meta.occurred_at);
            if let Payload::Heartbeat(h) = &e.payload {
                let fresh = || OpenRun {
                    partition: p.position.partition,
                    offset: p.position.offset,
                    version: h.firmware_version.clone(),
                    until: at,
                    count: 1,
                    first: at,
                };
                if let Some(d) = self.runs.get_mut(&h.device_id) {
                    match d.runs.last_mut() {
                        Some(r) if r.continued_by(&h.firmware_version, at) => {
                            r.until = r.until.max(at);
                            r.count += 1;
                        }
                        _ => d.runs.push(fresh()),
                    }
                    continue;
                }
                let d = match self.open.get(&h.device_id) {
                    Some(r) if r.continued_by(&h.firmware_version, at) => DeviceRuns {
                        runs: vec![OpenRun {
                            until: r.until.max(at),
                            count: r.count + 1,
                            ..r.clone()
                        }],
                        resolved: true,
                        extends_stored: true,
                    },
                    Some(_) => DeviceRuns {
                        runs: vec![fresh()],
                        resolved: true,
                        extends_stored: false,
                    },
                    None => DeviceRuns {
                        runs: vec![fresh()],
                        resolved: false,
                        extends_stored: false,
                    },
                };
                self.runs.insert(h.device_id.clone(), d);
                continue;
            }
            let Some(summary) = describe(&e.payload) else {
                continue;
            };
            let device = match &e.payload {
                Payload::DeviceRegistered(x) => &x.device_id,
                Payload::InstallProgress(x) => &x.device_id,
                Payload::InstallResult(x) => &x.device_id,
                _ => continue,
            };
            self.rows.push(Row_ {
                device_id: device.clone(),
                partition: p.position.partition,
                offset: p.position.offset,
                at,
                event_type: e.event_type().name(),
                summary,
            });
        }
    }

    /// Writes what was folded. Runs whose device was not in memory are first joined to the
    /// device's stored newest run when they continue it.
    async fn write(&mut self, tx: &mut PgConnection) -> Result<()> {
        self.staged_open.clear();
        let mut runs = std::mem::take(&mut self.runs);
        let rows = std::mem::take(&mut self.rows);
        let unresolved: Vec<&String> = runs
            .iter()
            .filter(|(_, d)| !d.resolved)
            .map(|(id, _)| id)
            .collect();
        if !unresolved.is_empty() {
            let stored: Vec<RunRow> = sqlx::query_as(
                "SELECT DISTINCT ON (device_id) device_id, partition, \"offset\", version,
                            until_at, count, occurred_at
                     FROM device_history WHERE device_id = ANY($1) AND event_type = 'Heartbeat'
                     ORDER BY device_id, occurred_at DESC, partition DESC, \"offset\" DESC",
            )
            .bind(&unresolved)
            .fetch_all(&mut *tx)
            .await
            .db("reading stored heartbeat runs")?;
            for (d, partition, offset, version, until, count, first) in stored {
                let Some(dr) = runs.get_mut(&d) else { continue };
                let stored = OpenRun {
                    partition,
                    offset,
                    version,
                    until,
                    count,
                    first,
                };
                if let Some(r) = dr.runs.first_mut() {
                    if let Some(joined) = stored.joined_by(r) {
                        dr.extends_stored = true;
                        *r = joined;
                    }
                }
            }
        }
        // A run is keyed by its first heartbeat. Rows keyed by a position in this transaction
        // cannot exist yet (positions are applied once, with their offsets), so they are
        // copied in; only runs extending a stored row are updated.
        let mut copy = String::new();
        for r in &rows {
            copy_row(
                &mut copy,
                &r.device_id,
                (r.partition, r.offset),
                r.at,
                r.event_type,
                &r.summary,
                None,
            );
        }
        let mut updates = (vec![], vec![], vec![], vec![], vec![], vec![]);
        for (d, dr) in runs {
            for (i, r) in dr.runs.iter().enumerate() {
                if i == 0 && dr.extends_stored {
                    updates.0.push(d.clone());
                    updates.1.push(r.partition);
                    updates.2.push(r.offset);
                    updates.3.push(run_summary(r));
                    updates.4.push(r.until);
                    updates.5.push(r.count);
                } else {
                    copy_row(
                        &mut copy,
                        &d,
                        (r.partition, r.offset),
                        r.first,
                        "Heartbeat",
                        &run_summary(r),
                        Some(r),
                    );
                }
            }
            if let Some(last) = dr.runs.into_iter().last() {
                self.staged_open.push((d, last));
            }
        }
        if !copy.is_empty() {
            let mut c = tx
                .copy_in_raw(
                    "COPY device_history (device_id, partition, \"offset\", occurred_at,
                                          event_type, summary, version, until_at, count)
                     FROM STDIN",
                )
                .await
                .db("copying device history")?;
            c.send(copy.into_bytes())
                .await
                .db("copying device history")?;
            c.finish().await.db("copying device history")?;
        }
        if !updates.0.is_empty() {
            sqlx::query(
                "UPDATE device_history h SET summary = u.summary, until_at = u.until_at,
                        count = u.count
                 FROM unnest($1::text[], $2::int[], $3::bigint[], $4::text[],
                             $5::timestamptz[], $6::bigint[])
                      AS u(device_id, partition, \"offset\", summary, until_at, count)
                 WHERE h.device_id = u.device_id AND h.partition = u.partition
                   AND h.\"offset\" = u.\"offset\"",
            )
            .bind(&updates.0)
            .bind(&updates.1)
            .bind(&updates.2)
            .bind(&updates.3)
            .bind(&updates.4)
            .bind(&updates.5)
            .execute(&mut *tx)
            .await
            .db("extending heartbeat runs")?;
        }
        Ok(())
    }
}

/// One `device_history` row in COPY's text format.
fn copy_row(
    out: &mut String,
    device: &str,
    (partition, offset): (i32, i64),
    at: DateTime<Utc>,
    event_type: &str,
    summary: &str,
    run: Option<&OpenRun>,
) {
    use std::fmt::Write;
    let time = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    copy_text(out, device);
    let _ = write!(out, "\t{partition}\t{offset}\t{}\t", time(at));
    copy_text(out, event_type);
    out.push('\t');
    copy_text(out, summary);
    match run {
        Some(r) => {
            out.push('\t');
            copy_text(out, &r.version);
            let _ = writeln!(out, "\t{}\t{}", time(r.until), r.count);
        }
        None => out.push_str("\t\\N\t\\N\t1\n"),
    }
}

/// A value escaped for COPY's text format.
fn copy_text(out: &mut String, value: &str) {
    for ch in value.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

impl Projection for HistoryProjector {
    async fn apply(
        &mut self,
        tx: &mut PgConnection,
        events: &[Positioned],
    ) -> otaledger_ledger::Result<()> {
        self.fold_events(events);
        Ok(self.write(tx).await?)
    }

    fn committed(&mut self, _events: &[Positioned]) {
        if self.open.len() + self.staged_open.len() > OPEN_LIMIT {
            self.open.clear();
        }
        self.open.extend(self.staged_open.drain(..));
    }

    fn ownership_changed(&mut self) {
        self.open.clear();
        self.staged_open.clear();
        self.rows.clear();
        self.runs.clear();
    }

    fn fold(&mut self, events: &[Positioned]) -> bool {
        self.fold_events(events);
        true
    }

    fn folded_rows(&self) -> usize {
        self.rows.len() + self.runs.len()
    }
}

row_type! {
    /// One entry of a device's history.
    #[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
    pub struct HistoryEntry {
        pub occurred_at: DateTime<Utc>,
        pub event_type: String,
        pub summary: String,
        /// Heartbeat runs: the firmware, the last heartbeat of the run and how many.
        pub version: Option<String>,
        pub until: Option<DateTime<Utc>>,
        pub count: i64,
        /// Where the (first) event sits in `ota.device-events`.
        pub partition: i32,
        pub offset: i64,
    }
}

/// A page of a device's history, oldest first; the cursor is the last entry's
/// `occurred_at_micros.partition.offset`.
pub async fn history(
    pool: &PgPool,
    device_id: &str,
    cursor: Option<&str>,
    limit: i64,
) -> Result<Vec<HistoryEntry>> {
    let after = match cursor {
        None => None,
        Some(c) => Some(parse_cursor(c).ok_or_else(|| {
            Error::InvalidQuery("cursor must be the next_cursor of a previous page".into())
        })?),
    };
    sqlx::query_as(
        "SELECT occurred_at, event_type, summary, version, until_at AS \"until\", count, partition, \"offset\"
         FROM device_history WHERE device_id = $1
           AND ($2::bigint IS NULL OR (occurred_at, partition, \"offset\") >
                (TIMESTAMPTZ 'epoch' + $2::bigint * INTERVAL '1 microsecond', $3, $4))
         ORDER BY occurred_at, partition, \"offset\" LIMIT $5",
    )
    .bind(device_id)
    .bind(after.map(|((t, _), _)| t))
    .bind(after.map_or(0, |((_, p), _)| p))
    .bind(after.map_or(0, |(_, o)| o))
    .bind(limit)
    .fetch_all(pool)
    .await
    .db("reading device history")
}

/// The form of a history cursor, `micros.partition.offset`: digits few enough that each part
/// fits its type, so every cursor of this form is read (the OpenAPI document states it).
pub const CURSOR_PATTERN: &str = r"^-?[0-9]{1,18}\.-?[0-9]{1,9}\.-?[0-9]{1,18}$";

/// Reads a cursor of [`CURSOR_PATTERN`]'s form.
fn parse_cursor(c: &str) -> Option<((i64, i32), i64)> {
    fn part<T: std::str::FromStr>(s: &str, digits: usize) -> Option<T> {
        let d = s.strip_prefix('-').unwrap_or(s);
        let ok = !d.is_empty() && d.len() <= digits && d.bytes().all(|b| b.is_ascii_digit());
        ok.then(|| s.parse().ok()).flatten()
    }
    let mut parts = c.split('.');
    let (t, p, o) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    // Before PostgreSQL's earliest time (4713 BC) is the same place as that time: a cursor
    // the pattern allows must not become a query PostgreSQL refuses.
    let t = part::<i64>(t, 18)?.max(PG_EARLIEST_MICROS);
    Some(((t, part(p, 9)?), part(o, 18)?))
}

/// PostgreSQL's earliest `timestamptz`, 4713-11-24 00:00:00 UTC (4714 BC), in microseconds
/// since the epoch.
const PG_EARLIEST_MICROS: i64 = -210_866_803_200_000_000;

/// The cursor that continues after `e`.
#[must_use]
pub fn cursor_after(e: &HistoryEntry) -> String {
    format!(
        "{}.{}.{}",
        e.occurred_at.timestamp_micros(),
        e.partition,
        e.offset
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use otaledger_domain::device_view::Position;
    use otaledger_domain::events::{
        DeviceRegistered, Health, Heartbeat, InstallOutcome, InstallPhase, InstallProgress,
        InstallResult,
    };
    use otaledger_domain::Event;

    const S: Micros = 1_000_000;

    fn at(offset: i64, micros: Micros, payload: Payload) -> Positioned {
        Positioned {
            position: Position {
                partition: 1,
                offset,
            },
            event: Event::at(payload, micros, micros, "t"),
        }
    }

    fn heartbeat(offset: i64, micros: Micros, device: &str, version: &str) -> Positioned {
        at(
            offset,
            micros,
            Payload::Heartbeat(Heartbeat {
                device_id: device.into(),
                firmware_version: version.into(),
                gateway_id: None,
                health: Health {
                    uptime_s: 1,
                    cpu_pct: 1.0,
                    mem_pct: 1.0,
                    temperature_c: 20.0,
                    error_count: 0,
                    signal_dbm: None,
                },
            }),
        )
    }

    /// (version, first, until, count, row offset) of a device's folded runs.
    fn runs(h: &HistoryProjector, device: &str) -> Vec<(String, Micros, Micros, i64, i64)> {
        h.runs[device]
            .runs
            .iter()
            .map(|r| {
                let micros = |t: DateTime<Utc>| t.timestamp_micros();
                (
                    r.version.clone(),
                    micros(r.first),
                    micros(r.until),
                    r.count,
                    r.offset,
                )
            })
            .collect()
    }

    #[test]
    fn a_cursor_before_postgres_time_reads_from_its_start() {
        assert_eq!(
            parse_cursor("-816831278377946779.462850008.4127"),
            Some(((PG_EARLIEST_MICROS, 462_850_008), 4127))
        );
        assert_eq!(parse_cursor("-5.1.2"), Some(((-5, 1), 2)));
    }

    #[test]
    fn given_heartbeats_when_folded_then_runs_break_on_a_new_version_or_a_gap_over_ten_minutes() {
        let mut h = HistoryProjector::new();
        h.fold_events(&[
            heartbeat(0, 0, "d", "1.0"),
            heartbeat(1, 60 * S, "d", "1.0"),
            // Exactly the gap still continues the run; one microsecond more does not.
            heartbeat(2, 60 * S + RUN_GAP_MICROS, "d", "1.0"),
            heartbeat(3, 120 * S + 2 * RUN_GAP_MICROS + 1, "d", "1.0"),
            heartbeat(4, 121 * S + 2 * RUN_GAP_MICROS + 1, "d", "2.0"),
            // Out of order within the run: the end stays the latest.
            heartbeat(5, 120 * S + 2 * RUN_GAP_MICROS + 1, "d", "2.0"),
        ]);
        let gap = RUN_GAP_MICROS;
        assert_eq!(
            runs(&h, "d"),
            [
                ("1.0".into(), 0, 60 * S + gap, 3, 0),
                (
                    "1.0".into(),
                    120 * S + 2 * gap + 1,
                    120 * S + 2 * gap + 1,
                    1,
                    3
                ),
                (
                    "2.0".into(),
                    121 * S + 2 * gap + 1,
                    121 * S + 2 * gap + 1,
                    2,
                    4
                ),
            ]
        );
        let d = &h.runs["d"];
        assert!(!d.resolved && !d.extends_stored, "no stored run known yet");
    }

    #[test]
    fn given_a_committed_run_when_a_heartbeat_continues_it_then_the_stored_row_is_extended() {
        let mut h = HistoryProjector::new();
        let first = ts(0);
        h.open.insert(
            "d".into(),
            OpenRun {
                partition: 3,
                offset: 7,
                version: "1.0".into(),
                until: ts(100 * S),
                count: 5,
                first,
            },
        );
        h.fold_events(&[
            heartbeat(20, 100 * S + RUN_GAP_MICROS, "d", "1.0"),
            heartbeat(21, 50 * S, "e", "1.0"),
        ]);
        let d = &h.runs["d"];
        assert!(d.resolved && d.extends_stored);
        let r = &d.runs[0];
        assert_eq!(
            (r.partition, r.offset, r.count),
            (3, 7, 6),
            "the stored row's key"
        );
        assert_eq!((r.first, r.until), (first, ts(100 * S + RUN_GAP_MICROS)));
        // A stored run that the heartbeat does not continue: a new row, known to be new.
        let mut h2 = HistoryProjector::new();
        h2.open = h.open.clone();
        h2.fold_events(&[heartbeat(22, 100 * S + RUN_GAP_MICROS + 1, "d", "1.0")]);
        let d = &h2.runs["d"];
        assert!(d.resolved && !d.extends_stored);
        assert_eq!((d.runs[0].offset, d.runs[0].count), (22, 1));
        let mut h3 = HistoryProjector::new();
        h3.open = h.open.clone();
        h3.fold_events(&[heartbeat(23, 101 * S, "d", "2.0")]);
        assert!(!h3.runs["d"].extends_stored);
        // The stored run's end never moves back.
        let mut h4 = HistoryProjector::new();
        h4.open = h.open.clone();
        h4.fold_events(&[heartbeat(24, 10 * S, "d", "1.0")]);
        assert_eq!(h4.runs["d"].runs[0].until, ts(100 * S));
    }

    #[test]
    fn registrations_and_install_reports_become_rows_and_nothing_else_does() {
        let mut h = HistoryProjector::new();
        h.fold_events(&[
            at(
                0,
                5 * S,
                Payload::DeviceRegistered(DeviceRegistered {
                    device_id: "d".into(),
                    model: "m".into(),
                    site: "s".into(),
                    tags: vec![],
                    firmware_version: "1.0".into(),
                    gateway_id: None,
                    hardware_rev: None,
                }),
            ),
            at(
                1,
                5 * S + 1,
                Payload::InstallProgress(InstallProgress {
                    device_id: "d".into(),
                    rollout_id: Some("r".into()),
                    command_id: None,
                    phase: InstallPhase::Downloading,
                    percent: 10,
                }),
            ),
            at(
                2,
                6 * S,
                Payload::InstallResult(InstallResult {
                    device_id: "d".into(),
                    rollout_id: Some("r".into()),
                    command_id: None,
                    outcome: InstallOutcome::Succeeded,
                    firmware_version: "2.0".into(),
                    error_code: None,
                    message: None,
                }),
            ),
        ]);
        let rows: Vec<(&str, i64, &str)> = h
            .rows
            .iter()
            .map(|r| (r.device_id.as_str(), r.offset, r.event_type))
            .collect();
        assert_eq!(
            rows,
            [
                ("d", 0, "DeviceRegistered"),
                ("d", 1, "InstallProgress"),
                ("d", 2, "InstallResult")
            ]
        );
        assert_eq!(h.rows[0].at, ts(5 * S));
        assert_eq!(h.rows[0].partition, 1);
        assert!(h.runs.is_empty());
    }

    #[test]
    fn a_stored_run_is_joined_by_a_later_run_that_continues_it() {
        let run = |offset: i64, version: &str, first: Micros, until: Micros, count: i64| OpenRun {
            partition: 2,
            offset,
            version: version.into(),
            until: ts(until),
            count,
            first: ts(first),
        };
        let stored = run(7, "1.0", 0, 100 * S, 5);
        let joined = stored
            .joined_by(&run(
                30,
                "1.0",
                100 * S + RUN_GAP_MICROS,
                200 * S + RUN_GAP_MICROS,
                3,
            ))
            .expect("continues");
        assert_eq!(
            (joined.partition, joined.offset),
            (2, 7),
            "the stored row's key"
        );
        assert_eq!(
            (joined.first, joined.until),
            (ts(0), ts(200 * S + RUN_GAP_MICROS))
        );
        assert_eq!(joined.count, 8);
        // A later run that starts before the stored end keeps the later end.
        let inside = stored
            .joined_by(&run(31, "1.0", 50 * S, 60 * S, 1))
            .expect("continues");
        assert_eq!((inside.until, inside.count), (ts(100 * S), 6));
        assert!(stored
            .joined_by(&run(32, "1.0", 100 * S + RUN_GAP_MICROS + 1, 300 * S, 1))
            .is_none());
        assert!(stored
            .joined_by(&run(33, "2.0", 100 * S, 300 * S, 1))
            .is_none());
    }

    #[test]
    fn a_run_summary_counts_heartbeats_over_its_span() {
        let r = OpenRun {
            partition: 0,
            offset: 0,
            version: "1.0".into(),
            until: ts(90 * S),
            count: 4,
            first: ts(30 * S),
        };
        assert_eq!(run_summary(&r), "4 heartbeat(s) on 1.0 over 60 s");
    }

    #[test]
    fn cursors_are_read_exactly_in_the_documented_form() {
        assert_eq!(parse_cursor("1700.2.42"), Some(((1700, 2), 42)));
        assert_eq!(parse_cursor("-5.0.-1"), Some(((-5, 0), -1)));
        let widest = format!("{0}.{1}.{0}", "9".repeat(18), "9".repeat(9));
        assert!(parse_cursor(&widest).is_some());
        for bad in [
            "",
            "0",
            "1.2",
            "1.2.3.4",
            "+1.2.3",
            "a.2.3",
            "1..3",
            "1.2.",
            "-.2.3",
            "1.1234567890.3",
            "1234567890123456789.2.3",
            " 1.2.3",
        ] {
            assert_eq!(parse_cursor(bad), None, "{bad:?}");
        }
        let e = HistoryEntry {
            occurred_at: ts(1_700_000_000_123_456),
            event_type: String::new(),
            summary: String::new(),
            version: None,
            until: None,
            count: 1,
            partition: 3,
            offset: 9,
        };
        assert_eq!(
            parse_cursor(&cursor_after(&e)),
            Some(((1_700_000_000_123_456, 3), 9))
        );
    }

    #[test]
    fn copy_rows_escape_what_copy_text_format_would_misread() {
        let at = ts(1_700_000_000_123_456);
        let mut out = String::new();
        copy_row(
            &mut out,
            "dev\t1",
            (2, 42),
            at,
            "InstallResult",
            "failed: disk\\full\nretry",
            None,
        );
        assert_eq!(
            out,
            "dev\\t1\t2\t42\t2023-11-14T22:13:20.123456Z\tInstallResult\t\
             failed: disk\\\\full\\nretry\t\\N\t\\N\t1\n"
        );
    }
}

//! Each device's history, folded from `ota.device-events`: one row per registration and install
//! report, heartbeats summarised as runs per firmware version (the audit timeline's rules), so
//! the API pages through a device's life without scanning the ledger.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use otaledger_consumers::{BoxFuture, Positioned, Projection};
use otaledger_domain::audit::describe;
use otaledger_domain::events::Payload;
use otaledger_domain::time::Micros;
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::{FromRow, PgConnection, PgPool, Row};

use crate::projector::ts;
use crate::{DbContext, Error, Result};

/// A silence longer than this starts a new heartbeat run.
pub const RUN_GAP_MICROS: Micros = 10 * 60 * 1_000_000;

/// Projects `ota.device-events` into `device_history`.
#[derive(Debug, Default)]
pub struct HistoryProjector;

/// (device, partition, offset, version, until, count, first heartbeat) of a stored run.
type RunRow = (String, i32, i64, String, DateTime<Utc>, i64, DateTime<Utc>);

/// The open heartbeat run of a device: its row key, version and last heartbeat.
#[derive(Debug, Clone)]
struct OpenRun {
    partition: i32,
    offset: i64,
    version: String,
    until: DateTime<Utc>,
    count: i64,
    first: DateTime<Utc>,
}

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
    async fn apply_batch(tx: &mut PgConnection, events: &[Positioned]) -> Result<()> {
        let beating: Vec<String> = events
            .iter()
            .filter_map(|p| match &p.event.payload {
                Payload::Heartbeat(h) => Some(h.device_id.clone()),
                _ => None,
            })
            .collect();
        let mut runs: HashMap<String, OpenRun> = HashMap::new();
        if !beating.is_empty() {
            let rows: Vec<RunRow> = sqlx::query_as(
                "SELECT DISTINCT ON (device_id) device_id, partition, \"offset\", version,
                            until_at, count, occurred_at
                     FROM device_history WHERE device_id = ANY($1) AND event_type = 'Heartbeat'
                     ORDER BY device_id, occurred_at DESC, partition DESC, \"offset\" DESC",
            )
            .bind(&beating)
            .fetch_all(&mut *tx)
            .await
            .db("reading open heartbeat runs")?;
            for (d, partition, offset, version, until, count, first) in rows {
                runs.insert(
                    d,
                    OpenRun {
                        partition,
                        offset,
                        version,
                        until,
                        count,
                        first,
                    },
                );
            }
        }
        let mut rows = Vec::new();
        let mut touched: HashMap<String, OpenRun> = HashMap::new();
        // Runs this batch extended and then closed with a new version or a silence.
        let mut closed: Vec<(String, OpenRun)> = Vec::new();
        for p in events {
            let e = &p.event;
            let at = ts(e.meta.occurred_at);
            if let Payload::Heartbeat(h) = &e.payload {
                let current = touched.get(&h.device_id).or_else(|| runs.get(&h.device_id));
                let extends = current.is_some_and(|r| {
                    r.version == h.firmware_version
                        && (at - r.until).num_microseconds().unwrap_or(i64::MAX) <= RUN_GAP_MICROS
                });
                let next = match current {
                    Some(r) if extends => OpenRun {
                        until: r.until.max(at),
                        count: r.count + 1,
                        ..r.clone()
                    },
                    _ => OpenRun {
                        partition: p.position.partition,
                        offset: p.position.offset,
                        version: h.firmware_version.clone(),
                        until: at,
                        count: 1,
                        first: at,
                    },
                };
                if let Some(previous) = touched.insert(h.device_id.clone(), next) {
                    if !extends {
                        closed.push((h.device_id.clone(), previous));
                    }
                }
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
            rows.push(Row_ {
                device_id: device.clone(),
                partition: p.position.partition,
                offset: p.position.offset,
                at,
                event_type: e.event_type().name(),
                summary,
            });
        }
        // A run is keyed by its first heartbeat: a new run is a new row, a longer one updates
        // its row.
        let mut cols = (
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
            vec![],
        );
        for r in rows {
            cols.0.push(r.device_id);
            cols.1.push(r.partition);
            cols.2.push(r.offset);
            cols.3.push(r.at);
            cols.4.push(r.event_type.to_owned());
            cols.5.push(r.summary);
            cols.6.push(None::<String>);
            cols.7.push(None::<DateTime<Utc>>);
            cols.8.push(1_i64);
        }
        for (d, r) in closed.into_iter().chain(touched) {
            cols.0.push(d);
            cols.1.push(r.partition);
            cols.2.push(r.offset);
            cols.3.push(r.first);
            cols.4.push("Heartbeat".to_owned());
            cols.5.push(run_summary(&r));
            cols.6.push(Some(r.version.clone()));
            cols.7.push(Some(r.until));
            cols.8.push(r.count);
        }
        if cols.0.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO device_history AS h (device_id, partition, \"offset\", occurred_at,
                                             event_type, summary, version, until_at, count)
             SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[], $4::timestamptz[],
                                  $5::text[], $6::text[], $7::text[], $8::timestamptz[], $9::bigint[])
             ON CONFLICT (device_id, partition, \"offset\") DO UPDATE SET
                summary = excluded.summary, until_at = excluded.until_at, count = excluded.count",
        )
        .bind(&cols.0)
        .bind(&cols.1)
        .bind(&cols.2)
        .bind(&cols.3)
        .bind(&cols.4)
        .bind(&cols.5)
        .bind(&cols.6)
        .bind(&cols.7)
        .bind(&cols.8)
        .execute(&mut *tx)
        .await
        .db("merging device history")?;
        Ok(())
    }
}

impl Projection for HistoryProjector {
    fn apply<'a>(
        &'a mut self,
        tx: &'a mut PgConnection,
        events: &'a [Positioned],
    ) -> BoxFuture<'a, otaledger_consumers::Result<()>> {
        Box::pin(async move {
            Self::apply_batch(tx, events)
                .await
                .map_err(|e| otaledger_consumers::Error::Other(e.to_string()))
        })
    }
}

/// One entry of a device's history.
#[derive(Debug, Clone, Serialize)]
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

impl FromRow<'_, PgRow> for HistoryEntry {
    fn from_row(row: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(HistoryEntry {
            occurred_at: row.try_get("occurred_at")?,
            event_type: row.try_get("event_type")?,
            summary: row.try_get("summary")?,
            version: row.try_get("version")?,
            until: row.try_get("until_at")?,
            count: row.try_get("count")?,
            partition: row.try_get("partition")?,
            offset: row.try_get("offset")?,
        })
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
        Some(c) => {
            let parts: Vec<&str> = c.split('.').collect();
            let parsed = match parts[..] {
                [t, p, o] => t
                    .parse::<i64>()
                    .ok()
                    .zip(p.parse::<i32>().ok())
                    .zip(o.parse::<i64>().ok()),
                _ => None,
            };
            Some(parsed.ok_or_else(|| {
                Error::InvalidQuery("cursor must be the next_cursor of a previous page".into())
            })?)
        }
    };
    sqlx::query_as(
        "SELECT occurred_at, event_type, summary, version, until_at, count, partition, \"offset\"
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

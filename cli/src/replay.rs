//! `otaledger replay`: read the ledger back, filter it, print it.
//!
//! Reads every partition of the chosen topics from the beginning (or an offset), decoding every
//! schema version; filters by device, rollout, event type and the events' own occurred-at time
//! (scanning: broker timestamp lookups are never used). It stops once it has passed the
//! partitions' high watermarks taken at the start and the topics have been quiet for a moment
//! (watermarks are a lower bound only, ADR 0005).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, SecondsFormat, Utc};
use otaledger_domain::EventType;
use otaledger_ledger::config::KafkaConfig;
use otaledger_ledger::reader::{Body, Decode, LedgerReader, ReaderConfig};
use serde_json::{json, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per line.
    Json,
    /// A readable table.
    Table,
}

/// What to replay.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Topic names (already prefixed).
    pub topics: Vec<String>,
    pub from_offset: i64,
    pub device: Option<String>,
    pub rollout: Option<String>,
    pub types: Vec<EventType>,
    /// Occurred-at bounds, in microseconds since the epoch (inclusive, exclusive).
    pub since: Option<i64>,
    pub until: Option<i64>,
    /// How long the topics must stay quiet after the watermarks before replay ends.
    pub idle: Duration,
}

/// What a replay saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub read: u64,
    pub printed: u64,
    pub undecodable: u64,
}

/// Formats microseconds since the epoch as RFC 3339.
#[must_use]
pub fn rfc3339(micros: i64) -> String {
    DateTime::<Utc>::from_timestamp_micros(micros).map_or_else(
        || micros.to_string(),
        |t| t.to_rfc3339_opts(SecondsFormat::Micros, true),
    )
}

/// Parses an RFC 3339 time into microseconds.
pub fn parse_time(text: &str) -> anyhow::Result<i64> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc).timestamp_micros())
        .with_context(|| format!("{text:?} is not an RFC 3339 time"))
}

fn field<'a>(payload: &'a Value, name: &str) -> Option<&'a str> {
    payload.get(name).and_then(Value::as_str)
}

/// One event that passed the filter, with where it sits.
#[derive(Debug)]
pub struct Found<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: &'a [u8],
    pub writer_version: u32,
    pub event: otaledger_domain::Event,
    pub payload: Value,
}

/// Replays the ledger into `out`.
pub async fn replay(
    kafka: &KafkaConfig,
    filter: &Filter,
    format: Format,
    out: &mut dyn Write,
) -> anyhow::Result<Stats> {
    if format == Format::Table {
        writeln!(
            out,
            "{:<27} {:<22} {:<20} {:<24} details",
            "occurred_at", "topic@partition:offset", "event_type", "key"
        )?;
    }
    let stats = scan(kafka, filter, &mut |f: Found<'_>| {
        let event_type = f.event.event_type();
        let t = f.event.meta.occurred_at;
        match format {
            Format::Json => {
                let line = json!({
                    "topic": f.topic, "partition": f.partition, "offset": f.offset,
                    "event_type": event_type.name(), "schema_version": f.writer_version,
                    "event_id": f.event.meta.event_id, "occurred_at": rfc3339(t),
                    "recorded_at": rfc3339(f.event.meta.recorded_at), "trace_id": f.event.meta.trace_id,
                    "key": String::from_utf8_lossy(f.key),
                    "payload": f.payload,
                });
                writeln!(out, "{line}")?;
            }
            Format::Table => {
                let mut details = f.payload.as_object().cloned().unwrap_or_default();
                details.remove("device_id");
                details.remove("rollout_id");
                writeln!(
                    out,
                    "{:<27} {:<22} {:<20} {:<24} {}",
                    rfc3339(t),
                    format!("{}@{}:{}", short(f.topic), f.partition, f.offset),
                    event_type.name(),
                    String::from_utf8_lossy(f.key),
                    Value::Object(details)
                )?;
            }
        }
        Ok(())
    })
    .await?;
    out.flush()?;
    Ok(stats)
}

/// Reads the ledger and hands every event that passes the filter to `visit`.
pub async fn scan(
    kafka: &KafkaConfig,
    filter: &Filter,
    visit: &mut dyn FnMut(Found<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<Stats> {
    let reader = LedgerReader::new(
        kafka,
        ReaderConfig::tool("replay", filter.topics.clone(), Decode::Events),
    )?;
    reader
        .assign_to_watermarks(|_, _| filter.from_offset)
        .await?;
    let progress = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut last_progress = Instant::now();
    let mut stats = Stats::default();
    reader
        .read_to_end(filter.idle, |batch| -> anyhow::Result<()> {
            for r in batch.records {
                stats.read += 1;
                let topic = reader.topics()[r.topic].as_str();
                let (partition, offset) = (r.position.partition, r.position.offset);
                let (event, writer_version, key) = match r.body {
                    Body::Event {
                        event,
                        writer_version,
                    } => {
                        let key = event.key().as_bytes().to_vec();
                        (event, writer_version, key)
                    }
                    Body::Undecodable { error, .. } => {
                        stats.undecodable += 1;
                        eprintln!("{topic}@{partition}:{offset}: cannot decode: {error}");
                        continue;
                    }
                    Body::Raw(_) => continue,
                };
                if !passes(filter, &event) {
                    continue;
                }
                let payload = serde_json::to_value(&event.payload)?;
                if !concerns(filter, &payload) {
                    continue;
                }
                stats.printed += 1;
                visit(Found {
                    topic,
                    partition,
                    offset,
                    key: &key,
                    writer_version,
                    event,
                    payload,
                })?;
            }
            if progress && last_progress.elapsed() > Duration::from_millis(200) {
                #[allow(clippy::cast_precision_loss)]
                let rate = stats.read as f64 / started.elapsed().as_secs_f64().max(1e-3);
                eprint!(
                    "\r  replayed {} records ({} shown), {:.0}/s   ",
                    stats.read, stats.printed, rate
                );
                last_progress = Instant::now();
            }
            Ok(())
        })
        .await?;
    if progress {
        eprintln!(
            "\r  replayed {} records ({} shown, {} undecodable)        ",
            stats.read, stats.printed, stats.undecodable
        );
    }
    Ok(stats)
}

/// Whether an event's type and occurred-at time pass the filter.
fn passes(filter: &Filter, event: &otaledger_domain::Event) -> bool {
    let t = event.meta.occurred_at;
    (filter.types.is_empty() || filter.types.contains(&event.event_type()))
        && filter.since.is_none_or(|s| t >= s)
        && filter.until.is_none_or(|u| t < u)
}

/// Whether an event's payload concerns the filter's device and rollout.
fn concerns(filter: &Filter, payload: &Value) -> bool {
    filter
        .device
        .as_deref()
        .is_none_or(|d| field(payload, "device_id") == Some(d))
        && filter
            .rollout
            .as_deref()
            .is_none_or(|r| field(payload, "rollout_id") == Some(r))
}

fn short(topic: &str) -> &str {
    topic.rsplit('.').next().unwrap_or(topic)
}

/// What an audit is about.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum AuditTarget {
    /// A device: heartbeats summarised (runs per firmware, version changes, silences), every
    /// registration, command and install report.
    Device {
        id: String,
        /// A silence longer than this many seconds between heartbeats is reported.
        #[arg(long, default_value_t = 300)]
        gap_s: i64,
    },
    /// A rollout: every request and every decision with its inputs and the rule that fired.
    Rollout { id: String },
    /// Access: every API token and device credential issued or revoked, by whom, when.
    Access,
}

/// The audit timeline of a device or a rollout, from every ledger topic.
pub async fn audit(
    kafka: &KafkaConfig,
    target: &AuditTarget,
    idle: Duration,
) -> anyhow::Result<Vec<otaledger_domain::audit::Line>> {
    let topics = kafka.topics();
    let mut filter = Filter {
        topics: vec![
            topics.device_events,
            topics.rollout_events,
            topics.device_commands,
        ],
        idle,
        ..Filter::default()
    };
    match target {
        AuditTarget::Device { id, .. } => filter.device = Some(id.clone()),
        AuditTarget::Rollout { id } => filter.rollout = Some(id.clone()),
        AuditTarget::Access => filter.topics = vec![topics.access_events],
    }
    let mut events = Vec::new();
    scan(kafka, &filter, &mut |f: Found<'_>| {
        events.push(f.event);
        Ok(())
    })
    .await?;
    // Topics interleave by time, not by offset: order by when things happened.
    events.sort_by_key(|e| e.meta.occurred_at);
    Ok(match target {
        AuditTarget::Device { gap_s, .. } => {
            otaledger_domain::audit::device_timeline(&events, gap_s.saturating_mul(1_000_000))
        }
        AuditTarget::Rollout { .. } => otaledger_domain::audit::rollout_timeline(&events),
        AuditTarget::Access => otaledger_domain::audit::access_timeline(&events),
    })
}

//! `otaledger export parquet`: every event of the ledger into Parquet files, partitioned by event
//! type and day (`type=<T>/day=<YYYY-MM-DD>/part-<segment>.parquet`), incremental and
//! crash-safe.
//!
//! Columns: the event's metadata (`event_id`, `occurred_at`, `recorded_at`, `trace_id`), where
//! it sits in the ledger (`_topic`, `_partition`, `_offset`), then the payload's fields with
//! Avro types mapped to Arrow (records to structs, enums to strings, arrays to lists,
//! `timestamp-micros` to UTC timestamps, unions with null to nullable columns).
//!
//! Exactly once across crashes: each flush is a numbered segment. Its files are written under
//! temporary names and renamed, then `_checkpoint.json` (renamed into place too) records the
//! segment number and the next offset of every partition. A run first deletes files of
//! segments after the checkpoint (a flush that crashed half-way) and continues from the
//! checkpoint's offsets, so no event is missing and none is written twice.

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use apache_avro::Schema as Avro;
use arrow_schema::{DataType, Field, Fields, Schema, TimeUnit};
use otaledger_domain::{Event, EventType};
use otaledger_ledger::config::KafkaConfig;
use otaledger_ledger::reader::{Body, Decode, LedgerReader, ReaderConfig};
use otaledger_schemas::Schemas;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

const CHECKPOINT: &str = "_checkpoint.json";

#[derive(Debug, Clone)]
pub struct ExportArgs {
    pub out: PathBuf,
    /// Keep exporting as events arrive (a segment at least every `flush_every`).
    pub follow: bool,
    /// Events per segment at most.
    pub segment_events: usize,
    pub flush_every: Duration,
    /// Without `follow`, the export ends once no event arrived for this long.
    pub idle: Duration,
    /// With `follow`, the export flushes what it has and stops once this is triggered.
    pub stop: Option<otaledger_ledger::shutdown::ShutdownSignal>,
}

/// What an export run did.
#[derive(Debug, Default, Clone, Copy)]
pub struct ExportStats {
    pub events: u64,
    pub undecodable: u64,
    pub segments: u64,
    pub files: u64,
    pub elapsed: Duration,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Checkpoint {
    segment: u64,
    /// topic → partition → next offset.
    offsets: BTreeMap<String, BTreeMap<i32, i64>>,
}

fn arrow_type(s: &Avro) -> (DataType, bool) {
    match s {
        Avro::Union(u) => {
            let non_null: Vec<&Avro> = u
                .variants()
                .iter()
                .filter(|v| !matches!(v, Avro::Null))
                .collect();
            match non_null[..] {
                [one] => (arrow_type(one).0, true),
                _ => (DataType::Utf8, true),
            }
        }
        Avro::Null => (DataType::Null, true),
        Avro::Boolean => (DataType::Boolean, false),
        Avro::Int | Avro::Date | Avro::TimeMillis => (DataType::Int32, false),
        Avro::Long | Avro::TimeMicros => (DataType::Int64, false),
        Avro::Float => (DataType::Float32, false),
        Avro::Double => (DataType::Float64, false),
        Avro::TimestampMicros | Avro::LocalTimestampMicros => (
            DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
            false,
        ),
        Avro::TimestampMillis | Avro::LocalTimestampMillis => (
            DataType::Timestamp(TimeUnit::Millisecond, Some("+00:00".into())),
            false,
        ),
        Avro::Array(a) => {
            let (t, nullable) = arrow_type(&a.items);
            (
                DataType::List(Arc::new(Field::new("item", t, nullable))),
                false,
            )
        }
        Avro::Record(r) => (
            DataType::Struct(Fields::from(
                r.fields
                    .iter()
                    .map(|f| {
                        let (t, nullable) = arrow_type(&f.schema);
                        Field::new(&f.name, t, nullable)
                    })
                    .collect::<Vec<_>>(),
            )),
            false,
        ),
        // Enums, UUIDs, strings and anything else: text.
        _ => (DataType::Utf8, false),
    }
}

/// The Arrow schema of one event type's files: metadata, position, then the payload's fields.
#[must_use]
pub fn arrow_schema(event_type: EventType) -> Schema {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into()));
    let mut fields = vec![
        Field::new("event_id", DataType::Utf8, false),
        Field::new("occurred_at", ts.clone(), false),
        Field::new("recorded_at", ts, false),
        Field::new("trace_id", DataType::Utf8, false),
        Field::new("_topic", DataType::Utf8, false),
        Field::new("_partition", DataType::Int32, false),
        Field::new("_offset", DataType::Int64, false),
    ];
    if let Avro::Record(envelope) = &Schemas::get().current(event_type).schema {
        if let Some(Avro::Record(payload)) = envelope.fields.first().map(|f| &f.schema) {
            for f in &payload.fields {
                let (t, nullable) = arrow_type(&f.schema);
                fields.push(Field::new(&f.name, t, nullable));
            }
        }
    }
    Schema::new(fields)
}

/// One row: metadata, position and the payload's fields (as serde writes them).
fn row(e: &Event, topic: &str, partition: i32, offset: i64) -> Value {
    let mut m = match serde_json::to_value(&e.payload) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    m.insert("event_id".into(), Value::from(e.meta.event_id.to_string()));
    m.insert("occurred_at".into(), Value::from(e.meta.occurred_at));
    m.insert("recorded_at".into(), Value::from(e.meta.recorded_at));
    m.insert("trace_id".into(), Value::from(e.meta.trace_id.clone()));
    m.insert("_topic".into(), Value::from(topic));
    m.insert("_partition".into(), Value::from(partition));
    m.insert("_offset".into(), Value::from(offset));
    Value::Object(m)
}

fn day(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .unwrap_or_default()
        .format("%Y-%m-%d")
        .to_string()
}

fn segment_of(name: &str) -> Option<u64> {
    name.strip_prefix("part-")?.split('.').next()?.parse().ok()
}

/// Removes temporary files and the files of segments the checkpoint does not cover.
fn clean(dir: &Path, committed: u64) -> anyhow::Result<u64> {
    let mut removed = 0;
    if !dir.exists() {
        return Ok(0);
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            removed += clean(&path, committed)?;
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale = name.ends_with(".tmp") || segment_of(&name).is_some_and(|s| s > committed);
        if stale {
            std::fs::remove_file(&path)?;
            removed += 1;
        }
    }
    Ok(removed)
}

fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

type Buffers = HashMap<(EventType, String), Vec<Value>>;

/// Writes one segment's files, then the checkpoint that covers them.
fn flush(
    out: &Path,
    buffers: &mut Buffers,
    checkpoint: &mut Checkpoint,
    next: &BTreeMap<String, BTreeMap<i32, i64>>,
) -> anyhow::Result<u64> {
    let segment = checkpoint.segment + 1;
    let mut files = 0;
    for ((event_type, day), rows) in buffers.drain() {
        if rows.is_empty() {
            continue;
        }
        let schema = Arc::new(arrow_schema(event_type));
        let mut decoder = arrow_json::ReaderBuilder::new(schema.clone()).build_decoder()?;
        decoder.serialize(&rows)?;
        let dir = out
            .join(format!("type={}", event_type.name()))
            .join(format!("day={day}"));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("part-{segment:08}.parquet"));
        let tmp = path.with_extension("parquet.tmp");
        let file = std::fs::File::create(&tmp)?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        let mut writer = ArrowWriter::try_new(file, schema, Some(props))?;
        while let Some(batch) = decoder.flush()? {
            writer.write(&batch)?;
        }
        writer.into_inner()?.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        files += 1;
    }
    checkpoint.segment = segment;
    checkpoint.offsets.clone_from(next);
    write_atomically(
        &out.join(CHECKPOINT),
        &serde_json::to_vec_pretty(checkpoint)?,
    )?;
    Ok(files)
}

/// Exports every ledger topic; see the module documentation.
pub async fn export(kafka: &KafkaConfig, args: &ExportArgs) -> anyhow::Result<ExportStats> {
    std::fs::create_dir_all(&args.out)?;
    let mut checkpoint: Checkpoint = match std::fs::read(args.out.join(CHECKPOINT)) {
        Ok(bytes) => serde_json::from_slice(&bytes)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Checkpoint::default(),
        Err(e) => return Err(e).context("reading the export checkpoint"),
    };
    let removed = clean(&args.out, checkpoint.segment)?;
    if removed > 0 {
        tracing::warn!(
            removed,
            segment = checkpoint.segment,
            "removed files of an export that stopped half-way"
        );
    }
    let topics = kafka.topics();
    let names = [
        topics.device_events,
        topics.rollout_events,
        topics.device_commands,
    ];
    let reader = LedgerReader::new(
        kafka,
        ReaderConfig::tool("export", names.to_vec(), Decode::Events),
    )?;
    reader
        .assign_to_watermarks(|t, p| {
            checkpoint
                .offsets
                .get(&names[t])
                .and_then(|m| m.get(&p))
                .copied()
                .unwrap_or(0)
        })
        .await?;
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut stats = ExportStats::default();
    let mut next = checkpoint.offsets.clone();
    let mut buffers: Buffers = HashMap::new();
    let mut buffered = 0usize;
    let mut last_event = Instant::now();
    let mut last_flush = Instant::now();
    let mut last_progress = Instant::now();
    loop {
        let batch = reader
            .read(tokio::time::Instant::now() + Duration::from_millis(100))
            .await;
        if !batch.records.is_empty() {
            last_event = Instant::now();
        }
        for r in batch.records {
            let topic = &names[r.topic];
            let (p, o) = (r.position.partition, r.position.offset);
            next.entry(topic.clone()).or_default().insert(p, o + 1);
            match r.body {
                Body::Event { event, .. } => {
                    let key = (event.event_type(), day(event.meta.occurred_at));
                    buffers
                        .entry(key)
                        .or_default()
                        .push(row(&event, topic, p, o));
                    buffered += 1;
                    stats.events += 1;
                }
                Body::Undecodable { error, .. } => {
                    // Undecodable records are in the dead letters already (consumers put them
                    // there); the export counts and skips them.
                    tracing::debug!(%error, topic, partition = p, offset = o, "undecodable record skipped");
                    stats.undecodable += 1;
                }
                Body::Raw(_) => {}
            }
        }
        // Read at least to the high watermarks of the start, then until the topics are quiet.
        let quiet = last_event.elapsed() >= args.idle && reader.caught_up();
        let due = buffered >= args.segment_events
            || (buffered > 0 && (quiet || last_flush.elapsed() >= args.flush_every));
        if due {
            stats.files += flush(&args.out, &mut buffers, &mut checkpoint, &next)?;
            stats.segments += 1;
            buffered = 0;
            last_flush = Instant::now();
        } else if buffered == 0 && next != checkpoint.offsets && quiet {
            // Only undecodable records since the last segment: move the checkpoint past them.
            stats.files += flush(&args.out, &mut buffers, &mut checkpoint, &next)?;
        }
        if tty && last_progress.elapsed() >= Duration::from_millis(250) {
            #[allow(clippy::cast_precision_loss)]
            let rate = stats.events as f64 / started.elapsed().as_secs_f64().max(0.001);
            eprint!(
                "\rexport: {} events, {} segments, {rate:.0} events/s   ",
                stats.events, stats.segments
            );
            last_progress = Instant::now();
        }
        let stopping = args.stop.as_ref().is_some_and(|s| s.is_triggered());
        if stopping && buffered > 0 {
            stats.files += flush(&args.out, &mut buffers, &mut checkpoint, &next)?;
            stats.segments += 1;
            buffered = 0;
        }
        if stopping || (!args.follow && quiet && buffered == 0) {
            break;
        }
    }
    if tty {
        eprintln!();
    }
    stats.elapsed = started.elapsed();
    Ok(stats)
}

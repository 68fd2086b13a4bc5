//! The fleet projector: folds each batch per device into one patch (coalescing a device's
//! repeated heartbeats), merges all patches with one statement and adjusts the per-dimension
//! counts, inside the transaction that also stores the consumed offsets.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use otaledger_domain::device_view::DeviceView;
use otaledger_ledger::{Positioned, Projection};
use sqlx::PgConnection;

use crate::DbContext;

/// Projects `ota.device-events` into `devices` and `fleet_counts`.
#[derive(Debug, Default)]
pub struct FleetProjector {
    dims: DimensionCache,
    /// One patch per device of the batches folded since the last transaction.
    folded: Patches,
}

/// Each device's committed firmware, model and site, so that a batch need not read them back
/// before the merge (a third of a batch's database time at 5,000 devices). Sound only while this
/// instance owns the devices' partitions: the runner reports ownership changes, which clear it.
/// Values are staged during a batch and kept only once the batch committed.
#[derive(Debug, Default)]
pub struct DimensionCache {
    enabled: bool,
    committed: HashMap<String, Dimensions>,
    staged: Vec<(String, Dimensions)>,
}

type Dimensions = (Option<String>, Option<String>, Option<String>);

/// The most devices a cache holds before it starts over (about 150 MB).
const CACHE_LIMIT: usize = 1_000_000;

impl DimensionCache {
    /// A cache that remembers across batches.
    #[must_use]
    pub fn new() -> Self {
        DimensionCache {
            enabled: true,
            ..Self::default()
        }
    }

    /// Keeps what the last batch staged (call after its commit).
    pub fn commit(&mut self) {
        if !self.enabled {
            self.staged.clear();
            return;
        }
        if self.committed.len() + self.staged.len() > CACHE_LIMIT {
            self.committed.clear();
        }
        self.committed.extend(self.staged.drain(..));
    }

    /// Forgets everything (ownership changed: another instance may have written these rows).
    pub fn clear(&mut self) {
        self.committed.clear();
        self.staged.clear();
    }
}

impl FleetProjector {
    #[must_use]
    pub fn new() -> Self {
        FleetProjector {
            dims: DimensionCache::new(),
            folded: Patches::new(),
        }
    }
}

/// Dimensions counted in `fleet_counts`; `total` counts every device under the value `all`.
pub const DIMENSIONS: [&str; 3] = ["firmware", "model", "site"];
pub const UNKNOWN: &str = "unknown";

pub(crate) fn ts(micros: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

/// One patch per device: the fold of its events since the last write. Hashed, not ordered: a
/// fold over a backlog touches a patch per event, and an ordered map spent most of that time
/// comparing ids and moving patches within its nodes. The merge sorts once.
pub type Patches = HashMap<String, DeviceView>;

/// Folds a batch into one patch per device, in batch order.
#[must_use]
pub fn fold_batch(events: &[Positioned]) -> Patches {
    let mut patches = Patches::new();
    fold_into(&mut patches, events);
    patches
}

/// Folds events into existing patches (a device's later events onto its patch).
pub fn fold_into(patches: &mut Patches, events: &[Positioned]) {
    for p in events {
        if !DeviceView::is_relevant(&p.event) {
            continue;
        }
        let key = p.event.key();
        if let Some(v) = patches.get_mut(key) {
            v.absorb(&p.event, p.position);
        } else if let Some(v) = DeviceView::apply(None, &p.event, p.position) {
            patches.insert(key.to_owned(), v);
        }
    }
}

const MERGE: &str = r"
WITH input AS (
    SELECT * FROM UNNEST(
        $1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
        $8::timestamptz[], $9::timestamptz[], $10::timestamptz[],
        $11::bigint[], $12::real[], $13::real[], $14::real[], $15::int[], $16::int[],
        $17::bigint[], $18::int[], $19::bigint[])
    AS t(device_id, model, site, tags_json, gateway_id, hardware_rev, firmware_version,
         first_seen_at, last_seen_at, last_heartbeat_at,
         uptime_s, cpu_pct, mem_pct, temperature_c, error_count, signal_dbm,
         events, last_partition, last_offset)
)
INSERT INTO devices AS d (device_id, model, site, tags, gateway_id, hardware_rev, firmware_version,
        first_seen_at, last_seen_at, last_heartbeat_at,
        uptime_s, cpu_pct, mem_pct, temperature_c, error_count, signal_dbm,
        events, last_partition, last_offset)
    SELECT device_id, model, site,
        CASE WHEN tags_json IS NULL THEN NULL
             ELSE ARRAY(SELECT jsonb_array_elements_text(tags_json::jsonb)) END,
        gateway_id, hardware_rev, firmware_version,
        first_seen_at, last_seen_at, last_heartbeat_at,
        uptime_s, cpu_pct, mem_pct, temperature_c, error_count, signal_dbm,
        events, last_partition, last_offset
    FROM input
    ON CONFLICT (device_id) DO UPDATE SET
        model = COALESCE(EXCLUDED.model, d.model),
        site = COALESCE(EXCLUDED.site, d.site),
        tags = COALESCE(EXCLUDED.tags, d.tags),
        gateway_id = COALESCE(EXCLUDED.gateway_id, d.gateway_id),
        hardware_rev = COALESCE(EXCLUDED.hardware_rev, d.hardware_rev),
        firmware_version = COALESCE(EXCLUDED.firmware_version, d.firmware_version),
        first_seen_at = LEAST(d.first_seen_at, EXCLUDED.first_seen_at),
        last_seen_at = GREATEST(d.last_seen_at, EXCLUDED.last_seen_at),
        last_heartbeat_at = GREATEST(d.last_heartbeat_at, EXCLUDED.last_heartbeat_at),
        uptime_s = CASE WHEN EXCLUDED.last_heartbeat_at IS NULL THEN d.uptime_s ELSE EXCLUDED.uptime_s END,
        cpu_pct = CASE WHEN EXCLUDED.last_heartbeat_at IS NULL THEN d.cpu_pct ELSE EXCLUDED.cpu_pct END,
        mem_pct = CASE WHEN EXCLUDED.last_heartbeat_at IS NULL THEN d.mem_pct ELSE EXCLUDED.mem_pct END,
        temperature_c = CASE WHEN EXCLUDED.last_heartbeat_at IS NULL THEN d.temperature_c ELSE EXCLUDED.temperature_c END,
        error_count = CASE WHEN EXCLUDED.last_heartbeat_at IS NULL THEN d.error_count ELSE EXCLUDED.error_count END,
        signal_dbm = CASE WHEN EXCLUDED.last_heartbeat_at IS NULL THEN d.signal_dbm ELSE EXCLUDED.signal_dbm END,
        events = d.events + EXCLUDED.events,
        last_partition = EXCLUDED.last_partition,
        last_offset = EXCLUDED.last_offset
    WHERE d.last_partition <> EXCLUDED.last_partition OR d.last_offset < EXCLUDED.last_offset
RETURNING d.device_id, d.firmware_version, d.model, d.site";

/// The dimensions' values before the merge. A separate statement: joining it to the upsert in
/// one statement made the planner (which expects 10 rows from UNNEST) nest-loop 5,000 × 5,000.
const OLD_VALUES: &str =
    "SELECT device_id, firmware_version, model, site FROM devices WHERE device_id = ANY($1)";

type DimensionRow = (String, Option<String>, Option<String>, Option<String>);

/// Merges patches into `devices` and adjusts `fleet_counts`.
pub async fn merge_patches(
    tx: &mut PgConnection,
    patches: impl IntoIterator<Item = (String, DeviceView)>,
    cache: &mut DimensionCache,
) -> crate::Result<()> {
    // Whatever an earlier, uncommitted batch staged is void.
    cache.staged.clear();
    let mut patches: Vec<DeviceView> = patches.into_iter().map(|(_, v)| v).collect();
    if patches.is_empty() {
        return Ok(());
    }
    // In id order: the rows are written in index order, and the same input writes the same way.
    patches.sort_unstable_by(|a, b| a.device_id.cmp(&b.device_id));
    let n = patches.len();
    let mut c = Columns::default();
    for v in patches {
        c.push(v);
    }
    let mut old: HashMap<String, Dimensions> = HashMap::with_capacity(n);
    let mut unknown: Vec<&String> = Vec::new();
    for id in &c.device_id {
        match cache.committed.get(id) {
            Some(d) => drop(old.insert(id.clone(), d.clone())),
            None => unknown.push(id),
        }
    }
    if !unknown.is_empty() {
        let rows: Vec<DimensionRow> = sqlx::query_as(OLD_VALUES)
            .bind(&unknown)
            .fetch_all(&mut *tx)
            .await
            .db("reading devices before the merge")?;
        old.extend(
            rows.into_iter()
                .map(|(id, fw, model, site)| (id, (fw, model, site))),
        );
    }
    let rows: Vec<DimensionRow> = sqlx::query_as(MERGE)
        .bind(c.device_id)
        .bind(c.model)
        .bind(c.site)
        .bind(c.tags_json)
        .bind(c.gateway_id)
        .bind(c.hardware_rev)
        .bind(c.firmware_version)
        .bind(c.first_seen_at)
        .bind(c.last_seen_at)
        .bind(c.last_heartbeat_at)
        .bind(c.uptime_s)
        .bind(c.cpu_pct)
        .bind(c.mem_pct)
        .bind(c.temperature_c)
        .bind(c.error_count)
        .bind(c.signal_dbm)
        .bind(c.events)
        .bind(c.last_partition)
        .bind(c.last_offset)
        .fetch_all(&mut *tx)
        .await
        .db("merging device patches")?;

    let mut deltas: HashMap<(&'static str, String), i64> = HashMap::new();
    let label = |v: Option<String>| v.unwrap_or_else(|| UNKNOWN.to_owned());
    for (device_id, fw, model, site) in rows {
        if cache.enabled {
            cache
                .staged
                .push((device_id.clone(), (fw.clone(), model.clone(), site.clone())));
        }
        let before = old.get(&device_id);
        if before.is_none() {
            *deltas.entry(("total", "all".to_owned())).or_default() += 1;
        }
        let (old_fw, old_model, old_site) = before.cloned().unwrap_or_default();
        for (dim, old, new) in [
            (DIMENSIONS[0], old_fw, fw),
            (DIMENSIONS[1], old_model, model),
            (DIMENSIONS[2], old_site, site),
        ] {
            let new = label(new);
            if before.is_some() {
                let old = label(old);
                if old == new {
                    continue;
                }
                *deltas.entry((dim, old)).or_default() -= 1;
            }
            *deltas.entry((dim, new)).or_default() += 1;
        }
    }
    deltas.retain(|_, d| *d != 0);
    if deltas.is_empty() {
        return Ok(());
    }
    // Sorted, so that concurrent projector instances lock counter rows in the same order.
    let mut sorted: Vec<_> = deltas.into_iter().collect();
    sorted.sort();
    let (keys, amounts): (Vec<_>, Vec<i64>) = sorted.into_iter().unzip();
    let (dims, values): (Vec<&str>, Vec<String>) = keys.into_iter().unzip();
    sqlx::query(
        "INSERT INTO fleet_counts (dimension, value, devices)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[])
         ON CONFLICT (dimension, value) DO UPDATE SET devices = fleet_counts.devices + EXCLUDED.devices",
    )
    .bind(dims)
    .bind(values)
    .bind(amounts)
    .execute(&mut *tx)
    .await
    .db("adjusting fleet counts")?;
    Ok(())
}

#[derive(Default)]
struct Columns {
    device_id: Vec<String>,
    model: Vec<Option<String>>,
    site: Vec<Option<String>>,
    tags_json: Vec<Option<String>>,
    gateway_id: Vec<Option<String>>,
    hardware_rev: Vec<Option<String>>,
    firmware_version: Vec<Option<String>>,
    first_seen_at: Vec<DateTime<Utc>>,
    last_seen_at: Vec<DateTime<Utc>>,
    last_heartbeat_at: Vec<Option<DateTime<Utc>>>,
    uptime_s: Vec<Option<i64>>,
    cpu_pct: Vec<Option<f32>>,
    mem_pct: Vec<Option<f32>>,
    temperature_c: Vec<Option<f32>>,
    error_count: Vec<Option<i32>>,
    signal_dbm: Vec<Option<i32>>,
    events: Vec<i64>,
    last_partition: Vec<i32>,
    last_offset: Vec<i64>,
}

impl Columns {
    fn push(&mut self, v: DeviceView) {
        let h = v.health.as_ref();
        self.uptime_s.push(h.map(|h| h.uptime_s));
        self.cpu_pct.push(h.map(|h| h.cpu_pct));
        self.mem_pct.push(h.map(|h| h.mem_pct));
        self.temperature_c.push(h.map(|h| h.temperature_c));
        self.error_count.push(h.map(|h| h.error_count));
        self.signal_dbm.push(h.and_then(|h| h.signal_dbm));
        self.tags_json
            .push(v.tags.map(|t| serde_json::Value::from(t).to_string()));
        self.device_id.push(v.device_id);
        self.model.push(v.model);
        self.site.push(v.site);
        self.gateway_id.push(v.gateway_id);
        self.hardware_rev.push(v.hardware_rev);
        self.firmware_version.push(v.firmware_version);
        self.first_seen_at.push(ts(v.first_seen_at));
        self.last_seen_at.push(ts(v.last_seen_at));
        self.last_heartbeat_at.push(v.last_heartbeat_at.map(ts));
        self.events.push(v.events);
        self.last_partition.push(v.last_position.partition);
        self.last_offset.push(v.last_position.offset);
    }
}

impl Projection for FleetProjector {
    async fn apply(
        &mut self,
        tx: &mut PgConnection,
        events: &[Positioned],
    ) -> otaledger_ledger::Result<()> {
        let mut patches = std::mem::take(&mut self.folded);
        fold_into(&mut patches, events);
        Ok(merge_patches(tx, patches, &mut self.dims).await?)
    }

    fn committed(&mut self, _events: &[Positioned]) {
        self.dims.commit();
    }

    fn ownership_changed(&mut self) {
        self.dims.clear();
        self.folded.clear();
    }

    fn fold(&mut self, events: &[Positioned]) -> bool {
        fold_into(&mut self.folded, events);
        true
    }

    fn folded_rows(&self) -> usize {
        self.folded.len()
    }
}

//! The compiled-in schema catalogue.

use std::collections::HashMap;
use std::sync::OnceLock;

use apache_avro::headers::HeaderBuilder;
use apache_avro::rabin::Rabin;
use apache_avro::types::Value;
use apache_avro::{GenericSingleObjectReader, Schema};
use otaledger_domain::EventType;

use crate::{Error, Result};

macro_rules! avsc {
    ($($file:literal),* $(,)?) => { &[ $( ($file, include_str!(concat!("../avro/", $file))), )* ] };
}

/// Every schema version ever published. Add new versions here; never remove or edit one.
const FILES: &[(&str, &str)] = avsc![
    "DeviceRegistered.v1.avsc",
    "Heartbeat.v1.avsc",
    "Heartbeat.v2.avsc",
    "InstallProgress.v1.avsc",
    "InstallResult.v1.avsc",
    "UpdateRequested.v1.avsc",
    "PauseRequested.v1.avsc",
    "ResumeRequested.v1.avsc",
    "AbortRequested.v1.avsc",
    "WaveStarted.v1.avsc",
    "DeviceCommanded.v1.avsc",
    "DeviceOutcome.v1.avsc",
    "DeviceTimedOut.v1.avsc",
    "ThresholdEvaluated.v1.avsc",
    "RolloutStateChanged.v1.avsc",
    "UpdateCommand.v1.avsc",
    "RollbackCommand.v1.avsc",
    "CancelCommand.v1.avsc",
    "DeviceReportRouted.v1.avsc",
    "DevicesJoined.v1.avsc",
    "CommandDeliveryFailed.v1.avsc",
    "TokenIssued.v1.avsc",
    "TokenIssued.v2.avsc",
    "TokenRevoked.v1.avsc",
    "DeviceAttached.v1.avsc",
    "AdmissionDecided.v1.avsc",
    "UpdateRequested.v2.avsc",
    "UpdateCommand.v2.avsc",
    "ReleaseRegistered.v1.avsc",
    "ReleaseStateChanged.v1.avsc",
    "DeviceReportRouted.v2.avsc",
];

/// One schema version.
#[derive(Debug)]
pub struct SchemaInfo {
    pub event_type: EventType,
    pub version: u32,
    pub file: &'static str,
    pub schema: Schema,
    pub fingerprint: u64,
    pub(crate) datum: DatumReader,
}

/// Reads a bare datum of one schema with its named types resolved once: `from_avro_datum`
/// resolves them again for every record (a quarter of a consumer's decoding time).
pub(crate) struct DatumReader(GenericSingleObjectReader);

/// Our envelope carries its own header (magic and fingerprint), so the datum has none.
struct NoHeader;

impl HeaderBuilder for NoHeader {
    fn build_header(&self) -> Vec<u8> {
        Vec::new()
    }
}

impl DatumReader {
    fn new(schema: &Schema) -> Result<Self, apache_avro::Error> {
        GenericSingleObjectReader::new_with_header_builder(schema.clone(), NoHeader).map(Self)
    }

    pub(crate) fn read(&self, body: &mut &[u8]) -> Result<Value, apache_avro::Error> {
        self.0.read_value(body)
    }
}

impl std::fmt::Debug for DatumReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DatumReader")
    }
}

/// All schema versions, indexed by fingerprint, and the current version of each event type.
#[derive(Debug)]
pub struct Schemas {
    all: Vec<SchemaInfo>,
    by_fingerprint: HashMap<u64, usize>,
    current: HashMap<EventType, usize>,
}

impl Schemas {
    /// The process-wide catalogue, parsed once.
    ///
    /// # Panics
    /// Only if a compiled-in schema file is invalid, which the crate's tests rule out.
    pub fn get() -> &'static Schemas {
        static SCHEMAS: OnceLock<Schemas> = OnceLock::new();
        SCHEMAS.get_or_init(|| match Schemas::load() {
            Ok(s) => s,
            Err(e) => panic!("compiled-in Avro schemas are invalid: {e}"),
        })
    }

    /// Parses and checks every compiled-in schema file.
    pub fn load() -> Result<Self> {
        let mut all = Vec::with_capacity(FILES.len());
        for (file, text) in FILES {
            let bad = |reason: String| Error::Schema { file, reason };
            let (type_name, version) = file
                .strip_suffix(".avsc")
                .and_then(|s| s.split_once(".v"))
                .ok_or_else(|| bad("name is not <Type>.v<N>.avsc".into()))?;
            let event_type = EventType::from_name(type_name)
                .ok_or_else(|| bad(format!("unknown event type {type_name}")))?;
            let version: u32 = version.parse().map_err(|_| bad("bad version".into()))?;
            let schema = Schema::parse_str(text).map_err(|e| bad(e.to_string()))?;
            // A decoder reads EOF as null for a trailing optional field, so a truncated payload
            // would pass; the required `meta` record last rules that out.
            let Schema::Record(record) = &schema else {
                return Err(bad("top level is not a record".into()));
            };
            if record.fields.last().map(|f| f.name.as_str()) != Some("meta") {
                return Err(bad("the last field must be `meta`".into()));
            }
            let fp = schema.fingerprint::<Rabin>().bytes;
            let fingerprint = u64::from_le_bytes(
                fp.as_slice()
                    .try_into()
                    .map_err(|_| bad("fingerprint is not 8 bytes".into()))?,
            );
            let datum = DatumReader::new(&schema).map_err(|e| bad(e.to_string()))?;
            all.push(SchemaInfo {
                event_type,
                version,
                file,
                schema,
                fingerprint,
                datum,
            });
        }
        let mut by_fingerprint = HashMap::new();
        let mut current: HashMap<EventType, usize> = HashMap::new();
        for (i, info) in all.iter().enumerate() {
            if by_fingerprint.insert(info.fingerprint, i).is_some() {
                return Err(Error::Schema {
                    file: info.file,
                    reason: "same canonical form as another version".into(),
                });
            }
            let newer = current
                .get(&info.event_type)
                .is_none_or(|&j| all[j].version < info.version);
            if newer {
                current.insert(info.event_type, i);
            }
        }
        if let Some(missing) = EventType::ALL.iter().find(|t| !current.contains_key(t)) {
            return Err(Error::Schema {
                file: "<catalogue>",
                reason: format!("no schema for {missing}"),
            });
        }
        Ok(Schemas {
            all,
            by_fingerprint,
            current,
        })
    }

    /// The schema data of this type is written with.
    #[must_use]
    pub fn current(&self, event_type: EventType) -> &SchemaInfo {
        &self.all[self.current[&event_type]]
    }

    #[must_use]
    pub fn by_fingerprint(&self, fingerprint: u64) -> Option<&SchemaInfo> {
        self.by_fingerprint.get(&fingerprint).map(|&i| &self.all[i])
    }

    /// Every version, in catalogue order.
    #[must_use]
    pub fn all(&self) -> &[SchemaInfo] {
        &self.all
    }
}

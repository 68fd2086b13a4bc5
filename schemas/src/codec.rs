//! Single-object encoding and decoding of [`Event`]s.

use apache_avro::{from_avro_datum, from_value, to_avro_datum, to_value, types::Value};
use otaledger_domain::events::{
    CancelCommand, DeviceCommanded, DeviceOutcome, DeviceRegistered, DeviceTimedOut, Heartbeat,
    InstallProgress, InstallResult, OperatorRequest, RollbackCommand, RolloutStateChanged,
    ThresholdEvaluated, UpdateCommand, UpdateRequested, WaveStarted,
};
use otaledger_domain::{Event, EventMeta, EventType, Payload};
use serde::{Deserialize, Serialize};

use crate::catalogue::{SchemaInfo, Schemas};
use crate::{Error, Result};

const MARKER: [u8; 2] = [0xC3, 0x01];
const HEADER_LEN: usize = 10;

#[derive(Serialize)]
struct WireRef<'a, P> {
    meta: &'a EventMeta,
    payload: &'a P,
}

#[derive(Deserialize)]
struct Wire<P> {
    meta: EventMeta,
    payload: P,
}

/// A decoded event and the schema version it was written with.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub event: Event,
    pub writer_version: u32,
    pub fingerprint: u64,
}

/// The writer fingerprint of a single-object payload, without decoding it.
pub fn fingerprint_of(bytes: &[u8]) -> Result<u64> {
    if bytes.len() < HEADER_LEN {
        return Err(Error::Truncated(bytes.len()));
    }
    if bytes[..2] != MARKER {
        return Err(Error::BadMarker);
    }
    let mut fp = [0u8; 8];
    fp.copy_from_slice(&bytes[2..HEADER_LEN]);
    Ok(u64::from_le_bytes(fp))
}

/// Encodes an event with the current schema of its type.
pub fn encode(event: &Event) -> Result<Vec<u8>> {
    encode_with(event, Schemas::get().current(event.event_type()))
}

/// Encodes an event with a given schema version of its type (older versions drop the fields
/// they do not know; used to prove that old data stays readable).
pub fn encode_with(event: &Event, info: &SchemaInfo) -> Result<Vec<u8>> {
    let event_type = event.event_type();
    let fail = |reason: String| Error::Encode {
        event_type: event_type.name(),
        reason,
    };
    if info.event_type != event_type {
        return Err(fail(format!("schema {} is for another type", info.file)));
    }
    let value = to_wire_value(event).map_err(|e| fail(e.to_string()))?;
    let value = value
        .resolve(&info.schema)
        .map_err(|e| fail(e.to_string()))?;
    let datum = to_avro_datum(&info.schema, value).map_err(|e| fail(e.to_string()))?;
    let mut out = Vec::with_capacity(HEADER_LEN + datum.len());
    out.extend_from_slice(&MARKER);
    out.extend_from_slice(&info.fingerprint.to_le_bytes());
    out.extend_from_slice(&datum);
    Ok(out)
}

/// Decodes a single-object payload written with any published schema version.
pub fn decode(bytes: &[u8]) -> Result<Decoded> {
    let fingerprint = fingerprint_of(bytes)?;
    let schemas = Schemas::get();
    let writer = schemas
        .by_fingerprint(fingerprint)
        .ok_or(Error::UnknownFingerprint(fingerprint))?;
    let reader = schemas.current(writer.event_type);
    let fail = |reason: String| Error::Datum {
        event_type: writer.event_type.name(),
        version: writer.version,
        reason,
    };
    let mut body = &bytes[HEADER_LEN..];
    // Decode with the writer schema alone, then resolve: decoding straight into the reader
    // schema lets a payload cut before a defaulted field pass as complete.
    let value =
        from_avro_datum(&writer.schema, &mut body, None).map_err(|e| fail(e.to_string()))?;
    if !body.is_empty() {
        return Err(Error::TrailingBytes(body.len()));
    }
    let value = if writer.version == reader.version {
        value
    } else {
        value
            .resolve(&reader.schema)
            .map_err(|e| fail(e.to_string()))?
    };
    let event = from_wire_value(writer.event_type, &value).map_err(|e| fail(e.to_string()))?;
    Ok(Decoded {
        event,
        writer_version: writer.version,
        fingerprint,
    })
}

macro_rules! dispatch {
    ($( $variant:ident($ty:ty) ),* $(,)?) => {
        fn to_wire_value(event: &Event) -> Result<Value, apache_avro::Error> {
            match &event.payload {
                $( Payload::$variant(p) => to_value(WireRef { meta: &event.meta, payload: p }), )*
            }
        }

        fn from_wire_value(event_type: EventType, value: &Value) -> Result<Event, apache_avro::Error> {
            Ok(match event_type {
                $( EventType::$variant => {
                    let w: Wire<$ty> = from_value(value)?;
                    Event { meta: w.meta, payload: Payload::$variant(w.payload) }
                } )*
            })
        }
    };
}

dispatch! {
    DeviceRegistered(DeviceRegistered),
    Heartbeat(Heartbeat),
    InstallProgress(InstallProgress),
    InstallResult(InstallResult),
    UpdateRequested(UpdateRequested),
    PauseRequested(OperatorRequest),
    ResumeRequested(OperatorRequest),
    AbortRequested(OperatorRequest),
    WaveStarted(WaveStarted),
    DeviceCommanded(DeviceCommanded),
    DeviceOutcome(DeviceOutcome),
    DeviceTimedOut(DeviceTimedOut),
    ThresholdEvaluated(ThresholdEvaluated),
    RolloutStateChanged(RolloutStateChanged),
    UpdateCommand(UpdateCommand),
    RollbackCommand(RollbackCommand),
    CancelCommand(CancelCommand),
}

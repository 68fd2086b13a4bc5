//! The JSON that devices and gateways send, checked and turned into ledger events.
//!
//! Unknown fields are ignored so that newer firmware can add fields without being rejected;
//! a known field of the wrong type, a missing required field, an out-of-range value, an
//! oversized payload or a device id that does not match the channel is a [`Rejection`].

use crate::events::{
    DeviceRegistered, Health, Heartbeat, InstallOutcome, InstallPhase, InstallProgress,
    InstallResult,
};
use crate::ids::validate_device_id;
use crate::time::{now_micros, Micros};
use crate::{Event, Payload};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use uuid::Uuid;

use crate::rejection::Rejection;

mod schema;

/// The longest text field of a device message (model, site, firmware version, tag), in
/// characters.
pub const MAX_TEXT_LEN: usize = 256;
/// The device clock readings accepted, in milliseconds since the epoch (kept in microseconds):
/// up to the last millisecond of 9999, the last instant an RFC 3339 timestamp (as the API
/// answers them) can write.
pub const OCCURRED_AT_MS: std::ops::RangeInclusive<i64> = 1..=253_402_300_799_999;

/// The fields each message reads. Others are ignored, whatever they hold, so that newer
/// firmware can add fields; only these are checked (a NUL character in an ignored field
/// harms nothing: it is never stored). `gateway_id` is not among them: a device does not name
/// its gateway; the AMQP bridge sets it from the batch of the gateway provisioning attached the
/// device to (ADR 0029).
pub const REGISTER_FIELDS: [&str; 7] = [
    "device_id",
    "model",
    "site",
    "tags",
    "firmware_version",
    "hardware_rev",
    "occurred_at_ms",
];
pub const HEARTBEAT_FIELDS: [&str; 9] = [
    "device_id",
    "firmware_version",
    "uptime_s",
    "cpu_pct",
    "mem_pct",
    "temperature_c",
    "error_count",
    "signal_dbm",
    "occurred_at_ms",
];
pub const INSTALL_FIELDS: [&str; 11] = [
    "device_id",
    "kind",
    "rollout_id",
    "command_id",
    "phase",
    "percent",
    "outcome",
    "firmware_version",
    "error_code",
    "message",
    "occurred_at_ms",
];

/// The largest device message accepted.
pub const MAX_DEVICE_PAYLOAD: usize = 64 * 1024;
/// The largest gateway batch accepted.
pub const MAX_GATEWAY_PAYLOAD: usize = 8 * 1024 * 1024;

/// What a device message reports, from the last level of its MQTT topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Register,
    Heartbeat,
    Install,
}

impl MessageKind {
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "register" => Some(MessageKind::Register),
            "heartbeat" => Some(MessageKind::Heartbeat),
            "install" => Some(MessageKind::Install),
            _ => None,
        }
    }
}

/// A registration as a device writes it.
#[derive(Debug, Deserialize)]
pub struct RegisterJson {
    device_id: Option<String>,
    model: String,
    site: String,
    #[serde(default)]
    tags: Vec<String>,
    firmware_version: String,
    gateway_id: Option<String>,
    hardware_rev: Option<String>,
    #[serde(default, deserialize_with = "crate::json_number::opt_int")]
    occurred_at_ms: Option<i64>,
}

/// A heartbeat as a device writes it.
#[derive(Debug, Deserialize)]
pub struct HeartbeatJson {
    device_id: Option<String>,
    firmware_version: String,
    gateway_id: Option<String>,
    #[serde(deserialize_with = "crate::json_number::int")]
    uptime_s: i64,
    // Read wide and checked before they are narrowed to the event's `f32`, so that a value
    // just past a limit is refused rather than rounded into it.
    cpu_pct: f64,
    mem_pct: f64,
    temperature_c: f64,
    #[serde(default, deserialize_with = "crate::json_number::int")]
    error_count: i32,
    #[serde(default, deserialize_with = "crate::json_number::opt_int")]
    signal_dbm: Option<i32>,
    #[serde(default, deserialize_with = "crate::json_number::opt_int")]
    occurred_at_ms: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum InstallKindJson {
    Progress,
    Result,
}

/// An install report as a device writes it.
#[derive(Debug, Deserialize)]
pub struct InstallJson {
    device_id: Option<String>,
    kind: InstallKindJson,
    rollout_id: Option<String>,
    #[serde(default, deserialize_with = "crate::json_number::opt_hyphenated_uuid")]
    command_id: Option<Uuid>,
    phase: Option<InstallPhase>,
    #[serde(default, deserialize_with = "crate::json_number::opt_int")]
    percent: Option<i32>,
    outcome: Option<InstallOutcome>,
    firmware_version: Option<String>,
    error_code: Option<String>,
    message: Option<String>,
    #[serde(default, deserialize_with = "crate::json_number::opt_int")]
    occurred_at_ms: Option<i64>,
}

fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, Rejection> {
    serde_json::from_slice(body).map_err(|e| {
        let reason = if e.is_syntax() || e.is_eof() {
            "invalid_json"
        } else {
            "invalid_field"
        };
        Rejection::new(reason, e.to_string())
    })
}

/// Where in a JSON document the first text (a string or a key) holds a NUL character, which
/// PostgreSQL cannot store in text: such input is refused at the edge instead of stopping a
/// projection later (`$` is the document, `.name` a key, `[i]` an element).
#[must_use]
pub fn nul_in(value: &serde_json::Value) -> Option<String> {
    fn walk(v: &serde_json::Value, at: &mut String) -> bool {
        match v {
            serde_json::Value::String(s) => s.contains('\0'),
            serde_json::Value::Array(items) => items.iter().enumerate().any(|(i, item)| {
                let len = at.len();
                at.push_str(&format!("[{i}]"));
                let found = walk(item, at);
                if !found {
                    at.truncate(len);
                }
                found
            }),
            serde_json::Value::Object(fields) => fields.iter().any(|(k, item)| {
                let len = at.len();
                at.push('.');
                at.push_str(&k.replace('\0', "\\0"));
                let found = k.contains('\0') || walk(item, at);
                if !found {
                    at.truncate(len);
                }
                found
            }),
            _ => false,
        }
    }
    let mut at = String::from("$");
    walk(value, &mut at).then_some(at)
}

fn parse_value<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T, Rejection> {
    T::deserialize(value).map_err(|e| Rejection::new("invalid_field", e.to_string()))
}

fn check_id(channel_id: &str, body_id: Option<&String>) -> Result<(), Rejection> {
    match body_id {
        Some(id) if id != channel_id => Err(Rejection::new(
            "device_id_mismatch",
            format!("body names device {id:?} but the message came for {channel_id:?}"),
        )),
        _ => Ok(()),
    }
}

fn check_text(field: &str, value: &str) -> Result<(), Rejection> {
    if value.trim().is_empty() || value.chars().count() > MAX_TEXT_LEN {
        return Err(Rejection::new(
            "invalid_field",
            format!("{field} must be 1 to {MAX_TEXT_LEN} characters"),
        ));
    }
    Ok(())
}

/// A checked reading as the event's `f32` (in range, so finite).
#[allow(clippy::cast_possible_truncation)]
fn narrow(v: f64) -> f32 {
    v as f32
}

/// Where the first NUL character is among the fields a message reads.
fn nul_in_fields(value: &serde_json::Value, fields: &[&str]) -> Option<String> {
    let object = value.as_object()?;
    fields.iter().find_map(|name| {
        let at = nul_in(object.get(*name)?)?;
        Some(format!("$.{name}{}", &at[1..]))
    })
}

fn check_pct(field: &str, value: f64) -> Result<(), Rejection> {
    if !(0.0..=100.0).contains(&value) {
        return Err(Rejection::new(
            "invalid_field",
            format!("{field} must be between 0 and 100, got {value}"),
        ));
    }
    Ok(())
}

fn occurred(ms: Option<i64>, recorded: Micros) -> Result<Micros, Rejection> {
    match ms {
        None => Ok(recorded),
        Some(ms) if OCCURRED_AT_MS.contains(&ms) => Ok(ms * 1000),
        Some(ms) if ms > 0 => Err(Rejection::new(
            "invalid_field",
            "occurred_at_ms is out of range",
        )),
        Some(ms) => Err(Rejection::new(
            "invalid_field",
            format!("occurred_at_ms must be positive, got {ms}"),
        )),
    }
}

fn event(
    occurred_at_ms: Option<i64>,
    trace_id: &str,
    payload: Payload,
) -> Result<Event, Rejection> {
    let recorded_at = now_micros();
    let occurred_at = occurred(occurred_at_ms, recorded_at)?;
    Ok(Event::at(payload, occurred_at, recorded_at, trace_id))
}

/// Checks a message a device sent directly (MQTT, HTTP) and turns it into an event. A
/// `gateway_id` in it is ignored: only a gateway's authenticated batch names the gateway.
pub fn parse_device_message(
    kind: MessageKind,
    device_id: &str,
    body: &[u8],
    trace_id: &str,
) -> Result<Event, Rejection> {
    if body.len() > MAX_DEVICE_PAYLOAD {
        return Err(Rejection::new(
            "payload_too_large",
            format!("{} bytes, the limit is {MAX_DEVICE_PAYLOAD}", body.len()),
        ));
    }
    let mut value: serde_json::Value = parse_json(body)?;
    if let Some(obj) = value.as_object_mut() {
        obj.remove("gateway_id");
    }
    device_message_from_value(kind, device_id, &value, trace_id)
}

/// As [`parse_device_message`], for a report already parsed as JSON (gateway batches, whose
/// `gateway_id` the bridge sets to the batch's).
pub fn device_message_from_value(
    kind: MessageKind,
    device_id: &str,
    value: &serde_json::Value,
    trace_id: &str,
) -> Result<Event, Rejection> {
    // The channel's id is checked first: a bad id is the clearest reason, whatever the body.
    validate_device_id(device_id)
        .map_err(|e| Rejection::new("invalid_device_id", e.to_string()))?;
    if !value.is_object() {
        return Err(Rejection::new(
            "invalid_json",
            "the message must be a JSON object",
        ));
    }
    let fields: &[&str] = match kind {
        MessageKind::Register => &REGISTER_FIELDS,
        MessageKind::Heartbeat => &HEARTBEAT_FIELDS,
        MessageKind::Install => &INSTALL_FIELDS,
    };
    if let Some(at) = nul_in_fields(value, fields) {
        return Err(Rejection::new(
            "invalid_text",
            format!("{at} contains a NUL character, which the ledger's stores cannot keep"),
        ));
    }
    match kind {
        MessageKind::Register => {
            let r: RegisterJson = parse_value(value)?;
            check_id(device_id, r.device_id.as_ref())?;
            check_text("model", &r.model)?;
            check_text("site", &r.site)?;
            check_text("firmware_version", &r.firmware_version)?;
            for t in &r.tags {
                check_text("tags[]", t)?;
            }
            if let Some(g) = &r.gateway_id {
                validate_device_id(g)
                    .map_err(|e| Rejection::new("invalid_field", format!("gateway_id: {e}")))?;
            }
            event(
                r.occurred_at_ms,
                trace_id,
                Payload::DeviceRegistered(DeviceRegistered {
                    device_id: device_id.to_owned(),
                    model: r.model,
                    site: r.site,
                    tags: r.tags,
                    firmware_version: r.firmware_version,
                    gateway_id: r.gateway_id,
                    hardware_rev: r.hardware_rev,
                }),
            )
        }
        MessageKind::Heartbeat => {
            let h: HeartbeatJson = parse_value(value)?;
            check_id(device_id, h.device_id.as_ref())?;
            check_text("firmware_version", &h.firmware_version)?;
            if let Some(g) = &h.gateway_id {
                validate_device_id(g)
                    .map_err(|e| Rejection::new("invalid_field", format!("gateway_id: {e}")))?;
            }
            check_pct("cpu_pct", h.cpu_pct)?;
            check_pct("mem_pct", h.mem_pct)?;
            if h.uptime_s < 0 {
                return Err(Rejection::new(
                    "invalid_field",
                    "uptime_s must not be negative",
                ));
            }
            // Stored as a 32-bit float: anything larger would become infinite.
            let f32_range = -f64::from(f32::MAX)..=f64::from(f32::MAX);
            if !f32_range.contains(&h.temperature_c) {
                return Err(Rejection::new(
                    "invalid_field",
                    format!("temperature_c must be within ±{}", f32::MAX),
                ));
            }
            event(
                h.occurred_at_ms,
                trace_id,
                Payload::Heartbeat(Heartbeat {
                    device_id: device_id.to_owned(),
                    firmware_version: h.firmware_version,
                    gateway_id: h.gateway_id,
                    health: Health {
                        uptime_s: h.uptime_s,
                        cpu_pct: narrow(h.cpu_pct),
                        mem_pct: narrow(h.mem_pct),
                        temperature_c: narrow(h.temperature_c),
                        error_count: h.error_count,
                        signal_dbm: h.signal_dbm,
                    },
                }),
            )
        }
        MessageKind::Install => {
            let i: InstallJson = parse_value(value)?;
            check_id(device_id, i.device_id.as_ref())?;
            let payload = match i.kind {
                InstallKindJson::Progress => {
                    let phase = i
                        .phase
                        .ok_or_else(|| Rejection::new("invalid_field", "progress needs phase"))?;
                    let percent = i.percent.unwrap_or(0);
                    if !(0..=100).contains(&percent) {
                        return Err(Rejection::new(
                            "invalid_field",
                            "percent must be between 0 and 100",
                        ));
                    }
                    Payload::InstallProgress(InstallProgress {
                        device_id: device_id.to_owned(),
                        rollout_id: i.rollout_id,
                        command_id: i.command_id,
                        phase,
                        percent,
                    })
                }
                InstallKindJson::Result => {
                    let outcome = i
                        .outcome
                        .ok_or_else(|| Rejection::new("invalid_field", "result needs outcome"))?;
                    let firmware_version = i.firmware_version.ok_or_else(|| {
                        Rejection::new("invalid_field", "result needs firmware_version")
                    })?;
                    check_text("firmware_version", &firmware_version)?;
                    Payload::InstallResult(InstallResult {
                        device_id: device_id.to_owned(),
                        rollout_id: i.rollout_id,
                        command_id: i.command_id,
                        outcome,
                        firmware_version,
                        error_code: i.error_code,
                        message: i.message,
                    })
                }
            };
            event(i.occurred_at_ms, trace_id, payload)
        }
    }
}

/// A batch of device reports an edge gateway publishes over AMQP.
#[derive(Debug, Deserialize)]
pub struct GatewayBatch {
    pub gateway_id: String,
    pub reports: Vec<GatewayReport>,
}

#[derive(Debug, Deserialize)]
pub struct GatewayReport {
    pub device_id: String,
    /// `register`, `heartbeat` or `install`.
    pub kind: String,
    pub data: serde_json::Value,
}

/// Parses a gateway batch envelope; each report is then checked on its own.
pub fn parse_gateway_batch(body: &[u8]) -> Result<GatewayBatch, Rejection> {
    if body.len() > MAX_GATEWAY_PAYLOAD {
        return Err(Rejection::new(
            "payload_too_large",
            format!("{} bytes, the limit is {MAX_GATEWAY_PAYLOAD}", body.len()),
        ));
    }
    let batch: GatewayBatch = parse_json(body)?;
    validate_device_id(&batch.gateway_id)
        .map_err(|e| Rejection::new("invalid_field", format!("gateway_id: {e}")))?;
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(body: &str) -> Result<Event, Rejection> {
        parse_device_message(MessageKind::Heartbeat, "dev-1", body.as_bytes(), "trace")
    }

    #[test]
    fn a_good_heartbeat_becomes_an_event() {
        let e = hb(r#"{"firmware_version":"1.2.3","uptime_s":5,"cpu_pct":1.5,"mem_pct":2,"temperature_c":30,"extra":"ignored"}"#).unwrap();
        let Payload::Heartbeat(h) = e.payload else {
            panic!()
        };
        assert_eq!(h.device_id, "dev-1");
        assert_eq!(h.health.signal_dbm, None);
        assert_eq!(e.meta.occurred_at, e.meta.recorded_at);
        // Readings are checked wide and kept as sent.
        let readings = (h.health.cpu_pct, h.health.mem_pct, h.health.temperature_c);
        assert_eq!(readings, (1.5, 2.0, 30.0));
    }

    #[test]
    fn bad_heartbeats_are_rejected_with_a_reason() {
        let cases = [
            ("{not json", "invalid_json"),
            ("[1,2]", "invalid_json"),
            (
                r#"{"firmware_version":"1","uptime_s":"five","cpu_pct":1,"mem_pct":2,"temperature_c":3}"#,
                "invalid_field",
            ),
            (
                r#"{"firmware_version":"1","cpu_pct":1,"mem_pct":2,"temperature_c":3}"#,
                "invalid_field",
            ),
            (
                r#"{"firmware_version":"1","uptime_s":1,"cpu_pct":101,"mem_pct":2,"temperature_c":3}"#,
                "invalid_field",
            ),
            (
                r#"{"device_id":"other","firmware_version":"1","uptime_s":1,"cpu_pct":1,"mem_pct":2,"temperature_c":3}"#,
                "device_id_mismatch",
            ),
        ];
        for (body, reason) in cases {
            assert_eq!(hb(body).unwrap_err().reason, reason, "{body}");
        }
        let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(MAX_DEVICE_PAYLOAD));
        assert_eq!(hb(&big).unwrap_err().reason, "payload_too_large");
        let bad_id = parse_device_message(MessageKind::Heartbeat, "a#b", b"{}", "t").unwrap_err();
        assert_eq!(bad_id.reason, "invalid_device_id");
    }

    #[test]
    fn install_results_need_an_outcome() {
        let ok = parse_device_message(
            MessageKind::Install,
            "d",
            br#"{"kind":"result","outcome":"SUCCEEDED","firmware_version":"2.0.0","rollout_id":"r"}"#,
            "t",
        )
        .unwrap();
        assert!(
            matches!(ok.payload, Payload::InstallResult(ref r) if r.outcome == InstallOutcome::Succeeded)
        );
        let bad = parse_device_message(MessageKind::Install, "d", br#"{"kind":"result"}"#, "t")
            .unwrap_err();
        assert_eq!(bad.reason, "invalid_field");
    }

    #[test]
    fn a_nul_character_anywhere_in_the_text_is_refused_with_where_it_is() {
        let e = hb(r#"{"firmware_version":"1.0\u0000","uptime_s":1,"cpu_pct":1,"mem_pct":1,"temperature_c":1}"#)
            .unwrap_err();
        assert_eq!(e.reason, "invalid_text");
        assert!(
            e.detail.starts_with("$.firmware_version contains a NUL"),
            "{}",
            e.detail
        );
        // A field the message does not read is never stored: what it holds cannot harm.
        assert!(hb(r#"{"firmware_version":"1.0","uptime_s":1,"cpu_pct":1,"mem_pct":1,"temperature_c":1,"note":"a\u0000b"}"#).is_ok());
        let tags = parse_device_message(
            MessageKind::Register,
            "d-1",
            br#"{"model":"m","site":"s","firmware_version":"1.0","tags":["ok","b\u0000"]}"#,
            "t",
        )
        .unwrap_err();
        assert!(
            tags.detail.starts_with("$.tags[1] contains a NUL"),
            "{}",
            tags.detail
        );
        let nested = serde_json::json!({"a": [1, {"b": "x\u{0}y"}], "c": "fine"});
        assert_eq!(nul_in(&nested).as_deref(), Some("$.a[1].b"));
        let key = serde_json::json!({"ok": "1", "k\u{0}": 1});
        assert_eq!(nul_in(&key).as_deref(), Some("$.k\\0"));
        assert_eq!(
            nul_in(&serde_json::json!({"a": ["x", "y"], "b": {"c": "d"}})),
            None
        );
        assert_eq!(nul_in(&serde_json::json!("\u{0}")).as_deref(), Some("$"));
    }
}

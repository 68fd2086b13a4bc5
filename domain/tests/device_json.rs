#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! Device and gateway JSON at its limits: sizes, lengths, ranges and names, each just inside and
//! just outside.

use otaledger_domain::device_json::{
    device_message_from_value, parse_device_message, parse_gateway_batch, MessageKind,
    MAX_DEVICE_PAYLOAD, MAX_GATEWAY_PAYLOAD,
};
use otaledger_domain::events::InstallPhase;
use otaledger_domain::rejection::Rejection;
use otaledger_domain::{Event, Payload};
use serde_json::{json, Value};

fn message(kind: MessageKind, body: &Value) -> Result<Event, Rejection> {
    parse_device_message(kind, "dev-1", body.to_string().as_bytes(), "trace")
}

fn heartbeat() -> Value {
    json!({"firmware_version": "1.2.3", "uptime_s": 5, "cpu_pct": 1.5, "mem_pct": 2,
           "temperature_c": 30})
}

fn register() -> Value {
    json!({"model": "m", "site": "s", "firmware_version": "1.0.0", "tags": ["a"]})
}

fn progress(percent: i32) -> Value {
    json!({"kind": "progress", "phase": "DOWNLOADING", "percent": percent})
}

/// `body` padded with spaces to exactly `len` bytes.
fn padded(body: &Value, len: usize) -> Vec<u8> {
    let mut bytes = body.to_string().into_bytes();
    assert!(bytes.len() <= len);
    bytes.resize(len, b' ');
    bytes
}

#[test]
fn the_size_limits_are_64_kib_per_message_and_8_mib_per_batch() {
    assert_eq!(MAX_DEVICE_PAYLOAD, 65_536);
    assert_eq!(MAX_GATEWAY_PAYLOAD, 8_388_608);
}

#[test]
fn a_message_of_exactly_the_limit_is_read_and_one_byte_more_is_not() {
    let at = padded(&heartbeat(), MAX_DEVICE_PAYLOAD);
    assert!(parse_device_message(MessageKind::Heartbeat, "dev-1", &at, "t").is_ok());
    let over = padded(&heartbeat(), MAX_DEVICE_PAYLOAD + 1);
    let e = parse_device_message(MessageKind::Heartbeat, "dev-1", &over, "t").unwrap_err();
    assert_eq!(e.reason, "payload_too_large");
    assert_eq!(
        e.to_string(),
        "payload_too_large: 65537 bytes, the limit is 65536"
    );
}

#[test]
fn a_gateway_batch_of_exactly_the_limit_is_read_and_one_byte_more_is_not() {
    let batch = json!({"gateway_id": "gw-1", "reports": [
        {"device_id": "dev-1", "kind": "heartbeat", "data": heartbeat()}]});
    let small = parse_gateway_batch(batch.to_string().as_bytes()).unwrap();
    assert_eq!(small.gateway_id, "gw-1");
    assert_eq!(small.reports.len(), 1);
    assert_eq!(small.reports[0].kind, "heartbeat");
    let at = parse_gateway_batch(&padded(&batch, MAX_GATEWAY_PAYLOAD)).unwrap();
    assert_eq!(at.reports[0].device_id, "dev-1");
    let over = parse_gateway_batch(&padded(&batch, MAX_GATEWAY_PAYLOAD + 1)).unwrap_err();
    assert_eq!(over.reason, "payload_too_large");
    let bad = parse_gateway_batch(br#"{"gateway_id": "gw/1", "reports": []}"#).unwrap_err();
    assert_eq!(bad.reason, "invalid_field");
    assert!(bad.detail.starts_with("gateway_id: "), "{bad}");
}

#[test]
fn message_kinds_are_named_by_the_topic() {
    assert_eq!(
        MessageKind::from_name("register"),
        Some(MessageKind::Register)
    );
    assert_eq!(
        MessageKind::from_name("heartbeat"),
        Some(MessageKind::Heartbeat)
    );
    assert_eq!(
        MessageKind::from_name("install"),
        Some(MessageKind::Install)
    );
    for other in ["", "Heartbeat", "installs", "status"] {
        assert_eq!(MessageKind::from_name(other), None, "{other:?}");
    }
}

#[test]
fn a_body_naming_the_same_device_as_the_channel_is_read() {
    let mut body = heartbeat();
    body["device_id"] = json!("dev-1");
    let e = message(MessageKind::Heartbeat, &body).unwrap();
    assert_eq!(e.key(), "dev-1");
    body["device_id"] = json!("dev-2");
    let e = message(MessageKind::Heartbeat, &body).unwrap_err();
    assert_eq!(e.reason, "device_id_mismatch");
}

#[test]
fn names_are_1_to_256_characters() {
    for field in ["model", "site", "firmware_version"] {
        let with = |v: Value| {
            let mut b = register();
            b[field] = v;
            message(MessageKind::Register, &b)
        };
        assert!(with(json!("x".repeat(256))).is_ok(), "{field}");
        for bad in [json!(""), json!("  "), json!("x".repeat(257))] {
            let e = with(bad).unwrap_err();
            assert_eq!(e.reason, "invalid_field", "{field}");
            assert_eq!(e.detail, format!("{field} must be 1 to 256 characters"));
        }
    }
    let mut b = register();
    b["tags"] = json!(["ok", ""]);
    assert_eq!(
        message(MessageKind::Register, &b).unwrap_err().detail,
        "tags[] must be 1 to 256 characters"
    );
    let mut b = heartbeat();
    b["firmware_version"] = json!(" ");
    assert!(message(MessageKind::Heartbeat, &b).is_err());
    let e = message(MessageKind::Register, &register()).unwrap();
    assert!(matches!(e.payload, Payload::DeviceRegistered(ref r) if r.tags == ["a"]));
}

#[test]
fn the_device_clock_is_taken_when_positive() {
    let with = |ms: Value| {
        let mut b = heartbeat();
        b["occurred_at_ms"] = ms;
        message(MessageKind::Heartbeat, &b)
    };
    let e = with(json!(1)).unwrap();
    assert_eq!(e.meta.occurred_at, 1000, "milliseconds become micros");
    assert_ne!(e.meta.recorded_at, 1000);
    let e = with(json!(1_764_000_000_000_i64)).unwrap();
    assert_eq!(e.meta.occurred_at, 1_764_000_000_000_000);
    for bad in [json!(0), json!(-1)] {
        let e = with(bad.clone()).unwrap_err();
        assert_eq!(e.reason, "invalid_field", "{bad}");
        assert!(e.detail.contains("must be positive"), "{e}");
    }
    // 9999-12-31T23:59:59.999Z is the last instant RFC 3339 writes; a millisecond later is not.
    let e = with(json!(253_402_300_799_999_i64)).unwrap();
    assert_eq!(e.meta.occurred_at, 253_402_300_799_999_000);
    for far in [json!(253_402_300_800_000_i64), json!(i64::MAX)] {
        let e = with(far).unwrap_err();
        assert_eq!(e.detail, "occurred_at_ms is out of range");
    }
}

#[test]
fn uptime_may_be_zero_but_not_negative() {
    let with = |uptime: i64| {
        let mut b = heartbeat();
        b["uptime_s"] = json!(uptime);
        message(MessageKind::Heartbeat, &b)
    };
    assert!(with(0).is_ok());
    assert_eq!(
        with(-1).unwrap_err().detail,
        "uptime_s must not be negative"
    );
}

#[test]
fn progress_is_0_to_100_percent() {
    for ok in [0, 100] {
        let e = message(MessageKind::Install, &progress(ok)).unwrap();
        assert!(
            matches!(e.payload, Payload::InstallProgress(ref p)
                if p.percent == ok && p.phase == InstallPhase::Downloading),
            "{ok}"
        );
    }
    for bad in [-1, 101] {
        let e = message(MessageKind::Install, &progress(bad)).unwrap_err();
        assert_eq!(e.detail, "percent must be between 0 and 100", "{bad}");
    }
}

#[test]
fn a_gateway_report_is_checked_like_a_message() {
    let e = device_message_from_value(MessageKind::Heartbeat, "dev-9", &heartbeat(), "t").unwrap();
    assert_eq!(e.key(), "dev-9");
    let e =
        device_message_from_value(MessageKind::Heartbeat, "dev 9", &heartbeat(), "t").unwrap_err();
    assert_eq!(e.reason, "invalid_device_id");
}

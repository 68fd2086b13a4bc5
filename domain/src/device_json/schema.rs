//! The OpenAPI schemas of what devices send, built from the same field lists and limits as
//! the checks in [`super`]. Device messages are open objects: fields a newer firmware adds are
//! ignored, and so is what they hold.

use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
use utoipa::openapi::{KnownFormat, RefOr, Schema, SchemaFormat};
use utoipa::{PartialSchema, ToSchema};

use super::{
    HeartbeatJson, InstallJson, RegisterJson, HEARTBEAT_FIELDS, INSTALL_FIELDS, MAX_TEXT_LEN,
    OCCURRED_AT_MS, REGISTER_FIELDS,
};
use crate::json_schema::{array_of, integer, number, one_of_words, or_null, text};

/// Any text without a NUL character.
fn plain_text() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(r"^[^\u0000]*$"))
}

fn i32_range() -> std::ops::RangeInclusive<i64> {
    i64::from(i32::MIN)..=i64::from(i32::MAX)
}

fn occurred_at_ms() -> ObjectBuilder {
    or_null(integer(&OCCURRED_AT_MS), Type::Integer).description(Some(
        "The device's clock, milliseconds since the epoch; absent: now.",
    ))
}

/// The schema of one field, by name; `None` for a name the message does not read.
fn field(name: &str) -> Option<ObjectBuilder> {
    let pct = || number(&(0.0..=100.0));
    Some(match name {
        "device_id" => return None,
        "model" | "site" | "firmware_version" => text(MAX_TEXT_LEN),
        "hardware_rev" | "rollout_id" | "error_code" | "message" => {
            or_null(plain_text(), Type::String)
        }
        "occurred_at_ms" => occurred_at_ms(),
        "uptime_s" => integer(&(0..=i64::MAX)),
        "cpu_pct" | "mem_pct" => pct(),
        // Stored as 32-bit floats: anything larger would become infinite.
        "temperature_c" => number(&(-f64::from(f32::MAX)..=f64::from(f32::MAX))),
        "error_count" => integer(&i32_range()).default(Some(0.into())),
        "signal_dbm" => or_null(integer(&i32_range()), Type::Integer),
        "command_id" => or_null(
            ObjectBuilder::new()
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Uuid)))
                .pattern(Some(crate::json_number::UUID_PATTERN)),
            Type::String,
        ),
        "phase" => or_null(words_or_null(&PHASES), Type::String),
        "outcome" => or_null(words_or_null(&OUTCOMES), Type::String),
        "percent" => {
            or_null(integer(&(0..=100)), Type::Integer).description(Some("Absent or null: 0."))
        }
        _ => return None,
    })
}

const PHASES: [&str; 4] = ["DOWNLOADING", "INSTALLING", "REBOOTING", "VERIFYING"];
const OUTCOMES: [&str; 5] = [
    "SUCCEEDED",
    "FAILED",
    "REJECTED",
    "ROLLED_BACK",
    "CANCELLED",
];

/// One of the words, or `null` (an optional enum).
fn words_or_null(words: &[&str]) -> ObjectBuilder {
    let mut values: Vec<serde_json::Value> = words.iter().map(|w| (*w).into()).collect();
    values.push(serde_json::Value::Null);
    ObjectBuilder::new().enum_values(Some(values))
}

/// An open object with the given fields, of which `required` must be present.
fn message(description: &str, fields: &[&str], required: &[&str]) -> ObjectBuilder {
    let mut object = ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(format!(
            "{description} A device_id field, when present, must equal the path's id. Other \
         fields are ignored."
        )));
    for name in fields {
        if *name == "tags" {
            object = object.property(*name, array_of(text(MAX_TEXT_LEN), None));
        } else if let Some(schema) = field(name) {
            object = object.property(*name, schema);
        }
    }
    for name in required {
        object = object.required(*name);
    }
    object
}

impl PartialSchema for RegisterJson {
    fn schema() -> RefOr<Schema> {
        message(
            "A device registers (or re-registers) itself.",
            &REGISTER_FIELDS,
            &["model", "site", "firmware_version"],
        )
        .into()
    }
}
impl ToSchema for RegisterJson {
    fn name() -> std::borrow::Cow<'static, str> {
        "RegistrationIn".into()
    }
}

impl PartialSchema for HeartbeatJson {
    fn schema() -> RefOr<Schema> {
        message(
            "A device's periodic health report.",
            &HEARTBEAT_FIELDS,
            &[
                "firmware_version",
                "uptime_s",
                "cpu_pct",
                "mem_pct",
                "temperature_c",
            ],
        )
        .into()
    }
}
impl ToSchema for HeartbeatJson {
    fn name() -> std::borrow::Cow<'static, str> {
        "HeartbeatIn".into()
    }
}

impl PartialSchema for InstallJson {
    fn schema() -> RefOr<Schema> {
        let progress = message(
            "Progress of an install: its phase.",
            &INSTALL_FIELDS,
            &["kind", "phase"],
        )
        .property("kind", one_of_words(["progress"]))
        .property("phase", one_of_words(PHASES))
        // Read but not checked in a progress report.
        .property("firmware_version", or_null(plain_text(), Type::String));
        let result = message(
            "The result of an install: its outcome and the firmware now running.",
            &INSTALL_FIELDS,
            &["kind", "outcome", "firmware_version"],
        )
        .property("kind", one_of_words(["result"]))
        .property("outcome", one_of_words(OUTCOMES))
        .property("firmware_version", text(MAX_TEXT_LEN))
        // Read but not checked in a result.
        .property("percent", or_null(integer(&i32_range()), Type::Integer));
        OneOfBuilder::new().item(progress).item(result).into()
    }
}
impl ToSchema for InstallJson {
    fn name() -> std::borrow::Cow<'static, str> {
        "InstallIn".into()
    }
}

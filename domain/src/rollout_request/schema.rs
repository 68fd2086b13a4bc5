//! The OpenAPI schemas of a rollout request, built from the constants [`super::RolloutRequest`]
//! checks against, so the document states exactly what the server accepts.

use utoipa::openapi::schema::{AnyOfBuilder, ObjectBuilder, Type};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{PartialSchema, ToSchema};

use super::{
    limits, ReleaseIn, RolloutIn, SelectorIn, StrategyIn, WindowIn, MAX_ARTIFACT_URI_LEN,
    MAX_NAME_LEN, MAX_SIGNATURE_LEN, MAX_WAVES, ROLLBACK_POLICIES,
};
use crate::json_schema::{
    array_of, closed_object, device_id, integer, number, one_of_words, or_null, semver, sha256,
    text,
};

fn reference<T: ToSchema>() -> RefOr<Schema> {
    RefOr::Ref(utoipa::openapi::Ref::from_schema_name(T::name()))
}

impl PartialSchema for RolloutIn {
    fn schema() -> RefOr<Schema> {
        let object = closed_object("A rollout: which release, to which devices, how.")
            .property(
                "rollout_id",
                or_null(device_id(), Type::String).description(Some(
                    "For idempotent retries by the caller; a new UUID when absent.",
                )),
            )
            .property("release", reference::<ReleaseIn>())
            .property(
                "release_id",
                crate::json_schema::release_id().description(Some(
                    "A published release of the catalogue, instead of `release`: its artifact, \
                     version and compatible models and hardware revisions come from the catalogue, \
                     and its commands carry the director's signed statement.",
                )),
            )
            .property(
                "allow_downgrade",
                ObjectBuilder::new()
                    .schema_type(Type::Boolean)
                    .default(Some(false.into()))
                    .description(Some(
                        "With `release_id`: also target devices on a newer version than the release",
                    )),
            )
            .property("selector", reference::<SelectorIn>())
            .required("selector")
            .property("strategy", reference::<StrategyIn>());
        // Exactly one of `release` and `release_id`; `allow_downgrade` only with the latter. A
        // property that must be null here and an object or a string above cannot be present.
        let absent = || ObjectBuilder::new().schema_type(Type::Null);
        let one_release = utoipa::openapi::schema::OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .required("release")
                    .property("release_id", absent())
                    .property(
                        "allow_downgrade",
                        ObjectBuilder::new()
                            .schema_type(Type::Boolean)
                            .enum_values(Some([false])),
                    ),
            )
            .item(
                ObjectBuilder::new()
                    .required("release_id")
                    .property("release", absent()),
            );
        utoipa::openapi::schema::AllOfBuilder::new()
            .item(object)
            .item(one_release)
            .into()
    }
}
impl ToSchema for RolloutIn {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        for (name, schema) in [
            (ReleaseIn::name(), ReleaseIn::schema()),
            (SelectorIn::name(), SelectorIn::schema()),
            (StrategyIn::name(), StrategyIn::schema()),
            (WindowIn::name(), WindowIn::schema()),
        ] {
            schemas.push((name.into_owned(), schema));
        }
    }
}

impl PartialSchema for ReleaseIn {
    fn schema() -> RefOr<Schema> {
        closed_object("The firmware to install.")
            .property("version", semver())
            .required("version")
            .property(
                "artifact_uri",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .max_length(Some(MAX_ARTIFACT_URI_LEN))
                    .pattern(Some(
                        r"^(https://[^\u0000]+|/v1/artifacts/[0-9A-Fa-f]{64})$",
                    ))
                    .description(Some(
                        "An https:// URI, or /v1/artifacts/<sha256> for otaledger's own \
                         artifact store, which devices reach at the server they report to; that \
                         artifact must be in the store, with the release's digest and length \
                         (409 otherwise)",
                    )),
            )
            .required("artifact_uri")
            .property("sha256", sha256())
            .required("sha256")
            .property("size_bytes", integer(&limits::SIZE_BYTES))
            .required("size_bytes")
            .property("signature", text(MAX_SIGNATURE_LEN))
            .required("signature")
            .into()
    }
}
impl ToSchema for ReleaseIn {}

/// The selector's lists; at least one must name something.
const SELECTOR_LISTS: [&str; 5] = ["models", "sites", "tags", "current_versions", "device_ids"];

impl PartialSchema for SelectorIn {
    fn schema() -> RefOr<Schema> {
        let mut object = closed_object(
            "Which devices: a device matches when it matches every non-empty list (any value \
             within a list). At least one list must name something.",
        );
        for name in SELECTOR_LISTS {
            let item = if name == "device_ids" {
                device_id()
            } else {
                text(MAX_NAME_LEN)
            };
            object = object.property(name, array_of(item, None));
        }
        let mut names_something = AnyOfBuilder::new();
        for name in SELECTOR_LISTS {
            names_something = names_something.item(
                ObjectBuilder::new()
                    .property(
                        name,
                        utoipa::openapi::schema::ArrayBuilder::new().min_items(Some(1)),
                    )
                    .required(name),
            );
        }
        utoipa::openapi::schema::AllOfBuilder::new()
            .item(object)
            .item(names_something)
            .into()
    }
}
impl ToSchema for SelectorIn {}

impl PartialSchema for StrategyIn {
    fn schema() -> RefOr<Schema> {
        let d = StrategyIn::default();
        let wave = ObjectBuilder::new()
            .schema_type(Type::Number)
            .exclusive_minimum(Some(0.0))
            .maximum(Some(100.0));
        closed_object(
            "How: waves, verdict thresholds, timeouts, retries, limits, schedule and rollback. \
             Every field left out takes its default.",
        )
        .property(
            "waves_pct",
            array_of(wave, Some(MAX_WAVES))
                .min_items(Some(1))
                .unique_items(true)
                .default(Some(serde_json::json!(d.waves_pct)))
                .description(Some(
                    "Cumulative shares of the selection at which each wave ends, in any order \
                     (sorted by the server); a last wave to 100 is added when missing.",
                )),
        )
        .property(
            "success_threshold_pct",
            number(&limits::THRESHOLD_PCT).default(Some(d.success_threshold_pct.into())),
        )
        .property(
            "failure_threshold_pct",
            number(&limits::THRESHOLD_PCT).default(Some(d.failure_threshold_pct.into())),
        )
        .property(
            "min_devices_for_verdict",
            integer(&limits::MIN_DEVICES_FOR_VERDICT)
                .default(Some(d.min_devices_for_verdict.into())),
        )
        .property(
            "device_timeout_s",
            integer(&limits::DEVICE_TIMEOUT_S).default(Some(d.device_timeout_s.into())),
        )
        .property(
            "max_retries",
            integer(&limits::MAX_RETRIES).default(Some(d.max_retries.into())),
        )
        .property(
            "retry_backoff_s",
            integer(&limits::RETRY_BACKOFF_S).default(Some(d.retry_backoff_s.into())),
        )
        .property(
            "max_in_flight",
            integer(&limits::MAX_IN_FLIGHT).default(Some(d.max_in_flight.into())),
        )
        .property(
            "health_gate_window_s",
            integer(&limits::HEALTH_GATE_WINDOW_S).default(Some(d.health_gate_window_s.into())),
        )
        .property(
            "scheduled_start_ms",
            or_null(integer(&limits::SCHEDULED_START_MS), Type::Integer).description(Some(
                "Milliseconds since the epoch; absent or null: start now.",
            )),
        )
        .property(
            "maintenance_window",
            utoipa::openapi::schema::OneOfBuilder::new()
                .item(reference::<WindowIn>())
                .item(ObjectBuilder::new().schema_type(Type::Null)),
        )
        .property(
            "rollback_policy",
            one_of_words(ROLLBACK_POLICIES.iter().map(|(name, _)| *name))
                .default(Some(serde_json::json!(d.rollback_policy))),
        )
        .into()
    }
}
impl ToSchema for StrategyIn {}

impl PartialSchema for WindowIn {
    fn schema() -> RefOr<Schema> {
        closed_object("A daily window (UTC) in which waves may start.")
            .property("start_minute", integer(&limits::START_MINUTE))
            .required("start_minute")
            .property("duration_minutes", integer(&limits::DURATION_MINUTES))
            .required("duration_minutes")
            .into()
    }
}
impl ToSchema for WindowIn {}

//! Rollout requests: what parses, what is refused and with which field, at every boundary.

use serde_json::{json, Value};

use super::*;

fn good() -> Value {
    json!({
        "rollout_id": "r-1",
        "release": {"version": "4.3.0", "artifact_uri": "https://artifacts.example/fw/4.3.0.bin",
                    "sha256": "AB".repeat(32), "size_bytes": 1_234_567, "signature": "MEUCIQ..."},
        "selector": {"models": ["elevator-gen2"], "current_versions": ["4.2.4"]},
        "strategy": {"waves_pct": [1, 10, 50, 100], "max_in_flight": 200, "rollback_policy": "on_abort",
                     "maintenance_window": {"start_minute": 60, "duration_minutes": 240}}
    })
}

fn input(v: &Value) -> RolloutIn {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{e}: {v}"))
}

fn input_error(v: &Value) -> String {
    serde_json::from_value::<RolloutIn>(v.clone())
        .map(|i| panic!("read: {i:?}"))
        .unwrap_err()
        .to_string()
}

fn parse(v: &Value) -> Result<RolloutRequest, RequestError> {
    RolloutRequest::parse(input(v), "alice")
}

/// The good request with one change.
fn with(change: impl FnOnce(&mut Value)) -> Value {
    let mut v = good();
    change(&mut v);
    v
}

/// The field a request with `change` is refused for.
fn refused(change: impl FnOnce(&mut Value)) -> RequestError {
    let v = with(change);
    match parse(&v) {
        Ok(r) => panic!("accepted: {r:?} from {v}"),
        Err(e) => {
            assert!(e.to_string().starts_with(e.field()), "{e}");
            e
        }
    }
}

fn accepted(change: impl FnOnce(&mut Value)) -> RolloutRequest {
    let v = with(change);
    parse(&v).unwrap_or_else(|e| panic!("{e}: {v}"))
}

#[test]
fn a_good_request_becomes_the_event_with_defaults_filled_in() {
    let r = parse(&good()).unwrap();
    assert_eq!(r.rollout_id().as_str(), "r-1");
    assert_eq!(r.requested_by(), "alice", "the authenticated operator");
    assert_eq!(r.release().version().as_str(), "4.3.0");
    assert_eq!(r.release().sha256().as_str(), "ab".repeat(32), "lowercased");
    assert_eq!(
        r.release().artifact_uri(),
        "https://artifacts.example/fw/4.3.0.bin"
    );
    assert_eq!(r.release().size_bytes(), 1_234_567);
    assert_eq!(r.release().signature(), "MEUCIQ...");
    assert_eq!(r.selector().models, ["elevator-gen2"]);
    assert_eq!(r.strategy().max_in_flight, 200);
    let e = UpdateRequested::from(r);
    assert_eq!(
        e,
        UpdateRequested {
            catalogue: None,
            rollout_id: "r-1".into(),
            requested_by: "alice".into(),
            release: Release {
                version: "4.3.0".into(),
                artifact_uri: "https://artifacts.example/fw/4.3.0.bin".into(),
                sha256: "ab".repeat(32),
                size_bytes: 1_234_567,
                signature: "MEUCIQ...".into(),
            },
            selector: TargetSelector {
                models: vec!["elevator-gen2".into()],
                current_versions: vec!["4.2.4".into()],
                ..TargetSelector::default()
            },
            strategy: Strategy {
                max_in_flight: 200,
                maintenance_window: Some(MaintenanceWindow {
                    start_minute: 60,
                    duration_minutes: 240,
                }),
                ..Strategy::default()
            },
        }
    );
}

#[test]
fn a_request_without_a_strategy_gets_the_default_strategy() {
    let r = accepted(|v| {
        v.as_object_mut().unwrap().remove("strategy");
    });
    assert_eq!(r.strategy(), &Strategy::default());
    assert_eq!(StrategyIn::default().rollback_policy, "on_abort");
    assert_eq!(
        parse_strategy(StrategyIn::default()),
        Ok(Strategy::default()),
        "the defaults are valid and survive the round trip"
    );
    let r = accepted(|v| v["strategy"] = json!({"max_retries": 0}));
    assert_eq!(
        r.strategy(),
        &Strategy {
            max_retries: 0,
            ..Strategy::default()
        }
    );
}

#[test]
fn the_requester_is_the_authenticated_operator_and_the_rollout_is_named_or_filled_in() {
    // A request cannot name its own requester: the field is unknown.
    let named = input_error(&with(|v| v["requested_by"] = json!("mallory")));
    assert!(named.contains("unknown field `requested_by`"), "{named}");
    let r = accepted(|v| {
        v.as_object_mut().unwrap().remove("rollout_id");
    });
    let id = uuid::Uuid::parse_str(r.rollout_id().as_str()).unwrap();
    assert_eq!(id.get_version_num(), 4, "a new random UUID");
    assert_eq!(
        RolloutRequest::parse(input(&good()), " "),
        Err(RequestError::Text {
            field: "requested_by",
            max: 256
        }),
        "the operator is checked like any name"
    );
    let as_who = |who: &str| RolloutRequest::parse(input(&good()), who);
    assert_eq!(as_who(&"x".repeat(256)).unwrap().requested_by().len(), 256);
    assert!(as_who(&"x".repeat(257)).is_err());
    // Limits count characters, as the messages and the OpenAPI document say, not bytes.
    assert_eq!(as_who(&"é".repeat(256)).unwrap().requested_by().len(), 512);
    assert!(as_who(&"é".repeat(257)).is_err());
    assert_eq!(
        refused(|v| v["rollout_id"] = json!("a/b")).field(),
        "rollout_id"
    );
    assert_eq!(
        refused(|v| v["rollout_id"] = json!("")).field(),
        "rollout_id"
    );
    assert_eq!(
        refused(|v| v["rollout_id"] = json!("x".repeat(129))).field(),
        "rollout_id"
    );
    accepted(|v| v["rollout_id"] = json!("x".repeat(128)));
}

#[test]
fn versions_and_digests_are_parsed() {
    let e = refused(|v| v["release"]["version"] = json!("4.3"));
    assert_eq!(
        e.to_string(),
        "release.version: \"4.3\" is not a semantic version (MAJOR.MINOR.PATCH)"
    );
    assert_eq!(
        refused(|v| v["release"]["version"] = json!("")).field(),
        "release.version"
    );
    accepted(|v| v["release"]["version"] = json!("4.3.0-rc.1+b7"));
    let e = refused(|v| v["release"]["sha256"] = json!("abc"));
    assert_eq!(e, RequestError::Sha256(Sha256Error::Length(3)));
    assert_eq!(
        e.to_string(),
        "release.sha256: must be 64 hexadecimal digits, got 3 characters"
    );
    assert_eq!(
        refused(|v| v["release"]["sha256"] = json!("g".repeat(64))).field(),
        "release.sha256"
    );
    assert_eq!(
        refused(|v| v["release"]["sha256"] = json!("a".repeat(65))).field(),
        "release.sha256"
    );
}

#[test]
fn artifact_uris_are_https_and_of_bounded_length() {
    let uri = |len: usize| format!("https://{}", "a".repeat(len - "https://".len()));
    accepted(|v| v["release"]["artifact_uri"] = json!("https://a"));
    accepted(|v| v["release"]["artifact_uri"] = json!(uri(2048)));
    // otaledger's own store, by a digest, in either case (the API checks it is the release's).
    accepted(|v| {
        v["release"]["artifact_uri"] = json!(format!("/v1/artifacts/{}", "ab".repeat(32)));
    });
    accepted(|v| {
        v["release"]["artifact_uri"] = json!(format!("/v1/artifacts/{}", "AB".repeat(32)));
    });
    for bad in [
        json!(format!("/v1/artifacts/{}", "ab".repeat(31))),
        json!(format!("/v1/artifacts/{}z", "ab".repeat(31))),
        json!("/v1/artifacts/"),
        json!("/fw.bin"),
        json!("https://"),
        json!(uri(2049)),
        json!("http://a/fw.bin"),
        json!("ftp://x/y"),
        json!(" https://a/fw.bin"),
        json!(""),
    ] {
        let e = refused(|v| v["release"]["artifact_uri"] = bad.clone());
        assert_eq!(e, RequestError::ArtifactUri, "{bad}");
        assert_eq!(
            e.to_string(),
            "release.artifact_uri: must be an https:// URI of at most 2048 characters, or \
             /v1/artifacts/<sha256> for otaledger's own artifact store"
        );
    }
}

#[test]
fn sizes_and_signatures_are_bounded() {
    accepted(|v| v["release"]["size_bytes"] = json!(1));
    accepted(|v| v["release"]["size_bytes"] = json!(MAX_SIZE_BYTES));
    let e = refused(|v| v["release"]["size_bytes"] = json!(0));
    assert_eq!(
        e.to_string(),
        "release.size_bytes: must be between 1 and 68719476736, got 0"
    );
    assert_eq!(
        refused(|v| v["release"]["size_bytes"] = json!(MAX_SIZE_BYTES + 1)).field(),
        "release.size_bytes"
    );
    accepted(|v| v["release"]["signature"] = json!("s"));
    accepted(|v| v["release"]["signature"] = json!("s".repeat(8192)));
    for bad in [json!(""), json!("  \t"), json!("s".repeat(8193))] {
        let e = refused(|v| v["release"]["signature"] = bad.clone());
        assert_eq!(
            e.to_string(),
            "release.signature: must be 1 to 8192 characters"
        );
    }
}

#[test]
fn a_selector_names_something_and_every_name_is_checked() {
    let e = refused(|v| v["selector"] = json!({}));
    assert_eq!(e, RequestError::NoSelector);
    assert_eq!(
        e.to_string(),
        "selector: must name at least one of models, sites, tags, current_versions, device_ids"
    );
    for list in ["models", "sites", "tags", "current_versions", "device_ids"] {
        let r = accepted(|v| v["selector"] = json!({ list: ["d1"] }));
        assert!(r.selector() != &TargetSelector::default(), "{list}");
    }
    for list in ["models", "sites", "tags", "current_versions"] {
        let field = format!("selector.{list}");
        accepted(|v| v["selector"][list] = json!(["x".repeat(256)]));
        for bad in [json!(""), json!(" "), json!("x".repeat(257))] {
            let e = refused(|v| v["selector"][list] = json!(["ok", bad]));
            assert_eq!(e.field(), field);
            assert_eq!(
                e.to_string(),
                format!("{field}: must be 1 to 256 characters")
            );
        }
    }
    let e = refused(|v| v["selector"]["device_ids"] = json!(["d1", "a/b"]));
    assert_eq!(
        e.to_string(),
        "selector.device_ids: device id contains '/'; allowed are letters, digits, '.', '_', ':' and '-'"
    );
    assert_eq!(
        refused(|v| v["selector"]["device_ids"] = json!([""])).field(),
        "selector.device_ids"
    );
}

#[test]
fn waves_are_1_to_20_distinct_shares_sorted_and_closed_at_100() {
    let waves = |v: Value| move |r: &mut Value| r["strategy"]["waves_pct"] = v;
    let of = |r: RolloutRequest| r.strategy().waves_pct.clone();
    assert_eq!(of(accepted(waves(json!([100])))), [100.0]);
    assert_eq!(of(accepted(waves(json!([0.5, 100])))), [0.5, 100.0]);
    // Order carries nothing (the shares are cumulative) and the last wave reaches everyone.
    assert_eq!(of(accepted(waves(json!([50, 10])))), [10.0, 50.0, 100.0]);
    assert_eq!(of(accepted(waves(json!([99.9])))), [99.9, 100.0]);
    assert_eq!(of(accepted(waves(json!([100, 5])))), [5.0, 100.0]);
    let twenty: Vec<f64> = (1..=20).map(|i| f64::from(i) * 5.0).collect();
    assert_eq!(of(accepted(waves(json!(twenty)))), twenty);
    // Twenty shares short of 100 make 21 waves: the limit is on what the request lists.
    let short: Vec<f64> = (1..=20).map(f64::from).collect();
    assert_eq!(of(accepted(waves(json!(short)))).len(), 21);
    let e = refused(waves(json!([])));
    assert_eq!(e, RequestError::WaveCount);
    assert_eq!(e.to_string(), "strategy.waves_pct: must list 1 to 20 waves");
    let twenty_one: Vec<f64> = (1..=21).map(|i| f64::from(i) * 100.0 / 21.0).collect();
    assert_eq!(refused(waves(json!(twenty_one))), RequestError::WaveCount);
    for bad in [
        json!([10, 10, 100]),
        json!([0, 100]),
        json!([-1, 100]),
        json!([50, 100.5]),
        json!([100, 100]),
        json!([100.0, 100]),
    ] {
        let e = refused(waves(bad.clone()));
        assert_eq!(e, RequestError::WaveShares, "{bad}");
        assert_eq!(
            e.to_string(),
            "strategy.waves_pct: cumulative shares must be distinct and lie in (0, 100]"
        );
    }
}

#[test]
fn every_strategy_number_is_bounded_at_both_ends() {
    let cases: [(&str, f64, f64); 8] = [
        ("success_threshold_pct", 0.0, 100.0),
        ("failure_threshold_pct", 0.0, 100.0),
        ("min_devices_for_verdict", 1.0, 1_000_000.0),
        ("device_timeout_s", 10.0, 604_800.0),
        ("max_retries", 0.0, 10.0),
        ("retry_backoff_s", 0.0, 86_400.0),
        ("max_in_flight", 1.0, 1_000_000.0),
        ("health_gate_window_s", 0.0, 86_400.0),
    ];
    for (name, lo, hi) in cases {
        let field = format!("strategy.{name}");
        let float = name.ends_with("_pct");
        let n = |x: f64| if float { json!(x) } else { json!(x as i64) };
        let step = if float { 0.1 } else { 1.0 };
        accepted(|v| v["strategy"][name] = n(lo));
        accepted(|v| v["strategy"][name] = n(hi));
        for bad in [lo - step, hi + step] {
            let e = refused(|v| v["strategy"][name] = n(bad));
            assert_eq!(e.field(), field, "{name} = {bad}");
            assert!(
                e.to_string()
                    .starts_with(&format!("{field}: must be between {lo} and {hi}, got ")),
                "{e}"
            );
        }
    }
    let e = refused(|v| v["strategy"]["failure_threshold_pct"] = json!(140));
    assert_eq!(
        e.to_string(),
        "strategy.failure_threshold_pct: must be between 0 and 100, got 140"
    );
}

#[test]
fn schedules_and_windows_are_bounded() {
    let r = accepted(|v| v["strategy"]["scheduled_start_ms"] = json!(1));
    assert_eq!(
        r.strategy().scheduled_start,
        Some(1000),
        "milliseconds become micros"
    );
    let r = accepted(|v| v["strategy"]["scheduled_start_ms"] = json!(MAX_SCHEDULED_START_MS));
    assert_eq!(
        r.strategy().scheduled_start,
        Some(MAX_SCHEDULED_START_MS * 1000)
    );
    for bad in [json!(0), json!(MAX_SCHEDULED_START_MS + 1)] {
        let e = refused(|v| v["strategy"]["scheduled_start_ms"] = bad.clone());
        assert_eq!(e.field(), "strategy.scheduled_start_ms");
    }
    let window = |start: i32, duration: i32| {
        move |v: &mut Value| {
            v["strategy"]["maintenance_window"] =
                json!({"start_minute": start, "duration_minutes": duration});
        }
    };
    accepted(window(0, 1));
    let r = accepted(window(1439, 1440));
    assert_eq!(
        r.strategy().maintenance_window,
        Some(MaintenanceWindow {
            start_minute: 1439,
            duration_minutes: 1440
        })
    );
    for (start, duration, field) in [
        (-1, 60, "strategy.maintenance_window.start_minute"),
        (1440, 60, "strategy.maintenance_window.start_minute"),
        (0, 0, "strategy.maintenance_window.duration_minutes"),
        (0, 1441, "strategy.maintenance_window.duration_minutes"),
    ] {
        assert_eq!(refused(window(start, duration)).field(), field);
    }
}

#[test]
fn rollback_policies_are_named() {
    for (name, policy) in [
        ("none", RollbackPolicy::None),
        ("on_abort", RollbackPolicy::OnAbort),
        ("on_failure", RollbackPolicy::OnFailure),
    ] {
        let r = accepted(|v| v["strategy"]["rollback_policy"] = json!(name));
        assert_eq!(r.strategy().rollback_policy, policy);
    }
    for bad in ["sometimes", "ON_ABORT", "", "none "] {
        let e = refused(|v| v["strategy"]["rollback_policy"] = json!(bad));
        assert_eq!(e, RequestError::RollbackPolicy(bad.to_owned()));
    }
    assert_eq!(
        RequestError::RollbackPolicy("sometimes".into()).to_string(),
        "strategy.rollback_policy: must be none, on_abort or on_failure, not \"sometimes\""
    );
}

#[test]
fn the_first_bad_field_in_check_order_is_named() {
    let all_bad = |v: &mut Value| {
        v["release"]["version"] = json!("1");
        v["release"]["sha256"] = json!("x");
        v["selector"] = json!({});
        v["strategy"]["max_retries"] = json!(99);
        v["rollout_id"] = json!("a/b");
    };
    assert_eq!(refused(all_bad).field(), "release.version");
    assert_eq!(
        refused(|v| {
            all_bad(v);
            v["release"]["version"] = json!("1.0.0");
        })
        .field(),
        "release.sha256"
    );
    assert_eq!(
        refused(|v| {
            all_bad(v);
            v["release"] = good()["release"].clone();
        })
        .field(),
        "selector"
    );
    assert_eq!(
        refused(|v| {
            all_bad(v);
            v["release"] = good()["release"].clone();
            v["selector"] = good()["selector"].clone();
        })
        .field(),
        "strategy.max_retries"
    );
    assert_eq!(
        refused(|v| {
            all_bad(v);
            v["release"] = good()["release"].clone();
            v["selector"] = good()["selector"].clone();
            v["strategy"] = json!({});
        })
        .field(),
        "rollout_id"
    );
}

#[test]
fn the_json_shape_is_strict() {
    let unknown = |change: fn(&mut Value)| {
        let v = with(change);
        serde_json::from_value::<RolloutIn>(v)
            .unwrap_err()
            .to_string()
    };
    assert!(unknown(|v| v["colour"] = json!("red")).contains("unknown field `colour`"));
    assert!(unknown(|v| v["release"]["colour"] = json!(1)).contains("unknown field `colour`"));
    assert!(unknown(|v| v["selector"]["colour"] = json!(1)).contains("unknown field `colour`"));
    assert!(unknown(|v| v["strategy"]["colour"] = json!(1)).contains("unknown field `colour`"));
    assert!(
        unknown(|v| v["strategy"]["maintenance_window"]["colour"] = json!(1))
            .contains("unknown field `colour`")
    );
    assert!(unknown(|v| {
        v.as_object_mut().unwrap().remove("selector");
    })
    .contains("missing field `selector`"));
    assert!(unknown(|v| {
        v["release"].as_object_mut().unwrap().remove("signature");
    })
    .contains("missing field `signature`"));
    assert!(unknown(|v| v["strategy"]["max_retries"] = Value::Null).contains("invalid type"));
    assert!(unknown(|v| v["strategy"]["max_retries"] = json!("two")).contains("invalid type"));
    assert!(unknown(|v| v["release"] = json!(5)).contains("expected struct ReleaseIn"));
    // A selector may leave lists out, a strategy any field.
    let v = json!({
        "release": good()["release"].clone(),
        "selector": {"tags": ["eu"]},
        "strategy": {"max_retries": 1},
    });
    let i = input(&v);
    assert_eq!(i.selector.models, Vec::<String>::new());
    assert_eq!(i.strategy.max_retries, 1);
    assert_eq!(i.strategy.max_in_flight, Strategy::default().max_in_flight);
    assert_eq!(i.rollout_id, None);
}

#[test]
fn a_request_without_a_release_is_refused_naming_it() {
    let e = refused(|v| {
        v.as_object_mut().map(|o| o.remove("release"));
    });
    assert_eq!(e, RequestError::NoRelease);
    assert_eq!(e.field(), "release");
}

#[test]
fn a_release_or_release_id_given_as_null_is_refused() {
    for field in ["release", "release_id"] {
        let e = input_error(&with(|v| {
            v[field] = Value::Null;
        }));
        assert!(e.contains("invalid type: null"), "{field}: {e}");
    }
    let r = input(&with(|v| {
        v["release_id"] = "fw-1".into();
    }));
    assert_eq!(r.release_id.as_deref(), Some("fw-1"));
}

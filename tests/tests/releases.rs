#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! The release catalogue and the image repository (ADR 0038) behind the real API, PostgreSQL
//! and Kafka, tried as an operator and as an attacker: a release is published only with targets
//! metadata the offline release key signed (`otaledger keys generate`, `otaledger release sign`,
//! the real binary), listing it exactly; python-tuf's ngclient, which no one here wrote, then
//! downloads and verifies it, follows a root rotation and refuses a tampered image; the server
//! re-signs its timestamp before it expires; only a published release may be rolled out, only
//! to compatible models, and the director's statements reach devices that check them (and
//! refuse replays, other devices' statements and older releases without `allow_downgrade`).

use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use http_body_util::BodyExt as _;
use otaledger_domain::access::Role;
use otaledger_domain::tuf::director::DeviceTrust;
use otaledger_domain::tuf::metadata::{targets_json, Root, Signed};
use otaledger_domain::tuf::SigningKey;
use otaledger_domain::Payload;
use otaledger_ledger::mqtt_admin::MqttAdmin;
use otaledger_simulator::download::Downloads;
use otaledger_simulator::trust::{Device, Trust};
use otaledger_simulator::{self as simulator, Behaviour, SimConfig};
use otaledger_tests::rollouts::{
    call, call_as, request_rollout, sim_config, start_sim, wait_fleet, wait_state,
};
use otaledger_tests::store::{fixture, listen, provision_fleet, Fixture, ROLLOUT_STACK};
use otaledger_tests::{
    as_client, decode_all, issue_token, mqtt_bridge_subscribed, read_topic, spawn_components,
};
use serde_json::{json, Value};
use tower::ServiceExt;

fn sha256_of(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn upload(app: &axum::Router, bytes: &[u8]) -> String {
    let req = Request::builder()
        .method("POST")
        .uri("/v1/artifacts")
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(Body::from(bytes.to_vec()))
        .unwrap();
    let response = app.clone().oneshot(req).await.unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    sha256_of(bytes)
}

async fn get_bytes(app: &axum::Router, uri: &str) -> (StatusCode, Vec<u8>) {
    let req = Request::builder().uri(uri).body(Body::empty()).unwrap();
    let response = app.clone().oneshot(req).await.unwrap();
    let status = response.status();
    (
        status,
        response
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
}

/// `otaledger <args>`: its standard output, or the test fails with its error output.
fn cli(cfg: &otaledger_ledger::config::Config, args: &[&str]) -> Vec<u8> {
    let out = otaledger_tests::otaledger_command(cfg, args, "cli")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "otaledger {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn write_json(path: &Path, v: &Value) {
    std::fs::write(path, serde_json::to_vec_pretty(v).unwrap()).unwrap();
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// python-tuf's ngclient fetches and verifies `target` as `token`: its output or its error.
fn python_tuf(
    root: &Path,
    base: &str,
    target: &str,
    out: &Path,
    token: &str,
) -> Result<String, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/tuf_download.py");
    let run = std::process::Command::new("python3")
        .arg(script)
        .arg(root)
        .arg(format!("{base}/v1/tuf/"))
        .arg(format!("{base}/v1/tuf/targets/"))
        .arg(target)
        .arg(out)
        .env("OTALEDGER_TOKEN", token)
        .output()
        .unwrap();
    if run.status.success() {
        Ok(String::from_utf8_lossy(&run.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&run.stderr).into_owned())
    }
}

fn register_body(id: &str, version: &str, digest: &str, length: usize, models: &[&str]) -> Value {
    json!({"release_id": id, "version": version, "models": models, "sha256": digest,
           "length": length, "notes": "test release"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_releases_signed_offline_publish_and_python_tuf_verifies_them() {
    let Fixture {
        name,
        cfg,
        pool,
        producer,
        dir,
        state,
    } = fixture("releases_publish", 1 << 24).await;
    let base = listen(state.clone()).await;
    let app = as_client(otaledger_api::app(state), pool.clone(), producer.clone()).await;
    let operator = issue_token(&pool, &producer, &format!("{name}-op"), Role::Operator).await;
    let image: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    let digest = upload(&app, &image).await;
    let id = "lift-8.0.0";

    // ---- the catalogue ---------------------------------------------------------------------
    let (status, v) = call(
        &app,
        "POST",
        "/v1/releases",
        Some(&register_body(id, "8.0.0", &digest, 50_000, &["lift-x"])),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["state"], "draft");
    let (status, v) = call(
        &app,
        "POST",
        "/v1/releases",
        Some(&register_body(id, "8.0.0", &digest, 50_000, &["lift-x"])),
    )
    .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (StatusCode::CONFLICT, Some("release_exists"))
    );
    let (status, v) = call(
        &app,
        "POST",
        "/v1/releases",
        Some(&register_body(
            "other",
            "8.0.0",
            &digest,
            49_999,
            &["lift-x"],
        )),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "a length the store does not hold: {v}"
    );
    let (status, v) = call(
        &app,
        "POST",
        "/v1/releases",
        Some(&register_body("other", "8.0", &digest, 50_000, &["lift-x"])),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(v["reason"].as_str().unwrap().starts_with("version"), "{v}");
    let (status, _) = call_as(
        &app,
        &operator,
        "POST",
        &format!("/v1/releases/{id}/publish"),
        Some(&json!({})),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "publishing takes an approver"
    );

    // A rollout may not name a draft.
    let by_id = |release: &str| {
        json!({"release_id": release, "selector": {"models": ["lift-x"]},
                                        "strategy": {"waves_pct": [100]}})
    };
    let (status, v) = call(&app, "POST", "/v1/rollouts", Some(&by_id(id))).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (StatusCode::CONFLICT, Some("release_not_published")),
        "{v}"
    );

    // ---- keys, made offline by the real binary, and the root ------------------------------
    let (status, v) = call(
        &app,
        "POST",
        &format!("/v1/releases/{id}/publish"),
        Some(&json!({"signed": {}, "signatures": []})),
    )
    .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (StatusCode::CONFLICT, Some("no_root")),
        "{v}"
    );
    let (status, v) = call(
        &app,
        "POST",
        &format!("/v1/releases/{id}/publish"),
        Some(&json!({"signatures": []})),
    )
    .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_metadata")),
        "{v}"
    );
    let (status, keys) = call(&app, "GET", "/v1/tuf/keys", None).await;
    assert_eq!(status, StatusCode::OK);
    let keys_dir = dir.join("keys");
    write_json(&dir.join("server-keys.json"), &keys);
    cli(
        &cfg,
        &[
            "keys",
            "generate",
            "--dir",
            keys_dir.to_str().unwrap(),
            "--server-keys",
            dir.join("server-keys.json").to_str().unwrap(),
        ],
    );
    let root1 = read_json(&keys_dir.join("1.root.json"));
    let root_key =
        SigningKey::from_file(&std::fs::read_to_string(keys_dir.join("root.key")).unwrap())
            .unwrap();
    let targets_key =
        SigningKey::from_file(&std::fs::read_to_string(keys_dir.join("targets.key")).unwrap())
            .unwrap();
    // A root that keeps snapshot for a key of its own: the server could never sign for it.
    let own = SigningKey::generate().unwrap();
    let body = Root::build(
        1,
        4_000_000_000,
        (&[root_key.public()], 1),
        (&[targets_key.public()], 1),
        own.public(),
    );
    let foreign = serde_json::to_value(Signed::sign(body, &[&root_key])).unwrap();
    let (status, v) = call(&app, "POST", "/v1/tuf/root", Some(&foreign)).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("unverified")),
        "{v}"
    );
    // The right root, signed by the wrong key.
    let mut wrong = root1.clone();
    let resigned = Signed::sign(wrong["signed"].clone(), &[&targets_key]);
    wrong["signatures"] = serde_json::to_value(resigned.signatures).unwrap();
    let (status, _) = call(&app, "POST", "/v1/tuf/root", Some(&wrong)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = call_as(&app, &operator, "POST", "/v1/tuf/root", Some(&root1)).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "installing a root takes an admin"
    );
    let (status, v) = call(&app, "POST", "/v1/tuf/root", Some(&root1)).await;
    assert_eq!(
        (status, v["version"].as_i64()),
        (StatusCode::CREATED, Some(1)),
        "{v}"
    );

    // ---- publishing takes targets the release key signed, listing the release exactly ------
    let (_, release) = call(&app, "GET", &format!("/v1/releases/{id}"), None).await;
    let target =
        otaledger_domain::release::target(&serde_json::from_value(release.clone()).unwrap());
    let unsigned = json!({"signed": targets_json(1, 4_000_000_000, std::slice::from_ref(&target)), "signatures": []});
    let by_online_key =
        serde_json::to_value(Signed::sign(unsigned["signed"].clone(), &[&own])).unwrap();
    let mut longer = target.clone();
    longer.length += 1;
    let wrong_length = serde_json::to_value(Signed::sign(
        targets_json(1, 4_000_000_000, &[longer]),
        &[&targets_key],
    ))
    .unwrap();
    for (what, body) in [
        ("unsigned", &unsigned),
        ("wrongly signed", &by_online_key),
        ("another length", &wrong_length),
    ] {
        let (status, v) = call(
            &app,
            "POST",
            &format!("/v1/releases/{id}/publish"),
            Some(body),
        )
        .await;
        assert_eq!(
            (status, v["error"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("unverified")),
            "{what}: {v}"
        );
    }
    let (_, still) = call(&app, "GET", &format!("/v1/releases/{id}"), None).await;
    assert_eq!(
        still["state"], "draft",
        "a release that does not verify stays a draft"
    );
    write_json(&dir.join("release.json"), &release);
    // The offline signer refuses to sign again "current" targets its key did not sign: a
    // server cannot slip a target of its own under the release key.
    write_json(&dir.join("planted.json"), &by_online_key);
    let planted = otaledger_tests::otaledger_command(
        &cfg,
        &[
            "release",
            "sign",
            "--release",
            dir.join("release.json").to_str().unwrap(),
            "--keys",
            keys_dir.to_str().unwrap(),
            "--current",
            dir.join("planted.json").to_str().unwrap(),
        ],
        "cli",
    )
    .output()
    .unwrap();
    assert!(!planted.status.success());
    assert!(
        String::from_utf8_lossy(&planted.stderr).contains("is not signed by this release key"),
        "{}",
        String::from_utf8_lossy(&planted.stderr)
    );
    let signed = cli(
        &cfg,
        &[
            "release",
            "sign",
            "--release",
            dir.join("release.json").to_str().unwrap(),
            "--keys",
            keys_dir.to_str().unwrap(),
        ],
    );
    let signed: Value = serde_json::from_slice(&signed).unwrap();
    let (status, v) = call(
        &app,
        "POST",
        &format!("/v1/releases/{id}/publish"),
        Some(&signed),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(
        (v["state"].as_str(), v["targets_version"].as_i64()),
        (Some("published"), Some(1))
    );
    let (status, v) = call(
        &app,
        "POST",
        &format!("/v1/releases/{id}/publish"),
        Some(&signed),
    )
    .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (StatusCode::CONFLICT, Some("invalid_state")),
        "{v}"
    );
    for file in [
        "timestamp.json",
        "1.snapshot.json",
        "1.targets.json",
        "1.root.json",
        "root.json",
    ] {
        let (status, _) = get_bytes(&app, &format!("/v1/tuf/{file}")).await;
        assert_eq!(status, StatusCode::OK, "{file}");
    }
    assert_eq!(
        get_bytes(&app, "/v1/tuf/2.targets.json").await.0,
        StatusCode::NOT_FOUND
    );

    // ---- python-tuf downloads and verifies it ----------------------------------------------
    let root_file = keys_dir.join("1.root.json");
    let out = dir.join("fetched").join(id);
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let said = python_tuf(&root_file, &base, id, &out, &operator)
        .unwrap_or_else(|e| panic!("python-tuf: {e}"));
    assert!(said.contains("root version 1"), "{said}");
    assert_eq!(std::fs::read(&out).unwrap(), image);
    // Without a credential the metadata is open but the image is not.
    let refused = python_tuf(&root_file, &base, id, &dir.join("fetched/none"), "").unwrap_err();
    assert!(
        refused.contains("403") || refused.contains("401"),
        "{refused}"
    );

    // ---- the root key rotates; ngclient follows from the root it was given ----------------
    cli(
        &cfg,
        &[
            "keys",
            "rotate-root",
            "--dir",
            keys_dir.to_str().unwrap(),
            "--current",
            root_file.to_str().unwrap(),
        ],
    );
    let root2 = read_json(&keys_dir.join("2.root.json"));
    let (status, v) = call(&app, "POST", "/v1/tuf/root", Some(&root2)).await;
    assert_eq!(
        (status, v["version"].as_i64()),
        (StatusCode::CREATED, Some(2)),
        "{v}"
    );
    let (status, _) = call(&app, "POST", "/v1/tuf/root", Some(&root2)).await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "the same version again"
    );
    // A version 3 signed by the new key alone is fine; one signed by the retired key alone
    // (a thief of the old key) is not.
    let retired =
        SigningKey::from_file(&std::fs::read_to_string(keys_dir.join("root.key.1")).unwrap())
            .unwrap();
    let mut body3 = root2["signed"].clone();
    body3["version"] = json!(3);
    let stolen = serde_json::to_value(Signed::sign(body3, &[&retired])).unwrap();
    let (status, _) = call(&app, "POST", "/v1/tuf/root", Some(&stolen)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let out2 = dir.join("fetched2").join(id);
    std::fs::create_dir_all(out2.parent().unwrap()).unwrap();
    let said = python_tuf(&root_file, &base, id, &out2, &operator)
        .unwrap_or_else(|e| panic!("python-tuf: {e}"));
    assert!(said.contains("root version 2"), "{said}");

    // ---- a tampered image: ngclient refuses it ---------------------------------------------
    let stored = dir.join("sha256").join(&digest[..2]).join(&digest);
    let mut tampered = image.clone();
    tampered[25_000] ^= 1;
    std::fs::write(&stored, &tampered).unwrap();
    let refused = python_tuf(
        &root_file,
        &base,
        id,
        &dir.join("fetched3").join(id),
        &operator,
    )
    .unwrap_err();
    assert!(refused.contains("LengthOrHashMismatch"), "{refused}");
    std::fs::write(&stored, &image).unwrap();

    // ---- the server re-signs its timestamp before it expires -------------------------------
    let online = otaledger_api::tuf::online_key(&pool).await.unwrap();
    let now = otaledger_domain::time::now_micros() / 1_000_000;
    let timestamp = |pool: sqlx::PgPool| async move {
        let mut conn = pool.acquire().await.unwrap();
        otaledger_projections::releases::latest(&mut conn, "timestamp")
            .await
            .unwrap()
            .unwrap()
    };
    let before = timestamp(pool.clone()).await;
    assert!(
        !otaledger_api::tuf::refresh(&pool, &online, now)
            .await
            .unwrap(),
        "fresh: nothing to do"
    );
    let half = otaledger_api::tuf::TIMESTAMP_LIFE_S / 2;
    assert!(
        !otaledger_api::tuf::refresh(&pool, &online, before.expires_at.timestamp() - half)
            .await
            .unwrap()
    );
    assert!(
        otaledger_api::tuf::refresh(&pool, &online, before.expires_at.timestamp() - half + 1)
            .await
            .unwrap()
    );
    let after = timestamp(pool.clone()).await;
    assert_eq!(after.version, before.version + 1);
    assert!(after.expires_at > before.expires_at);
    let said = python_tuf(
        &root_file,
        &base,
        id,
        &dir.join("fetched4").join(id),
        &operator,
    )
    .unwrap_or_else(|e| panic!("python-tuf: {e}"));
    assert!(said.contains("root version 2"), "{said}");

    // ---- the targets are renewed before they expire: the same targets, by the release key --
    let (_, current) = call(&app, "GET", "/v1/tuf/targets.json", None).await;
    let current_file = dir.join("current.json");
    write_json(&current_file, &current);
    let renew = [
        "release",
        "renew",
        "--current",
        current_file.to_str().unwrap(),
        "--keys",
        keys_dir.to_str().unwrap(),
    ];
    let renewed: Value = serde_json::from_slice(&cli(&cfg, &renew)).unwrap();
    let (status, v) = call(&app, "POST", "/v1/tuf/targets", Some(&renewed)).await;
    assert_eq!(
        (status, v["version"].as_i64()),
        (StatusCode::CREATED, Some(2)),
        "{v}"
    );
    let (status, v) = call(&app, "POST", "/v1/tuf/targets", Some(&renewed)).await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "the same version again: {v}"
    );
    let mut grown = renewed.clone();
    grown["signed"]["version"] = json!(3);
    grown["signed"]["targets"]["planted"] = grown["signed"]["targets"][id].clone();
    let grown =
        serde_json::to_value(Signed::sign(grown["signed"].clone(), &[&targets_key])).unwrap();
    let (status, v) = call(&app, "POST", "/v1/tuf/targets", Some(&grown)).await;
    assert_eq!(
        status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a renewal adds nothing: {v}"
    );
    let said = python_tuf(
        &root_file,
        &base,
        id,
        &dir.join("fetched5").join(id),
        &operator,
    )
    .unwrap_or_else(|e| panic!("python-tuf: {e}"));
    assert!(said.contains("root version 2"), "{said}");

    // ---- rollouts by release id: published only, compatible models only -------------------
    let (status, v) = call(
        &app,
        "POST",
        "/v1/rollouts",
        Some(&json!({"release_id": id, "selector": {"models": ["press-9"]}})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "no compatible model: {v}");
    assert!(
        v["reason"].as_str().unwrap().contains("selector.models"),
        "{v}"
    );
    let (status, v) = call(&app, "POST", "/v1/rollouts", Some(&json!({"release_id": id, "release": {"version": "1.0.0"}, "selector": {"models": ["lift-x"]}}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let (status, v) = call(
        &app,
        "POST",
        "/v1/rollouts",
        Some(&json!({"selector": {"models": ["lift-x"]}, "allow_downgrade": true})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let (status, v) = call(&app, "POST", "/v1/rollouts", Some(&by_id(id))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    let (status, v) = call(
        &app,
        "POST",
        &format!("/v1/releases/{id}/deprecate"),
        Some(&json!({"reason": "field failures"})),
    )
    .await;
    assert_eq!(
        (status, v["state"].as_str()),
        (StatusCode::OK, Some("deprecated")),
        "{v}"
    );
    let (status, v) = call(&app, "POST", "/v1/rollouts", Some(&by_id(id))).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (StatusCode::CONFLICT, Some("release_not_published")),
        "{v}"
    );

    // Every change is in the ledger, with who made it.
    let events = decode_all(&read_topic(&cfg.kafka, &cfg.kafka.topics().release_events).await);
    let changes: Vec<(String, String)> = events
        .into_iter()
        .filter_map(|(_, e)| match e.payload {
            Payload::ReleaseRegistered(r) => Some(("registered".into(), r.registered_by)),
            Payload::ReleaseStateChanged(c) => Some((c.to, c.by)),
            _ => None,
        })
        .collect();
    assert_eq!(
        changes.iter().map(|(w, _)| w.as_str()).collect::<Vec<_>>(),
        ["registered", "published", "deprecated"]
    );
    assert!(
        changes.iter().all(|(_, by)| by == "test-admin"),
        "{changes:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The simulated fleet's models.
fn all_models() -> Vec<&'static str> {
    simulator::model_names()
}

/// Where a release is signed: the test's directory, the offline keys, the configuration the
/// binary runs with.
struct Signer<'a> {
    dir: &'a Path,
    keys: &'a Path,
    cfg: &'a otaledger_ledger::config::Config,
}

/// Registers release `id` (`version`, an image of the store), signs it offline with the
/// binary and publishes it.
async fn publish(app: &axum::Router, at: &Signer<'_>, id: &str, version: &str, image: &[u8]) {
    let Signer { dir, keys, cfg } = *at;
    let (digest, length) = (sha256_of(image), image.len());
    let digest = digest.as_str();
    let (status, release) = call(
        app,
        "POST",
        "/v1/releases",
        Some(&register_body(id, version, digest, length, &all_models())),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{release}");
    write_json(&dir.join("release.json"), &release);
    let (status, current) = call(app, "GET", "/v1/tuf/targets.json", None).await;
    let mut args: Vec<String> = vec![
        "release".into(),
        "sign".into(),
        "--release".into(),
        dir.join("release.json").to_str().unwrap().to_owned(),
        "--keys".into(),
        keys.to_str().unwrap().to_owned(),
    ];
    if status == StatusCode::OK {
        write_json(&dir.join("current.json"), &current);
        args.extend([
            "--current".to_owned(),
            dir.join("current.json").to_str().unwrap().to_owned(),
        ]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let signed: Value = serde_json::from_slice(&cli(cfg, &args)).unwrap();
    let (status, v) = call(
        app,
        "POST",
        &format!("/v1/releases/{id}/publish"),
        Some(&signed),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
}

async fn device_states(pool: &sqlx::PgPool, rollout: &str) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT device_id, state FROM rollout_devices WHERE rollout_id = $1 ORDER BY device_id",
    )
    .bind(rollout)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalogue_rollout_reaches_only_devices_that_verify_its_statements() {
    let Fixture {
        name,
        cfg,
        pool,
        producer,
        dir,
        state,
    } = fixture("releases_rollout", 1 << 24).await;
    let state = state.with_mqtt_admin(MqttAdmin::connect(&cfg.mqtt).unwrap());
    let base = listen(state.clone()).await;
    let app = as_client(otaledger_api::app(state), pool.clone(), producer.clone()).await;
    let (stack, _tasks) = spawn_components(&cfg, &ROLLOUT_STACK);
    mqtt_bridge_subscribed(&cfg).await;

    // The repository, its keys made offline, and two releases: 8.0.0 and an older 7.5.0.
    let (_, keys) = call(&app, "GET", "/v1/tuf/keys", None).await;
    write_json(&dir.join("server-keys.json"), &keys);
    let keys_dir = dir.join("keys");
    cli(
        &cfg,
        &[
            "keys",
            "generate",
            "--dir",
            keys_dir.to_str().unwrap(),
            "--server-keys",
            dir.join("server-keys.json").to_str().unwrap(),
        ],
    );
    let root1 = std::fs::read(keys_dir.join("1.root.json")).unwrap();
    let (status, _) = call(
        &app,
        "POST",
        "/v1/tuf/root",
        Some(&serde_json::from_slice(&root1).unwrap()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let new_image: Vec<u8> = (0..120_000u32).map(|i| (i % 241) as u8).collect();
    let old_image: Vec<u8> = (0..80_000u32).map(|i| (i % 239) as u8).collect();
    upload(&app, &new_image).await;
    upload(&app, &old_image).await;
    let signer = Signer {
        dir: &dir,
        keys: &keys_dir,
        cfg: &cfg,
    };
    publish(&app, &signer, "fw-8.0.0", "8.0.0", &new_image).await;
    publish(&app, &signer, "fw-7.5.0", "7.5.0", &old_image).await;

    // Eight devices, provisioned with the root and the director's key.
    let sim = SimConfig {
        gateway_share: 0.0,
        rate: 16.0,
        ..sim_config(
            &cfg,
            8,
            &format!("{name}-"),
            Behaviour {
                install_ms: 100,
                ..Behaviour::default()
            },
        )
    };
    let fleet = simulator::fleet(&sim);
    let (credentials, ids) = provision_fleet(&app, &sim).await;
    let trust = Trust::new(&root1, &keys["director"]["key"]).unwrap();
    let downloads = Arc::new(Downloads::new(Some(base.clone()), None, true).with_trust(trust));
    let mut device_sim = SimConfig {
        credentials: Some(credentials),
        downloads: Some(Arc::clone(&downloads)),
        ..sim
    };
    device_sim.mqtt.username = None;
    device_sim.mqtt.password = None;
    let (sim_stop, sim_task) = start_sim(device_sim);
    wait_fleet(&app, 8).await;

    // 8.0.0 to the first six: each checks its statement and the metadata, then the bytes.
    let strategy = json!({"waves_pct": [100], "min_devices_for_verdict": 1, "rollback_policy": "none", "health_gate_window_s": 1});
    let first = request_rollout(&app, &json!({"release_id": "fw-8.0.0", "selector": {"device_ids": ids[..6]}, "strategy": strategy})).await;
    wait_state(&app, &first, &["COMPLETED"], Duration::from_secs(90)).await;
    let states = device_states(&pool, &first).await;
    assert_eq!(states.len(), 6, "{states:?}");
    assert!(states.iter().all(|(_, s)| s == "SUCCEEDED"), "{states:?}");
    assert_eq!(downloads.stats.verified.load(Relaxed), 6);
    assert_eq!(downloads.stats.rejected.load(Relaxed), 0);

    // 7.5.0 to all eight, without allow_downgrade: only the two that run older versions.
    let older = request_rollout(
        &app,
        &json!({"release_id": "fw-7.5.0", "selector": {"device_ids": ids}, "strategy": strategy}),
    )
    .await;
    wait_state(&app, &older, &["COMPLETED"], Duration::from_secs(90)).await;
    let states = device_states(&pool, &older).await;
    let targeted: Vec<&str> = states.iter().map(|(d, _)| d.as_str()).collect();
    assert_eq!(
        targeted,
        ids[6..].iter().map(String::as_str).collect::<Vec<_>>(),
        "{states:?}"
    );
    let (_, d0) = call(&app, "GET", &format!("/v1/devices/{}", ids[0]), None).await;
    assert_eq!(d0["firmware_version"], "8.0.0", "not taken back");
    // With allow_downgrade, the six on 8.0.0 are.
    let back = request_rollout(&app, &json!({"release_id": "fw-7.5.0", "allow_downgrade": true, "selector": {"device_ids": ids[..6]}, "strategy": strategy})).await;
    wait_state(&app, &back, &["COMPLETED"], Duration::from_secs(90)).await;
    assert_eq!(device_states(&pool, &back).await.len(), 6);
    assert_eq!(downloads.stats.rejected.load(Relaxed), 0);
    // A release given in full carries no director statement: these devices refuse it, and
    // say why in the ledger.
    let unsigned = request_rollout(&app, &json!({
        "release": {"version": "9.9.9", "artifact_uri": format!("/v1/artifacts/{}", sha256_of(&new_image)),
                    "sha256": sha256_of(&new_image), "size_bytes": new_image.len(), "signature": "none"},
        "selector": {"device_ids": ids[6..]}, "strategy": strategy})).await;
    wait_state(&app, &unsigned, &["ABORTED"], Duration::from_secs(90)).await;
    // The rollout's view says why, in the device's words.
    let reasons: Vec<String> = sqlx::query_scalar(
        "SELECT coalesce(reason, '') FROM rollout_devices WHERE rollout_id = $1 AND state = 'REJECTED'",
    )
    .bind(&unsigned)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        !reasons.is_empty()
            && reasons
                .iter()
                .all(|r| r.contains("E_VERIFY: the update command carries no director statement")),
        "{reasons:?}"
    );
    sim_stop.trigger();
    let stats = sim_task.await.unwrap();
    assert!(stats.downloads_rejected >= 1, "{stats:?}");
    let refusals: Vec<String> =
        decode_all(&read_topic(&cfg.kafka, &cfg.kafka.topics().device_events).await)
            .into_iter()
            .filter_map(|(_, e)| match e.payload {
                Payload::InstallResult(r)
                    if r.outcome == otaledger_domain::events::InstallOutcome::Rejected =>
                {
                    r.message
                }
                _ => None,
            })
            .collect();
    assert!(
        !refusals.is_empty() && refusals.iter().all(|m| m.contains("no director statement")),
        "{refusals:?}"
    );

    // ---- the device's checks against the real repository, with real statements ------------
    let commands = decode_all(&read_topic(&cfg.kafka, &cfg.kafka.topics().device_commands).await);
    let statements: Vec<(String, otaledger_domain::events::Release, String)> = commands
        .into_iter()
        .filter_map(|(_, e)| match e.payload {
            Payload::UpdateCommand(c) => Some((c.device_id, c.release, c.director?)),
            _ => None,
        })
        .collect();
    let distinct: std::collections::BTreeSet<(String, String)> = statements
        .iter()
        .map(|(d, r, _)| (d.clone(), r.version.clone()))
        .collect();
    assert_eq!(
        distinct.len(),
        6 + 2 + 6,
        "every catalogue command carries a statement"
    );
    let of = |device: &str, version: &str| {
        statements
            .iter()
            .find(|(d, r, _)| d == device && r.version == version)
            .cloned()
            .unwrap()
    };
    let d0 = fleet.iter().find(|d| d.device_id == ids[0]).unwrap();
    let me = Device {
        device_id: &d0.device_id,
        model: &d0.model,
        hardware_rev: d0.hardware_rev.as_deref(),
    };
    let (_, new_release, new_statement) = of(&ids[0], "8.0.0");
    let (_, old_release, old_statement) = of(&ids[0], "7.5.0");
    let fresh = Trust::new(&root1, &keys["director"]["key"]).unwrap();
    // The first statement checks out; then the later one; the first again is a replay.
    fresh
        .check(&base, None, &me, &new_release, Some(&new_statement))
        .await
        .unwrap();
    fresh
        .check(&base, None, &me, &old_release, Some(&old_statement))
        .await
        .unwrap();
    let replay = fresh
        .check(&base, None, &me, &new_release, Some(&new_statement))
        .await
        .unwrap_err();
    assert!(replay.contains("replay"), "{replay}");
    // Another device's statement (mix-and-match), and no statement at all.
    let (_, other_release, other_statement) = of(&ids[1], "8.0.0");
    let mixed = Trust::new(&root1, &keys["director"]["key"])
        .unwrap()
        .check(&base, None, &me, &other_release, Some(&other_statement))
        .await
        .unwrap_err();
    assert!(mixed.contains("for device"), "{mixed}");
    let bare = Trust::new(&root1, &keys["director"]["key"])
        .unwrap()
        .check(&base, None, &me, &new_release, None)
        .await
        .unwrap_err();
    assert!(bare.contains("no director statement"), "{bare}");
    // A device provisioned with another director key refuses them all.
    let stranger = SigningKey::generate().unwrap().public().to_tuf();
    let forged = Trust::new(&root1, &stranger)
        .unwrap()
        .check(&base, None, &me, &new_release, Some(&new_statement))
        .await
        .unwrap_err();
    assert!(forged.contains("valid signature"), "{forged}");
    // Another model: the statement names this device's model as its hardware.
    let statement = otaledger_domain::tuf::director::Statement::verify(
        &new_statement,
        &otaledger_domain::tuf::PublicKey::from_tuf(&keys["director"]["key"]).unwrap(),
    )
    .unwrap();
    assert_eq!(statement.target.hardware_id, d0.model);
    assert_eq!(statement.target.name, "fw-8.0.0");
    let other_model = DeviceTrust {
        device_id: d0.device_id.clone(),
        hardware_id: "some-other-model".into(),
        hardware_rev: None,
        director: otaledger_domain::tuf::PublicKey::from_tuf(&keys["director"]["key"]).unwrap(),
        last_counter: 0,
    };
    let refused = other_model
        .check_statement(&new_statement, statement.expires - 1)
        .unwrap_err();
    assert!(refused.to_string().contains("hardware"), "{refused}");
    // An expired statement (the command's deadline passed) is refused, at the second.
    let own_model = DeviceTrust {
        hardware_id: d0.model.clone(),
        ..other_model
    };
    assert!(own_model
        .check_statement(&new_statement, statement.expires - 1)
        .is_ok());
    let expired = own_model
        .check_statement(&new_statement, statement.expires)
        .unwrap_err();
    assert!(
        matches!(expired, otaledger_domain::tuf::TufError::Expired { .. }),
        "{expired}"
    );
    stack.trigger();
    for id in &ids {
        let _ = call(&app, "DELETE", &format!("/v1/tokens/{id}"), None).await;
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

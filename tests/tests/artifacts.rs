#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! The artifact store behind the real API, PostgreSQL and Kafka (ADR 0037), tried as a client
//! and as an attacker: uploads are content-addressed, kept once, refused over the limit or with
//! another digest; downloads answer ranges, `ETag` and `If-None-Match`, and a download cut
//! halfway resumes with `Range` to the same digest; only a device a running rollout commanded
//! (here, through the real saga and rollout projector), an operator or a signed link's holder
//! gets the bytes: a stranger, another device, a viewer-less request, an altered or expired link
//! get nothing.

use std::future::IntoFuture as _;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use std::sync::atomic::Ordering::Relaxed;

use http_body_util::BodyExt as _;
use otaledger_cli::components::Component;
use otaledger_domain::access::Role;
use otaledger_domain::digest::Sha256;
use otaledger_domain::download_link::LinkKey;
use otaledger_ledger::mqtt_admin::MqttAdmin;
use otaledger_simulator::download::{Downloads, Fetcher};
use otaledger_simulator::{Behaviour, SimConfig};
use otaledger_tests::rollouts::{
    call, call_as, request_rollout, sim_config, start_sim, wait_fleet, wait_state,
};
use otaledger_tests::store::{fixture, listen, provision_fleet, Fixture, ROLLOUT_STACK};
use otaledger_tests::{
    as_client, eventually, issue_token, mqtt_bridge_subscribed, registered, spawn_components,
    Services,
};
use serde_json::{json, Value};
use tower::ServiceExt;

/// The store's limit in this test.
const MAX: u64 = 1 << 20;

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    fn header(&self, name: header::HeaderName) -> &str {
        self.headers
            .get(name)
            .map_or("", |v| v.to_str().unwrap_or(""))
    }
}

async fn send(app: &axum::Router, req: Request<Body>) -> Answer {
    let response = app.clone().oneshot(req).await.unwrap();
    let (parts, body) = response.into_parts();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes().to_vec(),
    }
}

fn request(method: &str, uri: &str, token: Option<&str>) -> axum::http::request::Builder {
    let mut b = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    b
}

fn upload(uri: &str, token: &str, bytes: Vec<u8>) -> Request<Body> {
    request("POST", uri, Some(token))
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(Body::from(bytes))
        .unwrap()
}

fn get(uri: &str, token: Option<&str>, headers: &[(header::HeaderName, &str)]) -> Request<Body> {
    let mut b = request("GET", uri, token);
    for (name, value) in headers {
        b = b.header(name, *value);
    }
    b.body(Body::empty()).unwrap()
}

fn sha256_of(bytes: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_are_stored_once_and_downloaded_only_by_whom_a_rollout_commanded() {
    let Fixture {
        name,
        cfg,
        pool,
        producer,
        dir,
        state,
    } = fixture("artifacts", MAX).await;
    let app = otaledger_api::app(state);
    let operator = issue_token(&pool, &producer, "olga", Role::Operator).await;
    let viewer = issue_token(&pool, &producer, "vic", Role::Viewer).await;
    let (d1, d2) = (format!("{name}-d1"), format!("{name}-d2"));
    // Two devices behind one gateway, which fetches for them.
    let (d3, d4, gw) = (
        format!("{name}-d3"),
        format!("{name}-d4"),
        format!("{name}-gw"),
    );
    let gw_token = issue_token(&pool, &producer, &gw, Role::Gateway).await;
    let d1_token = issue_token(&pool, &producer, &d1, Role::Device).await;
    let d2_token = issue_token(&pool, &producer, &d2, Role::Device).await;

    // ---- uploads -------------------------------------------------------------------------
    let image: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let digest = sha256_of(&image);
    let first = send(
        &app,
        upload("/v1/artifacts?name=fw.bin", &operator, image.clone()),
    )
    .await;
    assert_eq!(first.status, StatusCode::CREATED, "{:?}", first.json());
    assert_eq!(
        first.json(),
        json!({"sha256": digest, "length": 300_000, "created": true})
    );
    assert_eq!(
        first.header(header::LOCATION),
        format!("/v1/artifacts/{digest}")
    );
    let again = send(
        &app,
        upload(
            &format!("/v1/artifacts?sha256={}", digest.to_uppercase()),
            &operator,
            image.clone(),
        ),
    )
    .await;
    assert_eq!(again.status, StatusCode::OK, "the same bytes are kept once");
    assert_eq!(again.json()["created"], false);
    let other = send(
        &app,
        upload(
            &format!("/v1/artifacts?sha256={}", "0".repeat(64)),
            &operator,
            b"other".to_vec(),
        ),
    )
    .await;
    assert_eq!(other.status, StatusCode::CONFLICT);
    assert_eq!(other.json()["error"], "digest_mismatch");
    // Over the limit, declared: refused before reading; streamed without a length: refused
    // when the limit is passed. Exactly the limit is stored.
    let big = vec![1u8; MAX as usize + 1];
    let declared = send(&app, upload("/v1/artifacts", &operator, big.clone())).await;
    assert_eq!(declared.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(declared.json()["error"], "too_large");
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let streamed = send(
        &app,
        request("POST", "/v1/artifacts", Some(&operator))
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(Body::from_stream(futures_util::stream::iter(chunks)))
            .unwrap(),
    )
    .await;
    assert_eq!(streamed.status, StatusCode::PAYLOAD_TOO_LARGE);
    let exact = send(
        &app,
        upload("/v1/artifacts", &operator, big[..MAX as usize].to_vec()),
    )
    .await;
    assert_eq!(exact.status, StatusCode::CREATED);
    // Who may not upload, and how not.
    let form = send(
        &app,
        request("POST", "/v1/artifacts", Some(&operator))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from("a=b"))
            .unwrap(),
    )
    .await;
    assert_eq!(form.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let json_body = send(
        &app,
        request("POST", "/v1/artifacts", Some(&operator))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from("{}"))
            .unwrap(),
    )
    .await;
    assert_eq!(json_body.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(
        send(&app, upload("/v1/artifacts", &viewer, b"x".to_vec()))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send(&app, upload("/v1/artifacts", &d1_token, b"x".to_vec()))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let stranger = send(
        &app,
        request("POST", "/v1/artifacts", None)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .body(Body::from("x"))
            .unwrap(),
    )
    .await;
    assert_eq!(stranger.status, StatusCode::UNAUTHORIZED);
    let listed = send(&app, get("/v1/artifacts", Some(&viewer), &[])).await;
    assert_eq!(listed.status, StatusCode::OK);
    let listed: Vec<String> = listed.json()["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["sha256"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        listed.len(),
        2,
        "the image and the exact-limit file: {listed:?}"
    );
    assert!(listed.contains(&digest));
    assert_eq!(
        std::fs::read_dir(dir.join("incoming")).unwrap().count(),
        0,
        "refused uploads leave no part file"
    );

    // A rollout of the store's artifact must name what the store holds.
    let release = |uri: String, sha: &str, size: i64| {
        json!({"release": {"version": "2.0.0", "artifact_uri": uri, "sha256": sha,
                           "size_bytes": size, "signature": "s"},
               "selector": {"device_ids": ["nobody"]}})
    };
    let unknown = "f".repeat(64);
    for (body, why) in [
        (
            release(format!("/v1/artifacts/{unknown}"), &digest, 300_000),
            "another digest",
        ),
        (
            release(format!("/v1/artifacts/{unknown}"), &unknown, 300_000),
            "not in the store",
        ),
        (
            release(format!("/v1/artifacts/{digest}"), &digest, 299_999),
            "another length",
        ),
    ] {
        let (status, answer) = call_as(&app, &operator, "POST", "/v1/rollouts", Some(&body)).await;
        assert_eq!(status, StatusCode::CONFLICT, "{why}: {answer}");
        assert_eq!(answer["error"], "artifact_mismatch", "{why}");
    }

    // ---- downloads as an operator: whole, ranges, validators --------------------------------
    let uri = format!("/v1/artifacts/{digest}");
    let whole = send(&app, get(&uri, Some(&operator), &[])).await;
    assert_eq!(whole.status, StatusCode::OK);
    assert_eq!(whole.body, image);
    let etag = format!("\"{digest}\"");
    assert_eq!(whole.header(header::ETAG), etag);
    assert_eq!(whole.header(header::ACCEPT_RANGES), "bytes");
    assert_eq!(whole.header(header::CONTENT_LENGTH), "300000");
    let unchanged = send(
        &app,
        get(&uri, Some(&operator), &[(header::IF_NONE_MATCH, &etag)]),
    )
    .await;
    assert_eq!(unchanged.status, StatusCode::NOT_MODIFIED);
    assert!(unchanged.body.is_empty());
    let changed = send(
        &app,
        get(
            &uri,
            Some(&operator),
            &[(header::IF_NONE_MATCH, "\"something-else\"")],
        ),
    )
    .await;
    assert_eq!(changed.status, StatusCode::OK);
    // A download cut after 123,457 bytes resumes from there and ends with the same digest.
    let cut = 123_457;
    let head = send(
        &app,
        get(&uri, Some(&operator), &[(header::RANGE, "bytes=0-123456")]),
    )
    .await;
    assert_eq!(head.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(head.header(header::CONTENT_RANGE), "bytes 0-123456/300000");
    assert_eq!(head.body.len(), cut);
    let rest = send(
        &app,
        get(
            &uri,
            Some(&operator),
            &[(header::RANGE, "bytes=123457-"), (header::IF_RANGE, &etag)],
        ),
    )
    .await;
    assert_eq!(rest.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        rest.header(header::CONTENT_RANGE),
        "bytes 123457-299999/300000"
    );
    let resumed = [head.body, rest.body].concat();
    assert_eq!(sha256_of(&resumed), digest, "the resumed download verifies");
    let stale_resume = send(
        &app,
        get(
            &uri,
            Some(&operator),
            &[(header::RANGE, "bytes=10-"), (header::IF_RANGE, "\"old\"")],
        ),
    )
    .await;
    assert_eq!(
        stale_resume.status,
        StatusCode::OK,
        "If-Range of other bytes: whole"
    );
    assert_eq!(stale_resume.body.len(), 300_000);
    let past = send(
        &app,
        get(&uri, Some(&operator), &[(header::RANGE, "bytes=300000-")]),
    )
    .await;
    assert_eq!(past.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(past.header(header::CONTENT_RANGE), "bytes */300000");
    let missing = send(
        &app,
        get(
            &format!("/v1/artifacts/{}", "e".repeat(64)),
            Some(&operator),
            &[],
        ),
    )
    .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let bad = send(
        &app,
        get("/v1/artifacts/not-a-digest", Some(&operator), &[]),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    // ---- who else may download -----------------------------------------------------------
    assert_eq!(
        send(&app, get(&uri, None, &[])).await.status,
        StatusCode::UNAUTHORIZED
    );
    let early = send(&app, get(&uri, Some(&d1_token), &[])).await;
    assert_eq!(
        early.status,
        StatusCode::FORBIDDEN,
        "no rollout commanded d1 yet"
    );
    assert_eq!(early.json()["error"], "not_commanded");
    // A rollout of this artifact to d1 alone, through the real saga and rollout projector.
    for d in [&d1, &d2, &d3, &d4] {
        producer.append(&registered(d)).await.unwrap();
        if d == &d3 || d == &d4 {
            // The attachment provisioning records (ADR 0029), as its projection holds it.
            sqlx::query(
                "INSERT INTO device_gateways (device_id, gateway_id, attached_by) VALUES ($1, $2, 'test')",
            )
            .bind(d)
            .bind(&gw)
            .execute(&pool)
            .await
            .unwrap();
        }
    }
    let (shutdown, _tasks) = spawn_components(
        &cfg,
        &[
            Component::Projector,
            Component::Saga,
            Component::RolloutProjector,
        ],
    );
    eventually(
        Duration::from_secs(30),
        "the devices in the fleet view",
        || {
            let pool = pool.clone();
            async move {
                let n: i64 = sqlx::query_scalar("SELECT count(*) FROM devices")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
                (n == 4).then_some(())
            }
        },
    )
    .await;
    let (status, answer) = call_as(
        &app,
        &operator,
        "POST",
        "/v1/rollouts",
        Some(&json!({
            "release": {"version": "2.0.0", "artifact_uri": format!("https://ota.example{uri}"),
                        "sha256": digest, "size_bytes": 300_000, "signature": "unsigned-test"},
            "selector": {"device_ids": [d1, d3, d4]},
            "strategy": {"waves_pct": [100], "min_devices_for_verdict": 1}
        })),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    eventually(Duration::from_secs(60), "d1, d3 and d4 commanded", || {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM rollout_devices WHERE command_id IS NOT NULL",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
            .eq(&3)
            .then_some(())
        }
    })
    .await;
    let commanded = send(
        &app,
        get(&uri, Some(&d1_token), &[(header::RANGE, "bytes=0-99")]),
    )
    .await;
    assert_eq!(
        commanded.status,
        StatusCode::PARTIAL_CONTENT,
        "{:?}",
        commanded.json()
    );
    assert_eq!(commanded.body, image[..100]);
    let not_d2 = send(&app, get(&uri, Some(&d2_token), &[])).await;
    assert_eq!(not_d2.status, StatusCode::FORBIDDEN, "d2 was not targeted");
    let other_artifact = send(
        &app,
        get(
            &format!("/v1/artifacts/{}", sha256_of(&big[..MAX as usize])),
            Some(&d1_token),
            &[],
        ),
    )
    .await;
    assert_eq!(
        other_artifact.status,
        StatusCode::FORBIDDEN,
        "d1 was commanded one artifact only"
    );
    let by_gateway = send(&app, get(&uri, Some(&gw_token), &[])).await;
    assert_eq!(
        by_gateway.status,
        StatusCode::OK,
        "the gateway of commanded devices"
    );
    shutdown.trigger();

    // ---- simulated devices that check what they install, over real HTTP --------------------
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(axum::serve(listener, app.clone()).into_future());
    let release = otaledger_domain::events::Release {
        version: "2.0.0".into(),
        artifact_uri: format!("http://127.0.0.1:{port}{uri}"),
        sha256: digest.clone(),
        size_bytes: 300_000,
        signature: String::new(),
    };
    // A download cut halfway resumes with Range and verifies.
    let downloads = Downloads::new(None, None, true);
    assert_eq!(
        downloads
            .verified(&release, Fetcher::Device { token: &d1_token })
            .await,
        Ok(())
    );
    assert_eq!(downloads.stats.origin_bytes.load(Relaxed), 300_000);
    // The gateway fetches once for its two devices and serves the second from its cache.
    let gateway = Fetcher::Gateway {
        id: &gw,
        token: &gw_token,
    };
    let (a, b) = tokio::join!(
        downloads.verified(&release, gateway),
        downloads.verified(&release, gateway)
    );
    assert_eq!((a, b), (Ok(()), Ok(())));
    assert_eq!(downloads.stats.origin_bytes.load(Relaxed), 600_000);
    assert_eq!(downloads.stats.cache_hits.load(Relaxed), 1);
    assert_eq!(downloads.stats.bytes_saved.load(Relaxed), 300_000);
    // A device no rollout commanded gets nothing.
    let refused = downloads
        .verified(&release, Fetcher::Device { token: &d2_token })
        .await
        .unwrap_err();
    assert!(refused.contains("403"), "{refused}");
    // One byte changed in the store: every device refuses it.
    let stored = dir.join("sha256").join(&digest[..2]).join(&digest);
    let mut tampered = image.clone();
    tampered[150_000] ^= 0x01;
    std::fs::write(&stored, &tampered).unwrap();
    let fresh = Downloads::new(None, None, false);
    let hash = fresh
        .verified(&release, Fetcher::Device { token: &d1_token })
        .await
        .unwrap_err();
    assert!(hash.contains("SHA-256"), "{hash}");
    let via_gateway = fresh.verified(&release, gateway).await.unwrap_err();
    assert!(via_gateway.contains("SHA-256"), "{via_gateway}");
    assert_eq!(
        fresh.stats.cache_hits.load(Relaxed),
        0,
        "a bad download is not cached"
    );
    // Bytes past the release's length (endless data) are refused as they arrive.
    let mut longer = image.clone();
    longer.extend_from_slice(&[0u8; 4096]);
    std::fs::write(&stored, &longer).unwrap();
    let endless = fresh
        .verified(&release, Fetcher::Device { token: &d1_token })
        .await
        .unwrap_err();
    assert!(endless.contains("at most 300000 bytes"), "{endless}");
    assert_eq!(fresh.stats.rejected.load(Relaxed), 3);
    std::fs::write(&stored, &image).unwrap();

    // ---- signed links ---------------------------------------------------------------------
    let made = send(
        &app,
        request("POST", &format!("{uri}/links"), Some(&operator))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(json!({"ttl_s": 120}).to_string()))
            .unwrap(),
    )
    .await;
    assert_eq!(made.status, StatusCode::CREATED, "{:?}", made.json());
    let link = made.json()["url"].as_str().unwrap().to_owned();
    let by_link = send(&app, get(&link, None, &[])).await;
    assert_eq!(by_link.status, StatusCode::OK);
    assert_eq!(by_link.body, image);
    assert!(by_link.header(header::CACHE_CONTROL).starts_with("public"));
    let expires = made.json()["expires"].as_i64().unwrap();
    let sig = link.rsplit("sig=").next().unwrap().to_owned();
    for (tampered, what) in [
        (
            format!("{uri}?expires={}&sig={sig}", expires + 3600),
            "a later expiry",
        ),
        (
            format!(
                "/v1/artifacts/{}?expires={expires}&sig={sig}",
                sha256_of(&big[..MAX as usize])
            ),
            "another artifact",
        ),
        (
            format!("{uri}?expires={expires}&sig={}", "0".repeat(64)),
            "a made-up signature",
        ),
    ] {
        let refused = send(&app, get(&tampered, None, &[])).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{what}");
        assert_eq!(refused.json()["error"], "bad_link", "{what}");
    }
    // A link that expired a second ago, signed with the API's own key.
    let key: Vec<u8> = sqlx::query_scalar("SELECT key FROM api_download_link_key")
        .fetch_one(&pool)
        .await
        .unwrap();
    let key = LinkKey::new(key.try_into().unwrap());
    let past = otaledger_domain::time::now_micros() / 1_000_000 - 1;
    let old = key.sign(&Sha256::try_from(digest.as_str()).unwrap(), past);
    let expired = send(
        &app,
        get(&format!("{uri}?expires={past}&sig={old}"), None, &[]),
    )
    .await;
    assert_eq!(expired.status, StatusCode::FORBIDDEN);
    assert!(expired.json()["reason"]
        .as_str()
        .unwrap()
        .contains("expired"));
    let too_long = send(
        &app,
        request("POST", &format!("{uri}/links"), Some(&operator))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(json!({"ttl_s": 999_999}).to_string()))
            .unwrap(),
    )
    .await;
    assert_eq!(too_long.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        send(
            &app,
            request("POST", &format!("{uri}/links"), Some(&d1_token))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{}"))
                .unwrap(),
        )
        .await
        .status,
        StatusCode::FORBIDDEN,
        "a device cannot mint links"
    );

    // ---- `otaledger artifact push` into the same store ------------------------------------
    let file = dir.join("cli-upload.bin");
    std::fs::write(&file, b"pushed by a script").unwrap();
    let out = otaledger_tests::otaledger_command(
        &cfg,
        &["artifact", "push", file.to_str().unwrap()],
        "cli",
    )
    .env("OTALEDGER_ARTIFACTS_DIR", &dir)
    .output()
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pushed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let pushed_digest = sha256_of(b"pushed by a script");
    assert_eq!(
        pushed,
        json!({"sha256": pushed_digest, "length": 18, "created": true})
    );
    let refused = otaledger_tests::otaledger_command(
        &cfg,
        &[
            "artifact",
            "push",
            file.to_str().unwrap(),
            "--sha256",
            &"1".repeat(64),
        ],
        "cli",
    )
    .env("OTALEDGER_ARTIFACTS_DIR", &dir)
    .output()
    .unwrap();
    assert!(!refused.status.success(), "another digest is refused");
    let fetched = send(
        &app,
        get(
            &format!("/v1/artifacts/{pushed_digest}"),
            Some(&operator),
            &[],
        ),
    )
    .await;
    assert_eq!(fetched.body, b"pushed by a script");
    std::fs::remove_dir_all(&dir).unwrap();
    otaledger_tests::drop_schema(&Services::get().await, &cfg.database.schema).await;
}

/// Each device's state and reason in a rollout.
async fn device_states(pool: &sqlx::PgPool, rollout: &str) -> Vec<(String, String)> {
    sqlx::query_as("SELECT state, coalesce(reason, '') FROM rollout_devices WHERE rollout_id = $1")
        .bind(rollout)
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_sends_real_bytes_that_every_device_checks_before_it_installs() {
    let Fixture {
        name,
        cfg,
        pool,
        producer,
        dir,
        state,
    } = fixture("artifact_rollout", MAX).await;
    let state = state.with_mqtt_admin(MqttAdmin::connect(&cfg.mqtt).unwrap());
    // The devices download from a listening API, as from the quick start's.
    let base = listen(state.clone()).await;
    let app = as_client(otaledger_api::app(state), pool.clone(), producer.clone()).await;
    let (stack, _tasks) = spawn_components(&cfg, &ROLLOUT_STACK);
    mqtt_bridge_subscribed(&cfg).await;

    let image: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let digest = sha256_of(&image);
    let upload_req = Request::builder()
        .method("POST")
        .uri("/v1/artifacts")
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(Body::from(image.clone()))
        .unwrap();
    assert_eq!(send(&app, upload_req).await.status, StatusCode::CREATED);

    let sim = SimConfig {
        gateway_share: 0.0,
        rate: 12.0,
        ..sim_config(
            &cfg,
            6,
            &format!("{name}-"),
            Behaviour {
                install_ms: 100,
                ..Behaviour::default()
            },
        )
    };
    let (credentials, ids) = provision_fleet(&app, &sim).await;
    let downloads = Arc::new(Downloads::new(Some(base.clone()), None, true));
    let mut device_sim = SimConfig {
        credentials: Some(credentials),
        downloads: Some(Arc::clone(&downloads)),
        ..sim
    };
    device_sim.mqtt.username = None;
    device_sim.mqtt.password = None;
    let (sim_stop, sim_task) = start_sim(device_sim);
    wait_fleet(&app, 6).await;

    let rollout = |version: &str| {
        json!({
            "release": {"version": version, "artifact_uri": format!("/v1/artifacts/{digest}"),
                        "sha256": digest, "size_bytes": 200_000, "signature": "unsigned-test"},
            "selector": {"device_ids": ids},
            "strategy": {"waves_pct": [100], "min_devices_for_verdict": 1,
                         "rollback_policy": "none", "health_gate_window_s": 1}
        })
    };
    let good = request_rollout(&app, &rollout("2.0.0")).await;
    wait_state(&app, &good, &["COMPLETED"], Duration::from_secs(90)).await;
    let states = device_states(&pool, &good).await;
    assert_eq!(states.len(), 6);
    assert!(states.iter().all(|(s, _)| s == "SUCCEEDED"), "{states:?}");
    assert_eq!(
        downloads.stats.verified.load(Relaxed),
        6,
        "each device checked the bytes"
    );
    assert_eq!(
        downloads.stats.origin_bytes.load(Relaxed),
        6 * 200_000,
        "each download cut halfway and resumed, no byte fetched twice"
    );

    // One byte changed in the store: every device refuses the release, and says why.
    let stored = dir.join("sha256").join(&digest[..2]).join(&digest);
    let mut tampered = image.clone();
    tampered[99_999] ^= 0x80;
    std::fs::write(&stored, &tampered).unwrap();
    let bad = request_rollout(&app, &rollout("3.0.0")).await;
    wait_state(&app, &bad, &["ABORTED"], Duration::from_secs(90)).await;
    eventually(Duration::from_secs(30), "every device's refusal", || {
        let pool = pool.clone();
        let bad = bad.clone();
        async move {
            let states = device_states(&pool, &bad).await;
            states
                .iter()
                .all(|(s, _)| s == "REJECTED" || s == "CANCELLED")
                .then_some(states)
        }
    })
    .await;
    let states = device_states(&pool, &bad).await;
    assert!(states.iter().any(|(s, _)| s == "REJECTED"), "{states:?}");
    sim_stop.trigger();
    let stats = sim_task.await.unwrap();
    assert!(stats.downloads_rejected >= 1, "{stats:?}");
    // Each refusal says why, in the ledger.
    let records = otaledger_tests::read_topic(&cfg.kafka, &cfg.kafka.topics().device_events).await;
    let refusals: Vec<String> = otaledger_tests::decode_all(&records)
        .into_iter()
        .filter_map(|(_, e)| match e.payload {
            otaledger_domain::Payload::InstallResult(r)
                if r.outcome == otaledger_domain::events::InstallOutcome::Rejected =>
            {
                Some(r.message.unwrap_or_default())
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        refusals.len(),
        states.iter().filter(|(s, _)| s == "REJECTED").count(),
        "{refusals:?}"
    );
    // A device that fetched before the first refusal aborted the rollout names the hash; one
    // that asked after is refused the bytes of an aborted rollout (403).
    assert!(
        refusals.iter().any(|m| m.contains("SHA-256")),
        "{refusals:?}"
    );
    assert!(
        refusals
            .iter()
            .all(|m| m.contains("SHA-256") || m.contains("answered 403")),
        "{refusals:?}"
    );
    let (status, fleet) = call(&app, "GET", &format!("/v1/devices/{}", ids[0]), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        fleet["firmware_version"], "2.0.0",
        "the tampered release was never installed"
    );
    stack.trigger();
    for id in &ids {
        let _ = call(&app, "DELETE", &format!("/v1/tokens/{id}"), None).await;
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

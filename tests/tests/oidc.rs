#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! OIDC bearer tokens (ADR 0030), tried as an attacker would: a token signed by a key the
//! issuer never published, for another audience, from another issuer, expired, with a shared
//! secret algorithm, or without an operator role is refused with 401; a good one acts as its
//! subject, within its role; the issuer's keys rotate by replacing the JWKS file.

use axum::http::StatusCode;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use otaledger_api::oidc::OidcVerifier;
use otaledger_ledger::config::OidcConfig;
use otaledger_ledger::kafka::{ensure_topics, EventProducer};
use otaledger_tests::rollouts::send_json as send;
use otaledger_tests::{config, migrated_test_pool, unique, Services};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{json, Value};

const ISSUER: &str = "https://login.example.test/realms/ops";
const AUDIENCE: &str = "otaledger";

/// An Ed25519 key: its signing key and its JWK.
fn key(kid: &str) -> (EncodingKey, Value) {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
    (
        EncodingKey::from_ed_der(pkcs8.as_ref()),
        json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"}),
    )
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn claims(sub: &str, role: &str) -> Value {
    json!({"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "exp": now() + 300, "iat": now(),
           "otaledger_role": role})
}

fn sign(key: &EncodingKey, kid: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oidc_tokens_act_as_their_subject_and_forged_ones_are_refused() {
    let services = Services::get().await;
    let cfg = config(&services, &unique("oidc"));
    ensure_topics(&cfg.kafka).await.unwrap();
    let pool = migrated_test_pool(&cfg, 4).await;
    let producer = EventProducer::new(&cfg.kafka).unwrap();
    let dir = std::env::temp_dir().join(unique("oidc_keys"));
    std::fs::create_dir_all(&dir).unwrap();
    let jwks = dir.join("jwks.json");
    let (issuer_key, issuer_jwk) = key("k1");
    std::fs::write(&jwks, json!({"keys": [issuer_jwk]}).to_string()).unwrap();
    let verifier = OidcVerifier::new(&OidcConfig {
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        jwks_file: jwks.display().to_string(),
        ..OidcConfig::default()
    })
    .await
    .unwrap()
    .unwrap();
    let app =
        otaledger_api::app(otaledger_tests::app_state(&cfg, &pool, &producer).with_oidc(verifier));

    // A good token acts as its subject, within its role.
    let admin = sign(&issuer_key, "k1", &claims("alice", "admin"));
    let (status, body) = send(
        &app,
        "POST",
        "/v1/tokens",
        &admin,
        &json!({"name": "ci", "role": "viewer"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        body["issued_by"], "oidc:alice",
        "the actor is the JWT's subject"
    );
    let viewer = sign(&issuer_key, "k1", &claims("bob", "viewer"));
    assert_eq!(
        send(&app, "GET", "/v1/fleet/summary", &viewer, &Value::Null)
            .await
            .0,
        StatusCode::OK
    );
    let (status, body) = send(
        &app,
        "POST",
        "/v1/tokens",
        &viewer,
        &json!({"name": "x", "role": "admin"}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    // Forged and misdirected tokens.
    let (attacker_key, _) = key("k1");
    let expired = {
        let mut c = claims("alice", "admin");
        c["exp"] = json!(now() - 3600);
        c
    };
    let other = |field: &str, value: &str| {
        let mut c = claims("alice", "admin");
        c[field] = json!(value);
        c
    };
    let no_role = {
        let mut c = claims("alice", "admin");
        c.as_object_mut().unwrap().remove("otaledger_role");
        c
    };
    // The issuer's public key used as an HMAC secret (algorithm confusion).
    let public_x = issuer_jwk["x"].as_str().unwrap().to_owned();
    let confused = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("k1".into());
        jsonwebtoken::encode(
            &header,
            &claims("alice", "admin"),
            &EncodingKey::from_secret(public_x.as_bytes()),
        )
        .unwrap()
    };
    for (what, token, reason) in [
        (
            "another key",
            sign(&attacker_key, "k1", &claims("alice", "admin")),
            "signature",
        ),
        (
            "another audience",
            sign(&issuer_key, "k1", &other("aud", "someone-else")),
            "audience",
        ),
        (
            "another issuer",
            sign(&issuer_key, "k1", &other("iss", "https://evil.test/")),
            "issuer",
        ),
        ("expired", sign(&issuer_key, "k1", &expired), "expired"),
        (
            "unknown key id",
            sign(&issuer_key, "k9", &claims("alice", "admin")),
            "no key",
        ),
        ("no role", sign(&issuer_key, "k1", &no_role), "role"),
        (
            "a device role",
            sign(&issuer_key, "k1", &claims("alice", "device")),
            "role",
        ),
        ("HS256 with the public key", confused, "algorithm"),
    ] {
        let (status, body) = send(&app, "GET", "/v1/fleet/summary", &token, &Value::Null).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
        let said = body["reason"].as_str().unwrap_or_default();
        assert!(said.contains(reason), "{what}: {said}");
    }

    // Rotation: the issuer publishes a new key; tokens signed with it are accepted at once.
    let (new_key, new_jwk) = key("k2");
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&jwks, json!({"keys": [new_jwk]}).to_string()).unwrap();
    let rotated = sign(&new_key, "k2", &claims("alice", "viewer"));
    let (status, body) = send(&app, "GET", "/v1/fleet/summary", &rotated, &Value::Null).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let retired = sign(&issuer_key, "k1", &claims("alice", "viewer"));
    assert_eq!(
        send(&app, "GET", "/v1/fleet/summary", &retired, &Value::Null)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    let _ = std::fs::remove_dir_all(&dir);
    otaledger_tests::drop_schema(&services, &cfg.database.schema).await;
}

/// The issuer's keys fetched from its `jwks_uri` over HTTPS (`oidc.jwks_url`, `jwks_ca`): a
/// server whose certificate another CA signed is refused at start; a token signed with a
/// published key acts; when the issuer rotates to a new key, a token naming it is refused
/// until the set is fetched again, which the unknown key itself asks for; the retired key is
/// refused after; made-up key ids do not make the API hammer the issuer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_fetched_from_the_issuer_over_tls_rotate_without_a_restart() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    let dir = std::env::temp_dir().join(unique("oidc_url"));
    let (ca, cert, tls_key) = otaledger_tests::certificates(&dir.join("good"));
    let (other_ca, _, _) = otaledger_tests::certificates(&dir.join("other"));
    let (k1, jwk1) = key("k1");
    let (k2, jwk2) = key("k2");
    let published = Arc::new(Mutex::new(json!({"keys": [jwk1]})));
    let fetches = Arc::new(AtomicUsize::new(0));
    let issuer = {
        let (published, fetches) = (published.clone(), fetches.clone());
        axum::Router::new().route(
            "/jwks",
            axum::routing::get(move || {
                fetches.fetch_add(1, Ordering::SeqCst);
                let set = published.lock().unwrap().clone();
                async move { axum::Json(set) }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let acceptor = otaledger_api::tls::acceptor(&cert, &tls_key).unwrap();
    tokio::spawn(otaledger_api::tls::serve(
        listener,
        acceptor,
        issuer,
        std::future::pending(),
    ));
    let oidc = |ca: &std::path::Path| OidcConfig {
        issuer: ISSUER.into(),
        audience: AUDIENCE.into(),
        jwks_url: format!("https://127.0.0.1:{port}/jwks"),
        jwks_ca: ca.display().to_string(),
        jwks_refresh_s: 3600,
        ..OidcConfig::default()
    };

    let refused = OidcVerifier::new(&oidc(&other_ca)).await;
    assert!(
        refused.is_err(),
        "a JWKS server the CA did not sign was believed"
    );
    let before = fetches.load(Ordering::SeqCst);
    let verifier = OidcVerifier::new(&oidc(&ca)).await.unwrap().unwrap();
    assert_eq!(fetches.load(Ordering::SeqCst), before + 1);
    let old = sign(&k1, "k1", &claims("alice", "admin"));
    assert_eq!(verifier.verify(&old).unwrap().name, "oidc:alice");

    // The issuer rotates: only k2 is published now.
    *published.lock().unwrap() = json!({"keys": [jwk2]});
    let new = sign(&k2, "k2", &claims("alice", "admin"));
    assert!(
        verifier.verify(&new).is_err(),
        "k2 before the set was fetched again"
    );
    let subject = otaledger_tests::eventually(Duration::from_secs(30), "k2 accepted", || {
        let answer = verifier.verify(&new).ok();
        async move { answer }
    })
    .await;
    assert_eq!(subject.name, "oidc:alice");
    assert!(
        verifier.verify(&old).is_err(),
        "the retired key still verified"
    );

    // Made-up key ids ask for a fetch at most once in ten seconds.
    let after_rotation = fetches.load(Ordering::SeqCst);
    let (made_up_key, _) = key("x");
    for i in 0..20 {
        let token = sign(
            &made_up_key,
            &format!("made-up-{i}"),
            &claims("eve", "admin"),
        );
        assert!(verifier.verify(&token).is_err());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        fetches.load(Ordering::SeqCst) <= after_rotation + 1,
        "{} fetches for 20 made-up key ids",
        fetches.load(Ordering::SeqCst) - after_rotation
    );
    let _ = std::fs::remove_dir_all(&dir);
}

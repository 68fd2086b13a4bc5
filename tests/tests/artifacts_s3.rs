#![allow(clippy::unwrap_used)] // test code: a panic is the failure report
//! The artifact store in an S3-compatible bucket (ADR 0037), against a real S3 API server
//! (moto's, from PyPI, started here on a port of its own; `OTALEDGER_TEST_S3` names another):
//! the same contract as the filesystem store (content-addressed, kept once, refused past the
//! limit or with another digest, nothing left under a digest by a refused upload, byte ranges),
//! and served by the API.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use http_body_util::BodyExt as _;
use otaledger_artifacts::{S3Settings, S3Store, Store, StoreError};
use otaledger_domain::digest::Sha256;
use otaledger_tests::{as_client, unique};
use tokio::io::AsyncReadExt as _;
use tower::ServiceExt;

/// moto's S3 server, stopped when dropped.
struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An S3 endpoint: `OTALEDGER_TEST_S3`, or a moto server started for this test.
async fn endpoint() -> (String, Option<Moto>) {
    if let Ok(url) = std::env::var("OTALEDGER_TEST_S3") {
        return (url, None);
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("python3")
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 with moto[server] (scripts/test.sh installs it from PyPI)");
    let moto = Moto(child);
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return (format!("http://127.0.0.1:{port}"), Some(moto));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("moto's S3 server did not listen on {port}");
}

/// A bucket of its own for `test`, and a store over it.
async fn store(test: &str) -> (S3Store, S3Settings, Option<Moto>) {
    let (url, moto) = endpoint().await;
    let bucket = unique(test).replace('_', "-").to_ascii_lowercase();
    let made = Command::new("curl")
        .args(["-sf", "-X", "PUT", &format!("{url}/{bucket}")])
        .output()
        .unwrap();
    assert!(made.status.success(), "creating bucket {bucket}: {made:?}");
    let settings = S3Settings {
        bucket,
        endpoint: url,
        region: "us-east-1".into(),
        prefix: "otaledger/".into(),
        access_key_id: "test".into(),
        secret_access_key: Some("test".into()),
        allow_http: true,
    };
    (S3Store::new(&settings).unwrap(), settings, moto)
}

fn digest_of(bytes: &[u8]) -> Sha256 {
    let hex: String = ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Sha256::try_from(hex).unwrap()
}

async fn read_all(s: &S3Store, d: &Sha256, start: u64, len: u64) -> Vec<u8> {
    let mut out = Vec::new();
    s.read(d, start, len)
        .await
        .unwrap()
        .read_to_end(&mut out)
        .await
        .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_bucket_keeps_artifacts_by_digest_once_and_whole() {
    let (s3, settings, _moto) = store("s3_store").await;
    // Larger than one multipart part (object_store's buffered writer uploads 10 MiB parts).
    let image: Vec<u8> = (0..12_000_000u32).map(|i| (i % 249) as u8).collect();
    let digest = digest_of(&image);
    let stored = s3
        .put(&mut image.as_slice(), 1 << 30, Some(&digest))
        .await
        .unwrap();
    assert_eq!(
        (stored.sha256.clone(), stored.length, stored.created),
        (digest.clone(), 12_000_000, true)
    );
    let again = s3.put(&mut image.as_slice(), 1 << 30, None).await.unwrap();
    assert!(!again.created, "the same bytes are kept once");
    assert_eq!(s3.length(&digest).await.unwrap(), Some(12_000_000));
    assert_eq!(read_all(&s3, &digest, 0, 12_000_000).await, image);
    assert_eq!(
        read_all(&s3, &digest, 11_999_990, 10).await,
        image[11_999_990..]
    );
    assert_eq!(read_all(&s3, &digest, 5, 0).await, b"");

    // Refused: another digest than named, or past the limit (a multipart upload past its
    // first part too); nothing is kept for either, under a digest or as a part.
    let other = b"other bytes".to_vec();
    let wrong = s3
        .put(&mut other.as_slice(), 1 << 30, Some(&digest_of(b"x")))
        .await
        .unwrap_err();
    assert!(matches!(wrong, StoreError::Mismatch { .. }), "{wrong}");
    let large = s3.put(&mut other.as_slice(), 10, None).await.unwrap_err();
    assert!(matches!(large, StoreError::TooLarge { max: 10 }), "{large}");
    let long = s3
        .put(&mut image.as_slice(), 11_000_000, None)
        .await
        .unwrap_err();
    assert!(matches!(long, StoreError::TooLarge { .. }), "{long}");
    assert_eq!(s3.list().await.unwrap(), vec![(digest.clone(), 12_000_000)]);
    assert_eq!(
        keys(&settings, "otaledger/incoming/"),
        Vec::<String>::new(),
        "no part left"
    );
    assert!(
        s3.put(&mut other.as_slice(), 11, None).await.is_ok(),
        "exactly the limit"
    );
    let mut want = vec![(digest.clone(), 12_000_000), (digest_of(&other), 11)];
    want.sort();
    assert_eq!(
        s3.list().await.unwrap(),
        want,
        "only whole artifacts, under their digests"
    );
    assert_eq!(keys(&settings, "otaledger/incoming/"), Vec::<String>::new());
    assert_eq!(keys(&settings, "otaledger/sha256/").len(), 2);
}

/// The keys under `prefix`, as the bucket lists them (ListObjectsV2, read by hand).
fn keys(s: &S3Settings, prefix: &str) -> Vec<String> {
    let out = Command::new("curl")
        .args([
            "-sf",
            &format!("{}/{}?list-type=2&prefix={prefix}", s.endpoint, s.bucket),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let xml = String::from_utf8_lossy(&out.stdout).into_owned();
    xml.split("<Key>")
        .skip(1)
        .filter_map(|k| k.split_once("</Key>").map(|(k, _)| k.to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_serves_ranges_from_an_s3_bucket() {
    let (s3, _settings, _moto) = store("s3_api").await;
    let f = otaledger_tests::store::fixture("s3_api", 1 << 20).await;
    let state = f.state.with_artifacts(std::sync::Arc::new(s3), 1 << 20);
    let app = as_client(
        otaledger_api::app(state),
        f.pool.clone(),
        f.producer.clone(),
    )
    .await;
    let image: Vec<u8> = (0..300_000u32).map(|i| (i % 247) as u8).collect();
    let digest = digest_of(&image);
    let up = Request::post("/v1/artifacts")
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(Body::from(image.clone()))
        .unwrap();
    assert_eq!(
        app.clone().oneshot(up).await.unwrap().status(),
        StatusCode::CREATED
    );
    let get = Request::get(format!("/v1/artifacts/{digest}"))
        .header(header::RANGE, "bytes=100000-")
        .body(Body::empty())
        .unwrap();
    let answer = app.clone().oneshot(get).await.unwrap();
    assert_eq!(answer.status(), StatusCode::PARTIAL_CONTENT);
    let body = answer.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.as_ref(), &image[100_000..]);
    let too_big = Request::post("/v1/artifacts")
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(Body::from(vec![0u8; (1 << 20) + 1]))
        .unwrap();
    assert_eq!(
        app.oneshot(too_big).await.unwrap().status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let _ = std::fs::remove_dir_all(&f.dir);
}

//! The API scenario's load: a fleet projected into a schema, the API serving it on loopback,
//! and an open-loop load generator (requests at a fixed rate, whatever the answers' latency).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use otaledger_domain::time::now_micros;
use otaledger_domain::{Event, Payload};
use otaledger_ledger::config::Config;
use otaledger_ledger::kafka::EventProducer;
use otaledger_projections::projector::{merge_patches, DimensionCache};

use crate::BoxError;

/// The API serving a fleet, and a viewer token for the load generator.
pub(crate) struct ServedApi {
    pub addr: std::net::SocketAddr,
    /// The same API over the same fleet with authentication off, to measure what it costs.
    pub open_addr: std::net::SocketAddr,
    pub server: tokio::task::JoinHandle<()>,
    pub token: std::sync::Arc<str>,
}

/// Fills a fleet of `devices` rows and serves the API over it on a free loopback port.
pub(crate) async fn api_over_fleet(
    cfg: &Config,
    schema: &str,
    devices: usize,
) -> Result<ServedApi, BoxError> {
    let pool =
        otaledger_projections::migrations::migrated_pool(&cfg.database.url, schema, 16).await?;
    let now = now_micros();
    for start in (0..devices).step_by(20_000) {
        let mut patches = BTreeMap::new();
        for i in start..(start + 20_000).min(devices) {
            let e = Event::at(
                Payload::DeviceRegistered(otaledger_domain::events::DeviceRegistered {
                    device_id: format!("bench-{i:07}"),
                    model: format!("model-{}", i % 7),
                    site: format!("site-{}", i % 50),
                    tags: vec!["prod".into()],
                    firmware_version: format!("1.{}.0", i % 5),
                    gateway_id: None,
                    hardware_rev: None,
                }),
                now,
                now,
                "",
            );
            let position = otaledger_domain::device_view::Position {
                partition: 0,
                offset: i as i64,
            };
            if let Some(v) = otaledger_domain::device_view::DeviceView::apply(None, &e, position) {
                patches.insert(v.device_id.clone(), v);
            }
        }
        let mut tx = pool.begin().await?;
        merge_patches(&mut tx, patches, &mut DimensionCache::default()).await?;
        tx.commit().await?;
    }
    sqlx::query("VACUUM ANALYZE devices").execute(&pool).await?;
    // The load generator is a viewer like any dashboard: every request is authenticated.
    let minted = otaledger_projections::access::mint();
    let mut tx = pool.begin().await?;
    otaledger_projections::access::insert(
        &mut tx,
        &minted,
        "bench",
        otaledger_domain::access::Role::Viewer,
        None,
        "bench",
        None,
    )
    .await?;
    tx.commit().await?;
    let producer = EventProducer::new(&cfg.kafka)?;
    let state =
        otaledger_api::AppState::new(pool, producer, cfg.kafka.clone(), cfg.offline_after())?;
    let open = state.clone().unauthenticated_for_benchmarks();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let open_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let open_addr = open_listener.local_addr()?;
    let server = tokio::spawn(async move {
        let open_server = axum::serve(open_listener, otaledger_api::app(open));
        let _ = tokio::join!(
            axum::serve(listener, otaledger_api::app(state)),
            open_server
        );
    });
    Ok(ServedApi {
        addr,
        open_addr,
        server,
        token: minted.token.into(),
    })
}

/// A kept-alive connection of the load generator and its read buffer.
struct Conn {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

/// One HTTP/1.1 GET on a kept-alive connection; returns whether it answered 200.
async fn get_once(conn: &mut Conn, path: &str, token: &str) -> std::io::Result<bool> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    conn.stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nhost: bench\r\nauthorization: Bearer {token}\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let buf = &mut conn.buf;
    buf.clear();
    loop {
        buf.reserve(4096);
        if conn.stream.read_buf(buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                buf.reserve(4096);
                if conn.stream.read_buf(buf).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
            return Ok(head.starts_with("http/1.1 200"));
        }
    }
}

/// Sends requests at a fixed arrival rate whatever the answers take (open loop), measuring each
/// from its scheduled time so that a slow answer cannot hide the queue behind it. Returns the
/// sorted latencies (µs) and the error count.
///
/// The generator is a client apart, as it would be in production: a pacing thread (sleeping
/// with the OS timer, tens of µs late at most; Tokio's timer ticks in whole milliseconds, which
/// added up to a millisecond to every latency) hands each request to a one-worker runtime of its
/// own. Finished requests are freed at once (holding 100,000 finished tasks until the end put a
/// tenth of the process's CPU into zeroing fresh pages; with both fixes the lookup p99 went
/// from 21.9 to 5.6–11.0 ms, see BENCHMARKS.md).
pub(crate) async fn open_loop(
    addr: std::net::SocketAddr,
    token: std::sync::Arc<str>,
    label: &str,
    rate: f64,
    duration: Duration,
    devices: usize,
) -> Result<(Vec<i64>, u64), BoxError> {
    let summary = label.contains("summary");
    Ok(tokio::task::spawn_blocking(move || {
        generate(addr, &token, summary, rate, duration, devices)
    })
    .await??)
}

fn generate(
    addr: std::net::SocketAddr,
    token: &std::sync::Arc<str>,
    summary: bool,
    rate: f64,
    duration: Duration,
    devices: usize,
) -> std::io::Result<(Vec<i64>, u64)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bench-client")
        .enable_all()
        .build()?;
    let pool: std::sync::Arc<std::sync::Mutex<Vec<Conn>>> = std::sync::Arc::default();
    // Each request reports its latency, or None for an error.
    let (done, mut results) = tokio::sync::mpsc::unbounded_channel::<Option<i64>>();
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let total = (duration.as_secs_f64() * rate) as u64;
    let start = Instant::now();
    for i in 0..total {
        let due = start + interval.mul_f64(i as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let (pool, done, token) = (pool.clone(), done.clone(), token.clone());
        let path = if summary {
            "/v1/fleet/summary".to_owned()
        } else {
            format!(
                "/v1/devices/bench-{:07}",
                (i.wrapping_mul(2_654_435_761)) % devices.max(1) as u64
            )
        };
        rt.spawn(async move {
            let conn = pool.lock().ok().and_then(|mut p| p.pop());
            let conn = match conn {
                Some(c) => Ok(c),
                None => tokio::net::TcpStream::connect(addr)
                    .await
                    .map(|stream| Conn {
                        stream,
                        buf: Vec::with_capacity(8192),
                    }),
            };
            let ok = match conn {
                Ok(mut c) => match get_once(&mut c, &path, &token).await {
                    Ok(ok) => {
                        if let Ok(mut p) = pool.lock() {
                            p.push(c);
                        }
                        ok
                    }
                    Err(_) => false,
                },
                Err(_) => false,
            };
            let micros = i64::try_from(due.elapsed().as_micros()).unwrap_or(i64::MAX);
            let _ = done.send(ok.then_some(micros));
        });
    }
    drop(done);
    let (mut lat, errors) = rt.block_on(async {
        let (mut lat, mut errors) = (Vec::with_capacity(usize::try_from(total).unwrap_or(0)), 0);
        while let Some(r) = results.recv().await {
            match r {
                Some(micros) => lat.push(micros),
                None => errors += 1,
            }
        }
        (lat, errors)
    });
    lat.sort_unstable();
    Ok((lat, errors))
}

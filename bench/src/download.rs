//! The download scenario (issue 18, item 6): artifact download throughput from otaledger's API
//! against nginx serving the same file over loopback in the same run, and a fleet downloading
//! through gateways that cache (bytes fetched from the origin against one copy per gateway).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::BoxError;

/// Reads one response to a GET on a kept-alive connection, discarding the body: its length.
async fn get(
    stream: &mut tokio::net::TcpStream,
    path: &str,
    token: Option<&str>,
    buf: &mut [u8],
) -> Result<u64, BoxError> {
    let auth = token.map_or(String::new(), |t| format!("authorization: Bearer {t}\r\n"));
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: bench\r\n{auth}\r\n").as_bytes())
        .await?;
    // The head, then exactly Content-Length bytes of body.
    let mut head = Vec::with_capacity(512);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 {
            return Err("the server closed the connection".into());
        }
        head.push(byte[0]);
        if head.len() > 16 * 1024 {
            return Err("a response head over 16 KiB".into());
        }
    }
    let head = String::from_utf8_lossy(&head);
    if !head.starts_with("HTTP/1.1 200") {
        return Err(format!("answered {}", head.lines().next().unwrap_or("")).into());
    }
    let length: u64 = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())
                .flatten()
        })
        .ok_or("no Content-Length")?;
    let mut left = length;
    while left > 0 {
        let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        let n = stream.read(&mut buf[..want]).await?;
        if n == 0 {
            return Err("the body ended early".into());
        }
        left -= n as u64;
    }
    Ok(length)
}

/// Bytes per second over `connections` kept-alive connections downloading `path` again and
/// again for `duration`.
pub(crate) async fn throughput(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    connections: usize,
    duration: Duration,
) -> Result<f64, BoxError> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (path, token) = (path.to_owned(), token.map(str::to_owned));
        tasks.push(tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let mut buf = vec![0u8; 256 * 1024];
            let mut bytes = 0u64;
            while started.elapsed() < duration {
                bytes += get(&mut stream, &path, token.as_deref(), &mut buf).await?;
            }
            Ok::<u64, BoxError>(bytes)
        }));
    }
    let mut bytes = 0u64;
    for t in tasks {
        bytes += t.await??;
    }
    Ok(bytes as f64 / started.elapsed().as_secs_f64())
}

/// nginx serving `www` on a free loopback port, as Debian's package installs it; stopped when
/// dropped. `None` when nginx is not installed.
pub(crate) struct Nginx {
    child: std::process::Child,
    pub addr: SocketAddr,
}

impl Drop for Nginx {
    /// SIGTERM, so the master stops its workers (a SIGKILL would leave them running), then
    /// SIGKILL if it has not exited within five seconds.
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nginx {
    pub(crate) async fn start(dir: &Path, www: &Path) -> Result<Option<Nginx>, BoxError> {
        let binary = PathBuf::from("/usr/sbin/nginx");
        if !binary.exists() {
            return Ok(None);
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let d = dir.display();
        // Its usual static-file settings: sendfile, two workers (one per core), no access log.
        let conf = format!(
            "daemon off; worker_processes 2; pid {d}/nginx.pid; error_log {d}/nginx-error.log;
             events {{ worker_connections 1024; }}
             http {{
               access_log off; sendfile on; tcp_nopush on; keepalive_requests 100000;
               client_body_temp_path {d}/t1; proxy_temp_path {d}/t2; fastcgi_temp_path {d}/t3;
               uwsgi_temp_path {d}/t4; scgi_temp_path {d}/t5;
               server {{ listen 127.0.0.1:{port}; root {www}; location / {{ }} }}
             }}",
            www = www.display()
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let child = std::process::Command::new(&binary)
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let nginx = Nginx { child, addr };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(Some(nginx));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err("nginx did not listen within 5 s".into())
    }
}

/// A deterministic incompressible file of `len` bytes (xorshift).
pub(crate) fn artifact(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// What a fleet behind caching gateways fetched from the origin.
pub(crate) struct Fleet {
    pub origin_bytes: u64,
    pub cache_hits: u64,
    pub bytes_saved: u64,
    pub verified: u64,
    pub elapsed: Duration,
}

/// `devices` devices, spread over `gateways` gateways, each getting the release through its
/// gateway, which fetches it once from `url` (a signed link) and serves the rest from its cache.
pub(crate) async fn through_gateways(
    release: otaledger_domain::events::Release,
    devices: usize,
    gateways: usize,
) -> Result<Fleet, BoxError> {
    use otaledger_simulator::download::{Downloads, Fetcher};
    let downloads = Arc::new(Downloads::new(None, None, false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for d in 0..devices {
        let (downloads, release) = (Arc::clone(&downloads), release.clone());
        tasks.push(tokio::spawn(async move {
            let gw = format!("gw-{:02}", d % gateways);
            // The link opens the artifact; the bearer token is not looked at.
            downloads
                .verified(
                    &release,
                    Fetcher::Gateway {
                        id: &gw,
                        token: "-",
                    },
                )
                .await
        }));
    }
    for t in tasks {
        t.await?.map_err(|e| format!("a device's download: {e}"))?;
    }
    let read = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    Ok(Fleet {
        origin_bytes: read(&downloads.stats.origin_bytes),
        cache_hits: read(&downloads.stats.cache_hits),
        bytes_saved: read(&downloads.stats.bytes_saved),
        verified: read(&downloads.stats.verified),
        elapsed: started.elapsed(),
    })
}

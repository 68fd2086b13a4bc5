//! Components as processes: `otaledger run <component>` started in a bench's namespace, its
//! `/metrics` scraped, its peak memory read, and stopped gracefully (or killed on drop).

use std::time::Duration;

use otaledger_cli::components::Component;
use otaledger_ledger::config::Config;

use crate::BoxError;

/// Peak resident memory of process `pid` (`self`: this one), in MiB.
#[must_use]
pub fn peak_rss_mib(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A component running as `otaledger run <component>`, its metrics on a port of its own.
pub struct ComponentProcess {
    pub component: Component,
    child: std::process::Child,
    metrics: String,
}

impl ComponentProcess {
    /// Starts `component` in `cfg`'s namespace; `settings` is a configuration file for the
    /// rest (the defaults, or `OTALEDGER_CONFIG`, without one).
    pub fn start(
        bin: &std::path::Path,
        cfg: &Config,
        component: Component,
        settings: Option<&std::path::Path>,
    ) -> Result<Self, BoxError> {
        let metrics = free_loopback_addr()?;
        let mut command = std::process::Command::new(bin);
        if let Some(file) = settings {
            command.arg("-c").arg(file);
        }
        let child = command
            .args(["run", component.name()])
            .envs(cfg.env())
            .env("OTALEDGER_METRICS_LISTEN", &metrics)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("starting {} {}: {e}", bin.display(), component.name()))?;
        Ok(ComponentProcess {
            component,
            child,
            metrics,
        })
    }

    /// A series of its `/metrics` (0 until it answers).
    pub async fn metric(&self, series: &str) -> f64 {
        http_get(&self.metrics, "/metrics")
            .await
            .and_then(|body| {
                body.lines()
                    .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            })
            .unwrap_or(0.0)
    }

    pub fn peak_rss_mib(&self) -> f64 {
        peak_rss_mib(&self.child.id().to_string())
    }

    /// Whether it has exited.
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then up to 10 s for a graceful stop, then SIGKILL.
    pub async fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process left behind by an error path is killed, not orphaned.
impl Drop for ComponentProcess {
    fn drop(&mut self) {
        if !self.exited() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A loopback address whose port was free a moment ago, for another process to listen on.
pub fn free_loopback_addr() -> std::io::Result<String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    Ok(format!("127.0.0.1:{port}"))
}

/// The response to `GET path` on `addr` (status line, headers and body), if it answered 200.
/// Enough HTTP for scraping `/metrics` and probing health endpoints.
pub async fn http_get(addr: &str, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: otaledger\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    out.starts_with("HTTP/1.1 200").then_some(out)
}

//! Devices that check what they install (issue 18, item 5; with provisioned trust, the
//! director's statement and the image metadata first, `trust.rs`): a device
//! commanded to install a release downloads its `artifact_uri` with its own credential, or gets
//! it from its gateway, which fetches each artifact once with the gateway's credential and keeps
//! it by digest, a local update server for its devices. A download cut halfway resumes with
//! `Range`. Bytes past the release's length are refused as they arrive (endless data), and the
//! length and the SHA-256 are checked before anything is installed. A failed check is the
//! reason a device reports `REJECTED`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use otaledger_domain::events::Release;
use otaledger_ledger::http_get::{fetch, Asked, GetError};

/// How long one request of a download may take.
const WITHIN: Duration = Duration::from_secs(120);
/// How often a device tries a download that failed on the way (no answer, a refusal the
/// server may lift, a server error), and the first pause between tries (doubled each time).
/// A device commanded a moment ago may be refused until the server's view of the rollout has
/// caught up with the command (ADR 0037).
const TRIES: u32 = 6;
const FIRST_PAUSE: Duration = Duration::from_millis(250);

/// Who fetches an artifact for a device. `Debug` never shows the credential.
#[derive(Clone, Copy)]
pub enum Fetcher<'a> {
    /// The device itself, with its credential.
    Device { token: &'a str },
    /// The device's gateway, with the gateway's credential, from its cache when it can.
    Gateway { id: &'a str, token: &'a str },
}

/// An artifact a gateway keeps, fetched once even when its devices ask at once.
type Cached = Arc<tokio::sync::OnceCell<Arc<Vec<u8>>>>;

impl std::fmt::Debug for Fetcher<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fetcher::Device { .. } => f.write_str("Fetcher::Device(<credential>)"),
            Fetcher::Gateway { id, .. } => write!(f, "Fetcher::Gateway({id}, <credential>)"),
        }
    }
}

/// The downloads of a simulated fleet, and the gateways' caches.
#[derive(Default)]
pub struct Downloads {
    /// The server the devices report to (`http://host:port`), where a release's
    /// `/v1/artifacts/<sha256>` is fetched from.
    server: Option<String>,
    /// The CA of an `https://` artifact URL (none: the system's roots).
    ca_pem: Option<String>,
    /// Cut every download halfway and resume it, as over a bad link.
    cut: bool,
    /// Each gateway's artifacts by digest, each fetched once even when asked for at once.
    cache: Mutex<HashMap<(String, String), Cached>>,
    /// What the devices were provisioned with to check director statements and image
    /// metadata (ADR 0038); `None`: they check length and hash only.
    trust: Option<crate::trust::Trust>,
    pub stats: DownloadStats,
}

impl std::fmt::Debug for Downloads {
    /// The settings and counts, not the cached bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Downloads")
            .field("server", &self.server)
            .field("cut", &self.cut)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// What the downloads did.
#[derive(Debug, Default)]
pub struct DownloadStats {
    /// Bytes fetched from the artifact server.
    pub origin_bytes: AtomicU64,
    /// Artifacts a gateway served its device from its cache.
    pub cache_hits: AtomicU64,
    /// Bytes the cache hits did not fetch again.
    pub bytes_saved: AtomicU64,
    pub verified: AtomicU64,
    pub rejected: AtomicU64,
}

impl Downloads {
    #[must_use]
    pub fn new(server: Option<String>, ca_pem: Option<String>, cut: bool) -> Self {
        Downloads {
            server: server.map(|s| s.trim_end_matches('/').to_owned()),
            ca_pem,
            cut,
            ..Downloads::default()
        }
    }

    /// Devices that also check the director's statement and the image repository.
    #[must_use]
    pub fn with_trust(mut self, trust: crate::trust::Trust) -> Self {
        self.trust = Some(trust);
        self
    }

    /// With provisioned trust, checks the command's director statement and the image metadata
    /// first; then [`Self::verified`].
    ///
    /// # Errors
    /// The reason the device refuses the update.
    pub async fn installable(
        &self,
        release: &Release,
        fetcher: Fetcher<'_>,
        device: &crate::trust::Device<'_>,
        statement: Option<&str>,
    ) -> Result<(), String> {
        if let Some(trust) = &self.trust {
            let checked = match self.server.as_deref() {
                Some(server) => trust
                    .check(server, self.ca_pem.as_deref(), device, release, statement)
                    .await
                    .map(|_| ()),
                None => Err("no otaledger server to read the image repository from".into()),
            };
            if let Err(e) = checked {
                self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
        }
        self.verified(release, fetcher).await
    }

    /// Downloads the release's artifact as `fetcher` and checks it: `Err` with the reason a
    /// device gives when it refuses to install.
    ///
    /// # Errors
    /// The download failed, was longer than the release says, or its length or SHA-256 is not
    /// the release's.
    pub async fn verified(&self, release: &Release, fetcher: Fetcher<'_>) -> Result<(), String> {
        let outcome = self.checked(release, fetcher).await;
        let counter = if outcome.is_ok() {
            &self.stats.verified
        } else {
            &self.stats.rejected
        };
        counter.fetch_add(1, Ordering::Relaxed);
        outcome
    }

    async fn checked(&self, release: &Release, fetcher: Fetcher<'_>) -> Result<(), String> {
        let bytes = match fetcher {
            Fetcher::Device { token } => Arc::new(self.download_retrying(release, token).await?),
            Fetcher::Gateway { id, token } => self.through_gateway(release, id, token).await?,
        };
        check(release, &bytes)
    }

    async fn through_gateway(
        &self,
        release: &Release,
        gateway: &str,
        token: &str,
    ) -> Result<Arc<Vec<u8>>, String> {
        let cell = {
            let mut cache = self
                .cache
                .lock()
                .map_err(|_| "the gateway's cache is poisoned".to_owned())?;
            Arc::clone(
                cache
                    .entry((gateway.to_owned(), release.sha256.clone()))
                    .or_default(),
            )
        };
        let mut fetched_here = false;
        let bytes = cell
            .get_or_try_init(|| async {
                fetched_here = true;
                let bytes = self.download_retrying(release, token).await?;
                // Only what verifies is kept: a bad download is fetched again next time.
                check(release, &bytes)?;
                Ok::<_, String>(Arc::new(bytes))
            })
            .await?;
        if !fetched_here {
            self.stats.cache_hits.fetch_add(1, Ordering::Relaxed);
            self.stats
                .bytes_saved
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
        Ok(Arc::clone(bytes))
    }

    /// [`Self::download`], tried again with growing pauses while it fails on the way; bytes past
    /// the release's length are refused at once.
    async fn download_retrying(&self, release: &Release, token: &str) -> Result<Vec<u8>, String> {
        let mut pause = FIRST_PAUSE;
        let mut tries = 1;
        loop {
            match self.download(release, token).await {
                Ok(bytes) => return Ok(bytes),
                Err(e) if tries < TRIES && transient(&e) => {
                    tracing::debug!(error = %e, tries, "download failed; trying again");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                    tries += 1;
                }
                Err(e) => return Err(format!("download: {e}")),
            }
        }
    }

    /// The artifact's bytes, at most the release's length of them; cut halfway and resumed
    /// with `Range` and `If-Range` when `cut` is set.
    async fn download(&self, release: &Release, token: &str) -> Result<Vec<u8>, GetError> {
        let length = usize::try_from(release.size_bytes).map_err(|_| GetError::BadUrl {
            url: format!("(a release of length {})", release.size_bytes),
        })?;
        let auth = format!("Bearer {token}");
        let etag = format!("\"{}\"", release.sha256);
        let url = match (release.artifact_uri.starts_with('/'), &self.server) {
            (false, _) => release.artifact_uri.clone(),
            (true, Some(server)) => format!("{server}{}", release.artifact_uri),
            (true, None) => {
                return Err(GetError::BadUrl {
                    url: format!("{} (no otaledger server configured)", release.artifact_uri),
                })
            }
        };
        let url = url.as_str();
        let get = |range: Option<String>, max_bytes: usize, ok: &'static [u16]| {
            let auth = auth.clone();
            let etag = etag.clone();
            async move {
                let mut headers = vec![("authorization", auth.as_str())];
                if let Some(range) = &range {
                    headers.push(("range", range.as_str()));
                    headers.push(("if-range", etag.as_str()));
                }
                let asked = Asked {
                    ca_pem: self.ca_pem.as_deref(),
                    headers: &headers,
                    max_bytes,
                    within: WITHIN,
                };
                let body = fetch(url, &asked, ok).await?;
                self.stats
                    .origin_bytes
                    .fetch_add(body.len() as u64, Ordering::Relaxed);
                Ok::<_, GetError>(body)
            }
        };
        if !self.cut || length < 2 {
            return Ok(get(None, length, &[200]).await?.to_vec());
        }
        let half = length / 2;
        let mut bytes = get(Some(format!("bytes=0-{}", half - 1)), half, &[206])
            .await?
            .to_vec();
        let rest = get(
            Some(format!("bytes={}-", bytes.len())),
            length - bytes.len(),
            &[206],
        )
        .await?;
        bytes.extend_from_slice(&rest);
        Ok(bytes)
    }
}

/// Whether a failed download may succeed if tried again: no answer, a refusal the server may
/// lift (403 while its view catches up, 404, 429) or a server error; not bytes past the limit.
fn transient(e: &GetError) -> bool {
    match e {
        GetError::Status { status, .. } => matches!(status, 403 | 404 | 408 | 429 | 500..=599),
        GetError::Failed { error, .. } => !error.starts_with("reading the body"),
        GetError::TimedOut { .. } => true,
        GetError::BadUrl { .. } => false,
    }
}

/// The checks a device makes before it installs: the release's length and SHA-256.
fn check(release: &Release, bytes: &[u8]) -> Result<(), String> {
    use sha2::Digest as _;
    if i64::try_from(bytes.len()).ok() != Some(release.size_bytes) {
        return Err(format!(
            "the artifact has {} bytes, not the release's {}",
            bytes.len(),
            release.size_bytes
        ));
    }
    let digest: String = sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if !digest.eq_ignore_ascii_case(&release.sha256) {
        return Err(format!(
            "the artifact's SHA-256 is {digest}, not the release's {}",
            release.sha256
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(bytes: &[u8]) -> Release {
        use sha2::Digest as _;
        Release {
            version: "2.0.0".into(),
            artifact_uri: "http://127.0.0.1:1/none".into(),
            sha256: sha2::Sha256::digest(bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect(),
            size_bytes: i64::try_from(bytes.len()).unwrap_or(0),
            signature: String::new(),
        }
    }

    #[test]
    fn only_failures_on_the_way_are_tried_again() {
        let status = |status| GetError::Status {
            url: "u".into(),
            status,
        };
        let failed = |error: &str| GetError::Failed {
            url: "u".into(),
            error: error.into(),
        };
        for s in [403, 404, 408, 429, 500, 503, 599] {
            assert!(transient(&status(s)), "{s}");
        }
        for s in [400, 401, 410, 416, 600] {
            assert!(!transient(&status(s)), "{s}");
        }
        assert!(transient(&failed("connection refused")));
        assert!(!transient(&failed(
            "reading the body (at most 10 bytes): length limit exceeded"
        )));
        assert!(!transient(&GetError::BadUrl { url: "u".into() }));
    }

    #[test]
    fn a_fetcher_never_shows_its_credential() {
        let shown = format!(
            "{:?} {:?}",
            Fetcher::Device {
                token: "otl_secret"
            },
            Fetcher::Gateway {
                id: "gw-1",
                token: "otl_secret"
            }
        );
        assert!(!shown.contains("otl_secret"), "{shown}");
        assert!(shown.contains("gw-1"));
    }

    #[test]
    fn a_device_installs_only_the_releases_bytes() {
        let r = release(b"firmware");
        assert_eq!(check(&r, b"firmware"), Ok(()));
        assert!(check(&r, b"firmwarE").unwrap_err().contains("SHA-256"));
        assert!(check(&r, b"firmwar").unwrap_err().contains("7 bytes"));
        assert!(check(&r, b"firmware!").unwrap_err().contains("9 bytes"));
    }
}

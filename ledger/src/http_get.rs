//! One GET for a document otaledger reads from elsewhere (an OIDC issuer's key set): hyper's
//! HTTP/1.1 client, already built for the RabbitMQ admin, over rustls with ring for `https://`,
//! trusting the system's roots or a given CA. A size limit and a deadline, one request a
//! connection: these are fetched every few minutes, not streamed.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::rustls;

/// Why a GET failed.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    #[error("{url:?} is not an http:// or https:// URL with a host")]
    BadUrl { url: String },
    #[error("GET {url}: {error}")]
    Failed { url: String, error: String },
    #[error("GET {url}: answered {status}")]
    Status { url: String, status: u16 },
    #[error("GET {url}: no answer within {within:?}")]
    TimedOut { url: String, within: Duration },
}

/// The TLS client configuration: the CA in `ca_pem`, or the system's roots (read once).
fn tls_config(ca_pem: Option<&str>) -> Arc<rustls::ClientConfig> {
    static SYSTEM: std::sync::OnceLock<Arc<rustls::ClientConfig>> = std::sync::OnceLock::new();
    match ca_pem {
        Some(ca) => crate::mqtt::tls_client_config(ca),
        None => Arc::clone(SYSTEM.get_or_init(system_roots)),
    }
}

fn system_roots() -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::warn!(error = %e, "a system root certificate does not read");
    }
    roots.add_parsable_certificates(native.certs);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth())
            .unwrap_or_else(|_| {
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth()
            }),
    )
}

/// The body of `GET url`, at most `max_bytes`, within `within`; a status other than 200 is an
/// error. `ca_pem` is the CA an `https://` server's certificate must chain to (none: the
/// system's roots).
pub async fn get(
    url: &str,
    ca_pem: Option<&str>,
    max_bytes: usize,
    within: Duration,
) -> Result<Bytes, GetError> {
    let asked = Asked {
        ca_pem,
        headers: &[("accept", "application/json")],
        max_bytes,
        within,
    };
    fetch(url, &asked, &[200]).await
}

/// What a GET sends and how much it takes.
#[derive(Debug, Clone, Copy)]
pub struct Asked<'a> {
    /// The CA an `https://` server's certificate must chain to (none: the system's roots).
    pub ca_pem: Option<&'a str>,
    /// Request headers (`authorization`, `range`, …).
    pub headers: &'a [(&'a str, &'a str)],
    /// The most body bytes taken: more is an error, not a truncation.
    pub max_bytes: usize,
    pub within: Duration,
}

/// The body of `GET url` with the request's headers, when the status is one of `ok` (a
/// download resumed with `Range` takes 206); another status is [`GetError::Status`], a body past
/// `asked.max_bytes` is [`GetError::Failed`].
pub async fn fetch(url: &str, asked: &Asked<'_>, ok: &[u16]) -> Result<Bytes, GetError> {
    // A login in the URL never reaches an error (errors are logged).
    let shown = crate::config::redact_url(url);
    tokio::time::timeout(asked.within, get_now(url, &shown, asked, ok))
        .await
        .map_err(|_| GetError::TimedOut {
            url: shown.clone(),
            within: asked.within,
        })?
}

async fn get_now(url: &str, shown: &str, asked: &Asked<'_>, ok: &[u16]) -> Result<Bytes, GetError> {
    let bad = || GetError::BadUrl {
        url: shown.to_owned(),
    };
    let uri: Uri = url.parse().map_err(|_| bad())?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(bad()),
    };
    let host = uri.host().ok_or_else(bad)?.to_owned();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let failed = |error: String| GetError::Failed {
        url: shown.to_owned(),
        error,
    };
    // An IPv6 literal comes bracketed in the URI and is connected to without brackets.
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let tcp = tokio::net::TcpStream::connect((bare.as_str(), port))
        .await
        .map_err(|e| failed(e.to_string()))?;
    // The Host header: host and port, never the URL's user information.
    let authority = match uri.port_u16() {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    if tls {
        let name = rustls_pki_types::ServerName::try_from(bare)
            .map_err(|e| failed(format!("the host is not a TLS server name: {e}")))?;
        let stream = tokio_rustls::TlsConnector::from(tls_config(asked.ca_pem))
            .connect(name, tcp)
            .await
            .map_err(|e| failed(format!("TLS: {e}")))?;
        exchange(stream, &authority, &path, asked, ok, shown).await
    } else {
        exchange(tcp, &authority, &path, asked, ok, shown).await
    }
}

async fn exchange<S>(
    stream: S,
    authority: &str,
    path: &str,
    asked: &Asked<'_>,
    ok: &[u16],
    url: &str,
) -> Result<Bytes, GetError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let failed = |error: String| GetError::Failed {
        url: url.to_owned(),
        error,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| failed(e.to_string()))?;
    let conn = tokio::spawn(conn);
    let mut request = Request::get(path).header(hyper::header::HOST, authority);
    for (name, value) in asked.headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| failed(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| failed(e.to_string()))?;
    let status = response.status();
    if !ok.contains(&status.as_u16()) {
        conn.abort();
        return Err(GetError::Status {
            url: url.to_owned(),
            status: status.as_u16(),
        });
    }
    let max_bytes = asked.max_bytes;
    let body = Limited::new(response.into_body(), max_bytes)
        .collect()
        .await
        .map_err(|e| failed(format!("reading the body (at most {max_bytes} bytes): {e}")))?
        .to_bytes();
    conn.abort();
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_password_in_the_url_never_reaches_the_error() {
        // Nothing listens on port 1: the connection is refused, and the error names the URL.
        let answer = get(
            "http://reader:s3cret@127.0.0.1:1/jwks",
            None,
            10,
            Duration::from_secs(5),
        )
        .await;
        let shown = format!(
            "{answer:?} {}",
            answer
                .as_ref()
                .err()
                .map(ToString::to_string)
                .unwrap_or_default()
        );
        assert!(matches!(answer, Err(GetError::Failed { .. })), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("reader:<redacted>@127.0.0.1:1"), "{shown}");
    }

    #[tokio::test]
    async fn only_http_and_https_urls_with_a_host_are_fetched() {
        for url in [
            "ftp://example.com/x",
            "/relative",
            "https:///nohost",
            "not a url",
        ] {
            let answer = get(url, None, 10, Duration::from_secs(1)).await;
            assert!(
                matches!(answer, Err(GetError::BadUrl { .. })),
                "{url}: {answer:?}"
            );
        }
    }
}

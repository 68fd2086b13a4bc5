//! Gateway logins in RabbitMQ (ADR 0029): provisioning a gateway creates its RabbitMQ user
//! through the management plugin's HTTP API, with permissions that let it publish to the
//! reports exchange and read its own command queue, and nothing else; revoking deletes the user
//! and closes its connections. The queue and its binding are made here, by the administrator,
//! because a gateway allowed to bind could bind its queue to another gateway's routing key.
//!
//! A plain HTTP/1.1 client on hyper (already built for the API's server): the management API
//! is a handful of idempotent PUTs, DELETEs and one GET, one connection each.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

use crate::amqp::AmqpConfig;

/// Why the broker did not take a change.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("no RabbitMQ management login is configured (amqp.admin_url)")]
    NotConfigured,
    #[error("amqp.admin_url must read http://user:password@host:port: {0}")]
    BadUrl(&'static str),
    #[error(
        "RabbitMQ's management API at {addr}: {error} (is the rabbitmq_management plugin enabled?)"
    )]
    Unreachable { addr: String, error: String },
    #[error("RabbitMQ's management API refused {what}: {status} {body}")]
    Refused {
        what: String,
        status: StatusCode,
        body: String,
    },
}

/// The management API with an administrator's login.
pub struct RabbitAdmin {
    addr: String,
    authorization: String,
    cfg: AmqpConfig,
}

impl std::fmt::Debug for RabbitAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitAdmin")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// What a path segment may hold as is: RFC 3986's unreserved characters.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes a path segment.
fn segment(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, SEGMENT).to_string()
}

/// Percent-decodes a URL's user or password.
fn decoded(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// A regular expression that matches exactly `text` (RabbitMQ's permissions are regexes).
fn exactly(text: &str) -> String {
    let mut out = String::from("^");
    for c in text.chars() {
        if !c.is_ascii_alphanumeric() && c != '_' && c != '-' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('$');
    out
}

impl RabbitAdmin {
    /// The management API of `cfg.admin_url`; `NotConfigured` without one.
    pub fn new(cfg: &AmqpConfig) -> Result<Self, AdminError> {
        let url = cfg.admin_url.as_deref().ok_or(AdminError::NotConfigured)?;
        let rest = url.strip_prefix("http://").ok_or(AdminError::BadUrl(
            "only http:// (a loopback or private management listener)",
        ))?;
        let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
        let (userinfo, addr) = authority
            .rsplit_once('@')
            .ok_or(AdminError::BadUrl("no user and password"))?;
        let (user, password) = userinfo
            .split_once(':')
            .ok_or(AdminError::BadUrl("no password"))?;
        let credentials = format!("{}:{}", decoded(user), decoded(password));
        Ok(RabbitAdmin {
            addr: addr.to_owned(),
            authorization: {
                use base64::Engine as _;
                let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
                format!("Basic {encoded}")
            },
            cfg: cfg.clone(),
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Bytes), AdminError> {
        let unreachable = |error: String| AdminError::Unreachable {
            addr: self.addr.clone(),
            error,
        };
        let stream = tokio::net::TcpStream::connect(&self.addr)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let conn = tokio::spawn(conn);
        let payload = body.map(Value::to_string).unwrap_or_default();
        let request = Request::builder()
            .method(method)
            .uri(format!("/api/{path}"))
            .header(hyper::header::HOST, &self.addr)
            .header(hyper::header::AUTHORIZATION, &self.authorization)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| unreachable(e.to_string()))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        conn.abort();
        Ok((status, bytes))
    }

    /// A call that must succeed (2xx; with `absent_ok`, 404 too).
    async fn must(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        absent_ok: bool,
    ) -> Result<Bytes, AdminError> {
        let what = format!("{method} /api/{path}");
        let (status, bytes) = self.call(method, path, body).await?;
        if status.is_success() || (absent_ok && status == StatusCode::NOT_FOUND) {
            return Ok(bytes);
        }
        Err(AdminError::Refused {
            what,
            status,
            body: String::from_utf8_lossy(&bytes).chars().take(300).collect(),
        })
    }

    /// The exchanges and queues every gateway needs, made idempotently.
    async fn declare_shared(&self) -> Result<(), AdminError> {
        let v = &self.cfg.vhost();
        let reports = segment(&self.cfg.reports_queue);
        let commands = segment(&self.cfg.commands_exchange);
        let durable = json!({"durable": true});
        self.must(
            Method::PUT,
            &format!("queues/{v}/{reports}"),
            Some(&durable),
            false,
        )
        .await?;
        self.must(
            Method::PUT,
            &format!("exchanges/{v}/{reports}"),
            Some(&json!({"type": "fanout", "durable": true})),
            false,
        )
        .await?;
        self.must(
            Method::POST,
            &format!("bindings/{v}/e/{reports}/q/{reports}"),
            Some(&json!({"routing_key": ""})),
            false,
        )
        .await?;
        self.must(
            Method::PUT,
            &format!("exchanges/{v}/{commands}"),
            Some(&json!({"type": "topic", "durable": true})),
            false,
        )
        .await?;
        Ok(())
    }

    /// Creates (or replaces) `gateway`'s RabbitMQ user with `password`: it may publish to the
    /// reports exchange and read its own command queue, which is declared and bound here.
    pub async fn add_gateway(&self, gateway: &str, password: &str) -> Result<(), AdminError> {
        self.declare_shared().await?;
        let v = &self.cfg.vhost();
        let queue = self.cfg.gateway_queue(gateway);
        self.must(
            Method::PUT,
            &format!("queues/{v}/{}", segment(&queue)),
            Some(&json!({"durable": true})),
            false,
        )
        .await?;
        self.must(
            Method::POST,
            &format!(
                "bindings/{v}/e/{}/q/{}",
                segment(&self.cfg.commands_exchange),
                segment(&queue)
            ),
            Some(&json!({"routing_key": gateway})),
            false,
        )
        .await?;
        self.must(
            Method::PUT,
            &format!("users/{}", segment(gateway)),
            Some(&json!({"password": password, "tags": ""})),
            false,
        )
        .await?;
        self.must(
            Method::PUT,
            &format!("permissions/{v}/{}", segment(gateway)),
            Some(&json!({
                "configure": "^$",
                "write": exactly(&self.cfg.reports_queue),
                "read": exactly(&queue),
            })),
            false,
        )
        .await?;
        Ok(())
    }

    /// Deletes `gateway`'s user, then closes any connection of it still listed (RabbitMQ 3.10
    /// closes them on deletion; a channel keeps the permissions it had checked, so one left
    /// open would keep a revoked gateway publishing). Its queue stays, with whatever commands
    /// wait in it, for a gateway provisioned again.
    pub async fn remove_gateway(&self, gateway: &str) -> Result<(), AdminError> {
        self.must(
            Method::DELETE,
            &format!("users/{}", segment(gateway)),
            None,
            true,
        )
        .await?;
        let listed = self
            .must(Method::GET, "connections?columns=name,user", None, false)
            .await?;
        let connections: Vec<Value> = serde_json::from_slice(&listed).unwrap_or_default();
        for c in connections {
            if c["user"].as_str() == Some(gateway) {
                if let Some(name) = c["name"].as_str() {
                    self.must(
                        Method::DELETE,
                        &format!("connections/{}", segment(name)),
                        None,
                        true,
                    )
                    .await?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_encoded_for_paths_and_escaped_for_permissions() {
        assert_eq!(segment("gw-1.a_b~"), "gw-1.a_b~");
        assert_eq!(segment("127.0.0.1:5 -> x"), "127.0.0.1%3A5%20-%3E%20x");
        assert_eq!(segment("%2f"), "%252f");
        assert_eq!(
            exactly("ota.gateway-commands.gw:1"),
            r"^ota\.gateway-commands\.gw\:1$"
        );
        assert_eq!(decoded("p%40ss%3aw"), "p@ss:w");
        assert_eq!(decoded("100%"), "100%");
    }

    #[test]
    fn the_url_must_carry_a_login() {
        let with = |url: &str| {
            RabbitAdmin::new(&AmqpConfig {
                admin_url: Some(url.into()),
                ..AmqpConfig::default()
            })
        };
        assert!(matches!(
            RabbitAdmin::new(&AmqpConfig::default()),
            Err(AdminError::NotConfigured)
        ));
        assert!(matches!(
            with("https://a:b@h:1"),
            Err(AdminError::BadUrl(_))
        ));
        assert!(matches!(with("http://h:1"), Err(AdminError::BadUrl(_))));
        assert!(matches!(with("http://a@h:1"), Err(AdminError::BadUrl(_))));
        let admin = with("http://guest:guest@127.0.0.1:15672/").unwrap();
        assert_eq!(admin.addr, "127.0.0.1:15672");
        assert_eq!(admin.authorization, "Basic Z3Vlc3Q6Z3Vlc3Q=");
        assert!(
            !format!("{admin:?}").contains("Z3Vl"),
            "Debug shows no credential"
        );
    }
}

//! The MQTT side every component shares: connection settings and the topic layout
//! (`{root}/{device}/{kind}`) that devices, the bridge, the dispatcher and the simulator agree on.

use std::time::Duration;

use rumqttc::MqttOptions;
use serde::Deserialize;

#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    /// Stable per bridge instance: the broker keeps the session (and unacknowledged messages)
    /// for this id across restarts. Empty: derived from the topic root.
    pub client_id: String,
    /// The first topic level(s) before the device id.
    pub topic_root: String,
    /// Bridges sharing a group split the device traffic (`$share/{group}/...`).
    pub shared_group: Option<String>,
    /// otaledger's service login (the bridge, the dispatcher): with Mosquitto's dynamic-security
    /// plugin (ADR 0026) every client logs in.
    pub username: Option<String>,
    pub password: Option<String>,
    /// The login that adds and removes device logins in the broker (`$CONTROL`); used by the
    /// API and the CLI when they provision or revoke a device.
    pub admin_username: Option<String>,
    pub admin_password: Option<String>,
    /// A PEM file of the certificate authority that signed the broker's certificate: with it
    /// every connection (bridge, dispatcher, admin, simulator) is MQTT over TLS, and `port`
    /// should be the broker's TLS listener (8883). The broker's name is checked against `host`.
    pub tls_ca: Option<String>,
}

/// Passwords are never shown.
impl std::fmt::Debug for MqttConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hidden = |p: &Option<String>| p.as_ref().map(|_| "<redacted>");
        f.debug_struct("MqttConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("client_id", &self.client_id)
            .field("topic_root", &self.topic_root)
            .field("shared_group", &self.shared_group)
            .field("username", &self.username)
            .field("password", &hidden(&self.password))
            .field("admin_username", &self.admin_username)
            .field("admin_password", &hidden(&self.admin_password))
            .field("tls_ca", &self.tls_ca)
            .finish()
    }
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            host: "127.0.0.1".into(),
            port: 1883,
            client_id: String::new(),
            topic_root: "devices".into(),
            shared_group: None,
            username: None,
            password: None,
            admin_username: None,
            admin_password: None,
            tls_ca: None,
        }
    }
}

impl MqttConfig {
    #[must_use]
    pub fn options(&self, client_id: &str) -> MqttOptions {
        let mut o = MqttOptions::new(client_id, &self.host, self.port);
        o.set_keep_alive(Duration::from_secs(15));
        o.set_max_packet_size(1024 * 1024, 1024 * 1024);
        if let (Some(u), Some(p)) = (&self.username, &self.password) {
            o.set_credentials(u, p);
        }
        if let Some(ca) = &self.tls_ca {
            o.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(tls_client_config(ca)),
            ));
        }
        o
    }

    /// The configured client id, or one derived from the topic root so that ledgers with
    /// different roots never share (and steal) a persistent session.
    #[must_use]
    pub fn bridge_client_id(&self) -> String {
        if !self.client_id.is_empty() {
            return self.client_id.clone();
        }
        let root: String = self
            .topic_root
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("otaledger-bridge-{root}")
    }

    #[must_use]
    pub fn subscription(&self) -> String {
        match &self.shared_group {
            Some(g) => format!("$share/{g}/{}/+/+", self.topic_root),
            None => format!("{}/+/+", self.topic_root),
        }
    }

    /// Splits `{root}/{device}/{kind}` into device id and kind.
    #[must_use]
    pub fn route<'a>(&self, topic: &'a str) -> Option<(&'a str, &'a str)> {
        let rest = topic
            .strip_prefix(self.topic_root.as_str())?
            .strip_prefix('/')?;
        let (device, kind) = rest.split_once('/')?;
        (!kind.contains('/')).then_some((device, kind))
    }
}

/// The last topic level of commands to devices: `{root}/{device}/commands`.
pub const COMMANDS_KIND: &str = "commands";

/// A TLS client configuration (rustls with ring) trusting the CA in `ca_pem`, made once per
/// file: a simulator opens thousands of connections with it. A CA that does not read leaves
/// the trust store empty, so every handshake fails with an unknown-issuer error (logged once).
pub(crate) fn tls_client_config(
    ca_pem: &str,
) -> std::sync::Arc<tokio_rustls::rustls::ClientConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use tokio_rustls::rustls;

    static MADE: Mutex<Option<HashMap<String, Arc<rustls::ClientConfig>>>> = Mutex::new(None);
    let mut made = MADE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let made = made.get_or_insert_with(HashMap::new);
    if let Some(config) = made.get(ca_pem) {
        return config.clone();
    }
    let mut roots = rustls::RootCertStore::empty();
    match CertificateDer::pem_file_iter(ca_pem).and_then(Iterator::collect::<Result<Vec<_>, _>>) {
        Ok(certs) => {
            let (added, ignored) = roots.add_parsable_certificates(certs);
            if added == 0 || ignored > 0 {
                tracing::error!(
                    file = ca_pem,
                    added,
                    ignored,
                    "the MQTT CA file holds no usable certificate"
                );
            }
        }
        Err(e) => tracing::error!(file = ca_pem, error = %e, "the MQTT CA file does not read"),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "no TLS protocol version in common with rustls' defaults");
            rustls::ClientConfig::builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        });
    let config = Arc::new(config);
    made.insert(ca_pem.to_owned(), config.clone());
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_route_to_device_and_kind() {
        let cfg = MqttConfig {
            topic_root: "t1/devices".into(),
            ..MqttConfig::default()
        };
        assert_eq!(
            cfg.route("t1/devices/d-1/heartbeat"),
            Some(("d-1", "heartbeat"))
        );
        assert_eq!(cfg.route("t1/devices/d-1/a/b"), None);
        assert_eq!(cfg.route("other/d-1/heartbeat"), None);
        assert_eq!(cfg.subscription(), "t1/devices/+/+");
    }

    #[test]
    fn debug_hides_the_passwords() {
        let cfg = MqttConfig {
            username: Some("svc".into()),
            password: Some("s3cret-service".into()),
            admin_username: Some("adm".into()),
            admin_password: Some("s3cret-admin".into()),
            ..MqttConfig::default()
        };
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            shown.contains("svc") && shown.contains("<redacted>"),
            "{shown}"
        );
    }
}

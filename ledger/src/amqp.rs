//! The AMQP side every component shares: connection settings, the durable reports queue
//! gateways publish to and the topic exchange commands to gateways go through.

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use serde::Deserialize;

use crate::{AmqpContext, Error, Result};

#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AmqpConfig {
    pub url: String,
    /// The durable queue gateways' report batches land in, and the fanout exchange of the same
    /// name they publish to (a gateway may write to that exchange and nothing else: ADR 0029).
    pub reports_queue: String,
    /// The topic exchange commands to gateways go to (routing key = gateway id); each gateway's
    /// queue is `<commands_exchange>.<gateway id>`.
    pub commands_exchange: String,
    pub prefetch: u16,
    /// RabbitMQ's management API with an administrator login, e.g.
    /// `http://admin:secret@127.0.0.1:15672`: provisioning a gateway creates its RabbitMQ user
    /// there. `None`: gateways are not given broker logins.
    pub admin_url: Option<String>,
    /// A PEM file of the certificate authority that signed the broker's certificate, for an
    /// `amqps://` URL (ADR 0028). Without it an `amqps://` URL trusts the bundled web roots.
    pub tls_ca: Option<String>,
}

impl std::fmt::Debug for AmqpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpConfig")
            .field("url", &crate::config::redact_url(&self.url))
            .field("reports_queue", &self.reports_queue)
            .field("commands_exchange", &self.commands_exchange)
            .field("prefetch", &self.prefetch)
            .field(
                "admin_url",
                &self.admin_url.as_deref().map(crate::config::redact_url),
            )
            .field("tls_ca", &self.tls_ca)
            .finish()
    }
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            reports_queue: "ota.gateway-reports".into(),
            commands_exchange: "ota.gateway-commands".into(),
            prefetch: 256,
            admin_url: None,
            tls_ca: None,
        }
    }
}

impl AmqpConfig {
    /// The user name of the configured login (`guest` when the URL names none, as RabbitMQ
    /// assumes): the bridge trusts batches this login relays (ADR 0029).
    #[must_use]
    pub fn login(&self) -> String {
        let rest = self.url.split_once("://").map_or("", |(_, r)| r);
        let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
        match authority.rfind('@') {
            Some(at) => {
                let user = &authority[..at];
                user.split_once(':').map_or(user, |(u, _)| u).to_owned()
            }
            None => "guest".into(),
        }
    }

    /// The virtual host of the URL, percent-encoded as the management API wants it.
    #[must_use]
    pub fn vhost(&self) -> String {
        let rest = self.url.split_once("://").map_or("", |(_, r)| r);
        match rest.split_once('/') {
            Some((_, v)) if !v.is_empty() => v.split('?').next().unwrap_or(v).to_owned(),
            _ => "%2f".into(),
        }
    }

    /// The queue a gateway reads its commands from.
    #[must_use]
    pub fn gateway_queue(&self, gateway: &str) -> String {
        format!("{}.{gateway}", self.commands_exchange)
    }
}

/// Connects to RabbitMQ (over TLS for an `amqps://` URL, trusting `tls_ca` when given).
pub async fn connect(cfg: &AmqpConfig) -> Result<Connection> {
    use lapin::Connect as _;
    let Some(ca) = &cfg.tls_ca else {
        return Connection::connect(&cfg.url, ConnectionProperties::default())
            .await
            .amqp("connecting");
    };
    let pem = std::fs::read_to_string(ca)
        .map_err(|e| Error::Other(format!("reading the AMQP CA {ca}: {e}")))?;
    let tls = lapin::tcp::OwnedTLSConfig {
        identity: None,
        cert_chain: Some(pem),
    };
    let runtime = lapin::runtime::default_runtime().amqp("starting the AMQP runtime")?;
    cfg.url
        .as_str()
        .connect_with_config(ConnectionProperties::default(), tls, runtime)
        .await
        .amqp("connecting over TLS")
}

/// Connects as [`connect`] does, waiting for a broker that is down or restarting (a doubling
/// wait of up to 5 s, each failure logged) instead of failing: a component started while
/// RabbitMQ restarts would otherwise exit, be restarted and exit again, as fast as its service
/// manager allows. What waiting cannot mend (a login refused, a protocol error) fails at once.
/// `None` when shutdown comes first.
pub async fn connect_when_up(
    cfg: &AmqpConfig,
    shutdown: &mut crate::shutdown::ShutdownSignal,
) -> Result<Option<Connection>> {
    let mut wait = std::time::Duration::from_millis(250);
    loop {
        match connect(cfg).await {
            Ok(conn) => return Ok(Some(conn)),
            Err(Error::Amqp { source, .. })
                if matches!(source.kind(), lapin::ErrorKind::IOError(_)) =>
            {
                tracing::warn!(error = %source, retry_in = ?wait, "RabbitMQ unreachable; waiting for it");
            }
            Err(e) => return Err(e),
        }
        tokio::select! {
            () = shutdown.wait() => return Ok(None),
            () = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(std::time::Duration::from_secs(5));
    }
}

/// Declares the durable reports queue and the fanout exchange of the same name bound to it,
/// which gateways publish to (idempotent).
pub async fn declare_reports_queue(channel: &lapin::Channel, cfg: &AmqpConfig) -> Result<()> {
    channel
        .queue_declare(
            cfg.reports_queue.as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .amqp("declaring reports queue")?;
    channel
        .exchange_declare(
            cfg.reports_queue.as_str().into(),
            lapin::ExchangeKind::Fanout,
            lapin::options::ExchangeDeclareOptions {
                durable: true,
                ..lapin::options::ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .amqp("declaring the reports exchange")?;
    channel
        .queue_bind(
            cfg.reports_queue.as_str().into(),
            cfg.reports_queue.as_str().into(),
            "".into(),
            lapin::options::QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .amqp("binding the reports queue")?;
    Ok(())
}

/// Declares the topic exchange commands to gateways are published on (routing key: gateway id).
/// The dispatcher publishes to it; gateways bind their queues to it.
pub async fn declare_commands_exchange(channel: &lapin::Channel, cfg: &AmqpConfig) -> Result<()> {
    channel
        .exchange_declare(
            cfg.commands_exchange.as_str().into(),
            lapin::ExchangeKind::Topic,
            lapin::options::ExchangeDeclareOptions {
                durable: true,
                ..lapin::options::ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .amqp("declaring the commands exchange")
}

/// Publishes one gateway batch with publisher confirms (used by the simulator and tests), as
/// `user_id`: RabbitMQ refuses a message whose `user_id` is not the connection's login, so the
/// bridge can trust it (ADR 0029).
pub async fn publish_batch(
    channel: &lapin::Channel,
    cfg: &AmqpConfig,
    user_id: &str,
    body: &[u8],
) -> Result<()> {
    let confirm = channel
        .basic_publish(
            cfg.reports_queue.as_str().into(),
            "".into(),
            lapin::options::BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            body,
            lapin::BasicProperties::default()
                .with_delivery_mode(2)
                .with_user_id(user_id.into())
                .with_content_type("application/json".into()),
        )
        .await
        .amqp("publishing report batch")?
        .await
        .amqp("awaiting publisher confirm")?;
    if confirm.is_nack() {
        return Err(Error::Other("broker refused the report batch".into()));
    }
    // Acknowledged but returned: no queue was bound to take it (the reports exchange exists
    // before the bridge binds its queue), so it is gone unless sent again.
    if confirm.take_message().is_some() {
        return Err(Error::Other(
            "the report batch was unroutable: no queue is bound to the reports exchange yet".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_login_and_vhost_are_read_from_the_url() {
        let at = |url: &str| AmqpConfig {
            url: url.into(),
            ..AmqpConfig::default()
        };
        assert_eq!(at("amqp://guest:guest@127.0.0.1:5672/%2f").login(), "guest");
        assert_eq!(at("amqp://gw-1:p@ss@mq/%2f").login(), "gw-1");
        assert_eq!(at("amqp://bridge@mq/ota").login(), "bridge");
        assert_eq!(at("amqp://mq:5672").login(), "guest");
        assert_eq!(at("amqp://guest:guest@127.0.0.1:5672/%2f").vhost(), "%2f");
        assert_eq!(at("amqp://u:p@mq/ota?heartbeat=10").vhost(), "ota");
        assert_eq!(at("amqp://mq:5672").vhost(), "%2f");
        assert_eq!(at("amqp://mq/").vhost(), "%2f");
        assert_eq!(
            at("amqp://mq/").gateway_queue("gw-7"),
            "ota.gateway-commands.gw-7"
        );
    }
}

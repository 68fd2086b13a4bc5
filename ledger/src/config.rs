//! Configuration: a TOML file, then `OTALEDGER_*` environment variables over it. Every
//! component reads its section of one [`Config`].

use std::path::Path;
use std::time::Duration;

use otaledger_domain::Stream;
use serde::Deserialize;

pub use crate::amqp::AmqpConfig;
pub use crate::mqtt::MqttConfig;

/// Kafka settings. `topic_prefix` lets several ledgers (tests, tenants) share one cluster.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    pub brokers: String,
    pub topic_prefix: String,
    /// Partitions of each ledger topic when otaledger creates it.
    pub partitions: i32,
    pub replication_factor: i32,
    /// How long the producer tries to deliver a record before failing it (librdkafka's
    /// `message.timeout.ms`): the sender then answers 503 or does not acknowledge, and the
    /// device sends again.
    pub message_timeout_ms: u64,
    /// How long a broker may hold a fetch that found nothing (librdkafka's
    /// `fetch.wait.max.ms`). Apache Kafka answers as soon as a record arrives, so a long wait
    /// costs nothing there. tansu sleeps out part of the wait even when it found records, and
    /// each fetch is storage queries per partition: 10 ms keeps a memory broker's lag low,
    /// while on its SQLite storage the idle quick-start stack kept the broker at 102 % of a
    /// core with 10 ms, 57 % with 100 and 16 % with 500; the quick start asks for 250 (ADR 0043).
    pub fetch_wait_max_ms: u32,
    /// How long the producer gathers records into one batch (librdkafka's `linger.ms`). Each
    /// batch is a storage transaction on tansu's SQLite storage: the quick start asks for
    /// 100 ms there instead of 10 (ADR 0043), at the cost of that much more latency before an
    /// acknowledgement.
    pub linger_ms: u32,
    /// Days the dead-letter topic keeps a record (its `retention.ms`; 0: for ever). The ledger
    /// topics keep every record for ever.
    pub dead_letter_retention_days: u32,
    /// librdkafka's `security.protocol`: `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`
    /// (TLS through the system's OpenSSL; ADR 0028).
    pub security_protocol: String,
    /// `ssl.ca.location`: the PEM file of the CA that signed the brokers' certificates.
    pub ssl_ca_location: Option<String>,
    /// `sasl.mechanism` (`PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`) with its login.
    pub sasl_mechanism: Option<String>,
    pub sasl_username: Option<String>,
    pub sasl_password: Option<String>,
}

/// The SASL password is never shown.
impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("topic_prefix", &self.topic_prefix)
            .field("partitions", &self.partitions)
            .field("replication_factor", &self.replication_factor)
            .field("message_timeout_ms", &self.message_timeout_ms)
            .field("fetch_wait_max_ms", &self.fetch_wait_max_ms)
            .field("linger_ms", &self.linger_ms)
            .field(
                "dead_letter_retention_days",
                &self.dead_letter_retention_days,
            )
            .field("security_protocol", &self.security_protocol)
            .field("ssl_ca_location", &self.ssl_ca_location)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("sasl_username", &self.sasl_username)
            .field(
                "sasl_password",
                &self.sasl_password.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            topic_prefix: String::new(),
            partitions: 6,
            replication_factor: 1,
            message_timeout_ms: 60_000,
            fetch_wait_max_ms: 10,
            linger_ms: 10,
            dead_letter_retention_days: 30,
            security_protocol: "plaintext".into(),
            ssl_ca_location: None,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
        }
    }
}

impl KafkaConfig {
    #[must_use]
    pub fn topics(&self) -> Topics {
        Topics::with_prefix(&self.topic_prefix)
    }
}

/// The ledger's topic names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub device_events: String,
    pub rollout_events: String,
    pub device_commands: String,
    pub access_events: String,
    pub release_events: String,
    pub dead_letters: String,
}

impl Topics {
    #[must_use]
    pub fn with_prefix(prefix: &str) -> Self {
        Topics {
            device_events: format!("{prefix}ota.device-events"),
            rollout_events: format!("{prefix}ota.rollout-events"),
            device_commands: format!("{prefix}ota.device-commands"),
            access_events: format!("{prefix}ota.access-events"),
            release_events: format!("{prefix}ota.release-events"),
            dead_letters: format!("{prefix}ota.dead-letters"),
        }
    }

    #[must_use]
    pub fn for_stream(&self, stream: Stream) -> &str {
        match stream {
            Stream::DeviceEvents => &self.device_events,
            Stream::RolloutEvents => &self.rollout_events,
            Stream::DeviceCommands => &self.device_commands,
            Stream::AccessEvents => &self.access_events,
            Stream::ReleaseEvents => &self.release_events,
        }
    }

    #[must_use]
    pub fn all(&self) -> [&str; 6] {
        [
            &self.device_events,
            &self.rollout_events,
            &self.device_commands,
            &self.access_events,
            &self.release_events,
            &self.dead_letters,
        ]
    }
}

/// `url` with the password of its user information replaced, for `Debug` and logs:
/// `postgres://app:secret@db/x` shows as `postgres://app:<redacted>@db/x`.
#[must_use]
pub fn redact_url(url: &str) -> String {
    // A password may also ride in the query (`?password=…`, as libpq and sqlx read it).
    if let Some((base, query)) = url.split_once('?') {
        let query: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=<redacted>"),
                _ => pair.to_owned(),
            })
            .collect();
        return format!("{}?{}", redact_url(base), query.join("&"));
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The user information ends at the last '@' before the path.
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    match rest[..at].split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:<redacted>@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    pub url: String,
    /// The PostgreSQL schema of the projections and their offsets.
    pub schema: String,
    pub max_connections: u32,
}

/// `Debug` for settings whose `url` may carry a password: the URL redacted, the other fields
/// as they are.
macro_rules! debug_with_redacted_url {
    ($settings:ident { $($field:ident),* }) => {
        impl std::fmt::Debug for $settings {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($settings))
                    .field("url", &$crate::config::redact_url(&self.url))
                    $(.field(stringify!($field), &self.$field))*
                    .finish()
            }
        }
    };
}

debug_with_redacted_url!(DatabaseConfig {
    schema,
    max_connections
});

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: "postgres://postgres@127.0.0.1:5432/postgres".into(),
            schema: "otaledger".into(),
            max_connections: 16,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: String,
    /// Where `otaledger run <component>` serves `/metrics` and `/healthz` for a component other
    /// than the API (which serves them on `listen`); empty: not served.
    pub metrics_listen: String,
    /// A device is offline when nothing was recorded from it for this long.
    pub offline_after_s: u64,
    /// PEM files of the API's certificate (chain) and private key: with both, the API serves
    /// HTTPS only (ADR 0028); empty: plain HTTP.
    pub tls_cert: String,
    pub tls_key: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:8080".into(),
            metrics_listen: String::new(),
            offline_after_s: 300,
            tls_cert: String::new(),
            tls_key: String::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProjectorConfig {
    pub batch_max: usize,
    pub batch_wait_ms: u64,
    /// While batches arrive full (catching up), projections that fold (the fleet view, the
    /// device history) write up to this many events ...
    pub fold_max_events: usize,
    /// ... or this many rows ...
    pub fold_max_rows: usize,
    /// ... or this long's worth in one transaction ...
    pub fold_max_wait_ms: u64,
    /// ... and only while the events read are older than this (fresh events commit at once).
    pub fold_when_behind_ms: u64,
    /// Far behind (the events read are older than `deep_fold_when_behind_ms`), the windows
    /// grow to these limits, so that each device's row absorbs more of the backlog per write.
    /// 0 events: no deep windows.
    pub deep_fold_max_events: usize,
    pub deep_fold_max_rows: usize,
    pub deep_fold_max_wait_ms: u64,
    pub deep_fold_when_behind_ms: u64,
    /// How often ownership is rechecked: the failover time after an instance dies.
    pub rebalance_ms: u64,
    /// Unique per instance; host name and process id when empty.
    pub member: String,
}

impl Default for ProjectorConfig {
    fn default() -> Self {
        ProjectorConfig {
            batch_max: 5000,
            batch_wait_ms: 20,
            fold_max_events: 100_000,
            fold_max_rows: 50_000,
            fold_max_wait_ms: 1000,
            fold_when_behind_ms: 1000,
            deep_fold_max_events: 5_000_000,
            deep_fold_max_rows: 250_000,
            deep_fold_max_wait_ms: 10_000,
            deep_fold_when_behind_ms: 5000,
            rebalance_ms: 2000,
            member: String::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SagaConfig {
    /// How often every rollout gets the clock input (timeouts, retries, scheduled starts).
    pub tick_ms: u64,
    /// How often running rollouts look for devices that joined the fleet.
    pub join_every_ms: u64,
    /// How long a partition must be quiet before the saga's fold of it counts as complete.
    pub settle_ms: u64,
}

impl Default for SagaConfig {
    fn default() -> Self {
        SagaConfig {
            tick_ms: 200,
            join_every_ms: 2000,
            settle_ms: 500,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DispatcherConfig {
    /// Delivery attempts per gateway (AMQP) command before it is given up and dead-lettered;
    /// an MQTT broker that is down is waited for instead.
    pub attempts: i32,
    /// Backoff before the second attempt; doubled after each.
    pub backoff_ms: u64,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        DispatcherConfig {
            attempts: 3,
            backoff_ms: 200,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub database: DatabaseConfig,
    pub mqtt: MqttConfig,
    pub amqp: AmqpConfig,
    pub http: HttpConfig,
    pub projector: ProjectorConfig,
    pub saga: SagaConfig,
    pub dispatcher: DispatcherConfig,
    pub oidc: OidcConfig,
    pub admission: AdmissionConfig,
    pub artifacts: ArtifactsConfig,
    pub ingest: IngestConfig,
}

/// What the bridges hold and admit (ADR 0040): a budget of bytes and messages read but not yet
/// acknowledged by Kafka, per bridge, and a rate per device.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Payload bytes a bridge holds between reading a message and Kafka's acknowledgement. Over
    /// it, QoS 0 messages are dropped (and counted), and a QoS 1 message or an AMQP delivery
    /// waits, unread, with the broker.
    pub budget_bytes: u64,
    /// Messages the MQTT bridge holds so (kept below the MQTT client's request queue of 10,000,
    /// which the acknowledgements of held messages go through).
    pub budget_messages: u32,
    /// Messages a second one device may send on average; 0: no limit.
    pub device_rate_per_s: f64,
    /// Messages one device may send at once, above its rate.
    pub device_burst: u32,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            budget_bytes: 32 * 1024 * 1024,
            budget_messages: 5_000,
            device_rate_per_s: 10.0,
            device_burst: 30,
        }
    }
}

/// The artifact store (ADR 0037): the local filesystem, or an S3-compatible bucket when
/// `s3_bucket` is set.
#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ArtifactsConfig {
    /// The directory of the local store; empty: `artifacts/` in the state directory
    /// (`$OTALEDGER_STATE_DIR`, else `~/.cache/otaledger`). Every API instance must see the same
    /// one.
    pub dir: String,
    /// The largest artifact an upload may store, in bytes.
    pub max_bytes: u64,
    /// An S3-compatible bucket instead of the directory (empty: the directory).
    pub s3_bucket: String,
    /// The S3 endpoint (empty: AWS's for the region), e.g. `http://127.0.0.1:9000`.
    pub s3_endpoint: String,
    pub s3_region: String,
    /// A prefix for every key in the bucket (e.g. `otaledger/`).
    pub s3_prefix: String,
    /// Empty: the usual AWS sources (environment, instance profile).
    pub s3_access_key_id: String,
    pub s3_secret_access_key: Option<String>,
    /// Allows an `http://` endpoint (a local S3-compatible server); off, only HTTPS.
    pub s3_allow_http: bool,
}

impl std::fmt::Debug for ArtifactsConfig {
    /// The secret key is never shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactsConfig")
            .field("dir", &self.dir)
            .field("max_bytes", &self.max_bytes)
            .field("s3_bucket", &self.s3_bucket)
            .field("s3_endpoint", &self.s3_endpoint)
            .field("s3_region", &self.s3_region)
            .field("s3_prefix", &self.s3_prefix)
            .field("s3_access_key_id", &self.s3_access_key_id)
            .field(
                "s3_secret_access_key",
                &self.s3_secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("s3_allow_http", &self.s3_allow_http)
            .finish()
    }
}

impl Default for ArtifactsConfig {
    fn default() -> Self {
        ArtifactsConfig {
            dir: String::new(),
            max_bytes: 4 << 30,
            s3_bucket: String::new(),
            s3_endpoint: String::new(),
            s3_region: "us-east-1".into(),
            s3_prefix: String::new(),
            s3_access_key_id: String::new(),
            s3_secret_access_key: None,
            s3_allow_http: false,
        }
    }
}

impl ArtifactsConfig {
    /// The store's directory, with the default resolved.
    #[must_use]
    pub fn dir(&self) -> std::path::PathBuf {
        if !self.dir.is_empty() {
            return self.dir.clone().into();
        }
        let state = std::env::var_os("OTALEDGER_STATE_DIR")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .map(|h| std::path::PathBuf::from(h).join(".cache/otaledger"))
            })
            .unwrap_or_else(|| ".".into());
        state.join("artifacts")
    }
}

/// Devices that were not provisioned asking to be admitted (ADR 0032). Off by default: the
/// two routes it opens take requests from anyone.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdmissionConfig {
    /// Record requests of unprovisioned devices as pending, for an admin to accept or reject.
    pub pending: bool,
    /// Most requests waiting at once; past it new ones are refused (503) until some are decided.
    pub max_pending: i64,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            pending: false,
            max_pending: 10_000,
        }
    }
}

/// OpenID Connect bearer tokens (JWTs) accepted beside otaledger's own API tokens (ADR 0030):
/// off while `issuer` is empty.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OidcConfig {
    /// The `iss` a token must carry, e.g. `https://login.example.com/realms/ops`.
    pub issuer: String,
    /// The `aud` a token must carry (one of its audiences), e.g. `otaledger`.
    pub audience: String,
    /// The issuer's public keys as a JWKS document (its `jwks_uri`, saved); read again when the
    /// file changes, so keys rotate without a restart. Either this or `jwks_url`.
    pub jwks_file: String,
    /// The issuer's `jwks_uri` (https:// or http://), fetched at start, every `jwks_refresh_s`
    /// and when a token names a key the set lacks (at most every ten seconds).
    pub jwks_url: String,
    /// A PEM file of the CA the `jwks_url` server's certificate must chain to; empty: the
    /// system's roots.
    pub jwks_ca: String,
    /// Seconds between fetches of `jwks_url`.
    pub jwks_refresh_s: u64,
    /// The claim holding the role: viewer, operator, approver or admin.
    pub role_claim: String,
}

impl Default for OidcConfig {
    fn default() -> Self {
        OidcConfig {
            issuer: String::new(),
            audience: String::new(),
            jwks_file: String::new(),
            jwks_url: String::new(),
            jwks_ca: String::new(),
            jwks_refresh_s: 300,
            role_claim: "otaledger_role".into(),
        }
    }
}

/// An environment variable that overrides one setting of the file.
pub struct EnvOverride {
    pub var: &'static str,
    /// The setting it overrides, as `section.key`.
    pub setting: &'static str,
    get: fn(&Config) -> String,
    /// `Err` names what the value should have been.
    set: fn(&mut Config, String) -> Result<(), &'static str>,
}

/// How a text setting reads from and shows as an environment variable: an optional one is
/// unset when empty.
trait EnvText {
    fn shown(&self) -> String;
    fn from_env(v: String) -> Self;
}

impl EnvText for String {
    fn shown(&self) -> String {
        self.clone()
    }
    fn from_env(v: String) -> Self {
        v
    }
}

impl EnvText for Option<String> {
    fn shown(&self) -> String {
        self.clone().unwrap_or_default()
    }
    fn from_env(v: String) -> Self {
        (!v.is_empty()).then_some(v)
    }
}

/// A text setting (a `String`, or an `Option<String>` that empty unsets).
macro_rules! text {
    ($var:literal, $section:ident . $key:ident) => {
        EnvOverride {
            var: $var,
            setting: concat!(stringify!($section), ".", stringify!($key)),
            get: |c| EnvText::shown(&c.$section.$key),
            set: |c, v| {
                c.$section.$key = EnvText::from_env(v);
                Ok(())
            },
        }
    };
}

/// A numeric setting; `$what` names it in the error.
macro_rules! number {
    ($var:literal, $section:ident . $key:ident, $what:literal) => {
        EnvOverride {
            var: $var,
            setting: concat!(stringify!($section), ".", stringify!($key)),
            get: |c| c.$section.$key.to_string(),
            set: |c, v| {
                c.$section.$key = v.parse().map_err(|_| $what)?;
                Ok(())
            },
        }
    };
}

/// The environment variables that override the file, and what they set.
pub const ENV_OVERRIDES: &[EnvOverride] = &[
    text!("OTALEDGER_KAFKA_BROKERS", kafka.brokers),
    text!("OTALEDGER_TOPIC_PREFIX", kafka.topic_prefix),
    text!("OTALEDGER_KAFKA_SECURITY_PROTOCOL", kafka.security_protocol),
    text!("OTALEDGER_KAFKA_SSL_CA_LOCATION", kafka.ssl_ca_location),
    text!("OTALEDGER_KAFKA_SASL_MECHANISM", kafka.sasl_mechanism),
    text!("OTALEDGER_KAFKA_SASL_USERNAME", kafka.sasl_username),
    text!("OTALEDGER_KAFKA_SASL_PASSWORD", kafka.sasl_password),
    number!("OTALEDGER_KAFKA_PARTITIONS", kafka.partitions, "number"),
    number!(
        "OTALEDGER_KAFKA_MESSAGE_TIMEOUT_MS",
        kafka.message_timeout_ms,
        "number of milliseconds"
    ),
    number!(
        "OTALEDGER_KAFKA_FETCH_WAIT_MAX_MS",
        kafka.fetch_wait_max_ms,
        "number of milliseconds"
    ),
    number!(
        "OTALEDGER_KAFKA_LINGER_MS",
        kafka.linger_ms,
        "number of milliseconds"
    ),
    number!(
        "OTALEDGER_DEAD_LETTER_RETENTION_DAYS",
        kafka.dead_letter_retention_days,
        "number of days"
    ),
    text!("OTALEDGER_DATABASE_URL", database.url),
    text!("OTALEDGER_DB_SCHEMA", database.schema),
    text!("OTALEDGER_MQTT_HOST", mqtt.host),
    number!("OTALEDGER_MQTT_PORT", mqtt.port, "port"),
    text!("OTALEDGER_MQTT_CLIENT_ID", mqtt.client_id),
    text!("OTALEDGER_MQTT_TOPIC_ROOT", mqtt.topic_root),
    text!("OTALEDGER_MQTT_USERNAME", mqtt.username),
    text!("OTALEDGER_MQTT_PASSWORD", mqtt.password),
    text!("OTALEDGER_MQTT_ADMIN_USERNAME", mqtt.admin_username),
    text!("OTALEDGER_MQTT_ADMIN_PASSWORD", mqtt.admin_password),
    text!("OTALEDGER_MQTT_TLS_CA", mqtt.tls_ca),
    text!("OTALEDGER_AMQP_URL", amqp.url),
    text!("OTALEDGER_AMQP_QUEUE", amqp.reports_queue),
    text!("OTALEDGER_AMQP_EXCHANGE", amqp.commands_exchange),
    text!("OTALEDGER_AMQP_ADMIN_URL", amqp.admin_url),
    text!("OTALEDGER_AMQP_TLS_CA", amqp.tls_ca),
    text!("OTALEDGER_HTTP_LISTEN", http.listen),
    text!("OTALEDGER_METRICS_LISTEN", http.metrics_listen),
    text!("OTALEDGER_HTTP_TLS_CERT", http.tls_cert),
    text!("OTALEDGER_HTTP_TLS_KEY", http.tls_key),
    text!("OTALEDGER_PROJECTOR_MEMBER", projector.member),
    text!("OTALEDGER_OIDC_ISSUER", oidc.issuer),
    text!("OTALEDGER_OIDC_AUDIENCE", oidc.audience),
    text!("OTALEDGER_OIDC_JWKS_FILE", oidc.jwks_file),
    text!("OTALEDGER_OIDC_JWKS_URL", oidc.jwks_url),
    text!("OTALEDGER_OIDC_JWKS_CA", oidc.jwks_ca),
    text!("OTALEDGER_OIDC_ROLE_CLAIM", oidc.role_claim),
    number!(
        "OTALEDGER_ADMISSION_PENDING",
        admission.pending,
        "true or false"
    ),
    number!("OTALEDGER_REBALANCE_MS", projector.rebalance_ms, "number"),
    number!(
        "OTALEDGER_INGEST_BUDGET_BYTES",
        ingest.budget_bytes,
        "number of bytes"
    ),
    number!(
        "OTALEDGER_INGEST_BUDGET_MESSAGES",
        ingest.budget_messages,
        "number of messages"
    ),
    number!(
        "OTALEDGER_INGEST_DEVICE_RATE_PER_S",
        ingest.device_rate_per_s,
        "number of messages a second"
    ),
    number!(
        "OTALEDGER_INGEST_DEVICE_BURST",
        ingest.device_burst,
        "number of messages"
    ),
    text!("OTALEDGER_ARTIFACTS_DIR", artifacts.dir),
    number!(
        "OTALEDGER_ARTIFACTS_MAX_BYTES",
        artifacts.max_bytes,
        "number of bytes"
    ),
    text!("OTALEDGER_ARTIFACTS_S3_BUCKET", artifacts.s3_bucket),
    text!("OTALEDGER_ARTIFACTS_S3_ENDPOINT", artifacts.s3_endpoint),
    text!("OTALEDGER_ARTIFACTS_S3_REGION", artifacts.s3_region),
    text!("OTALEDGER_ARTIFACTS_S3_PREFIX", artifacts.s3_prefix),
    text!(
        "OTALEDGER_ARTIFACTS_S3_ACCESS_KEY_ID",
        artifacts.s3_access_key_id
    ),
    text!(
        "OTALEDGER_ARTIFACTS_S3_SECRET_ACCESS_KEY",
        artifacts.s3_secret_access_key
    ),
    number!(
        "OTALEDGER_ARTIFACTS_S3_ALLOW_HTTP",
        artifacts.s3_allow_http,
        "true or false"
    ),
];

impl Config {
    /// Reads the file (if given) and applies environment overrides.
    pub fn load(path: Option<&Path>) -> Result<Self, String> {
        let mut cfg: Config = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| format!("reading {}: {e}", p.display()))?;
                toml::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?
            }
            None => Config::default(),
        };
        cfg.apply_env(|k| std::env::var(k).ok())?;
        Ok(cfg)
    }

    /// The environment that gives another `otaledger` process this configuration's endpoints
    /// and namespace (every variable of [`ENV_OVERRIDES`]; the other settings are the file's).
    #[must_use]
    pub fn env(&self) -> Vec<(&'static str, String)> {
        ENV_OVERRIDES
            .iter()
            .map(|o| (o.var, (o.get)(self)))
            .collect()
    }

    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), String> {
        for o in ENV_OVERRIDES {
            let Some(v) = get(o.var) else { continue };
            let shown = format!("{v:?}");
            (o.set)(self, v).map_err(|what| format!("{}={shown} is not a valid {what}", o.var))?;
        }
        Ok(())
    }

    #[must_use]
    pub fn offline_after(&self) -> Duration {
        Duration::from_secs(self.http.offline_after_s)
    }

    #[must_use]
    pub fn member(&self) -> String {
        if !self.projector.member.is_empty() {
            return self.projector.member.clone();
        }
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "host".into());
        format!("{host}-{}", std::process::id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_passwords_in_debug() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/x"),
            "postgres://app:<redacted>@db:5432/x"
        );
        assert_eq!(
            redact_url("amqp://gw:p@ss:w@rd@mq/%2f"),
            "amqp://gw:<redacted>@mq/%2f"
        );
        assert_eq!(
            redact_url("postgres://app:a@db/x?sslmode=require&password=b&x=password"),
            "postgres://app:<redacted>@db/x?sslmode=require&password=<redacted>&x=password"
        );
        for unchanged in [
            "postgres://postgres@127.0.0.1:5432/postgres",
            "postgres://db/x?sslmode=verify-full&sslrootcert=/ca.pem",
            "amqp://mq/%2f",
            "not a url",
            "postgres://host/db@x",
        ] {
            assert_eq!(redact_url(unchanged), unchanged);
        }
        let mut cfg = Config::default();
        cfg.database.url = "postgres://app:s3cret-db@db/x".into();
        cfg.amqp.url = "amqp://gw:s3cret-amqp@mq/%2f".into();
        cfg.mqtt.password = Some("s3cret-mqtt".into());
        cfg.mqtt.admin_password = Some("s3cret-admin".into());
        cfg.amqp.admin_url = Some("http://admin:s3cret-mgmt@mq:15672".into());
        cfg.kafka.sasl_password = Some("s3cret-sasl".into());
        cfg.database.url = "postgres://db/x?user=app&password=s3cret-query&sslmode=require".into();
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn env_round_trips_through_apply_env() {
        let mut cfg = Config::default();
        cfg.kafka.topic_prefix = "p.".into();
        cfg.database.schema = "s".into();
        cfg.mqtt.port = 1999;
        cfg.http.metrics_listen = "127.0.0.1:1".into();
        cfg.projector.rebalance_ms = 77;
        let env = cfg.env();
        let mut other = Config::default();
        other
            .apply_env(|k| env.iter().find(|(v, _)| *v == k).map(|(_, x)| x.clone()))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(other.kafka.topic_prefix, "p.");
        assert_eq!(other.database.schema, "s");
        assert_eq!(other.mqtt.port, 1999);
        assert_eq!(other.http.metrics_listen, "127.0.0.1:1");
        assert_eq!(other.projector.rebalance_ms, 77);
    }

    #[test]
    fn file_then_environment() {
        let mut cfg: Config = toml::from_str(
            "[kafka]\nbrokers = \"k:9092\"\ntopic_prefix = \"a.\"\n[database]\nschema = \"fleet\"\n",
        )
        .unwrap();
        assert_eq!(cfg.kafka.brokers, "k:9092");
        assert_eq!(cfg.mqtt.port, 1883);
        cfg.apply_env(|k| match k {
            "OTALEDGER_TOPIC_PREFIX" => Some("b.".into()),
            "OTALEDGER_MQTT_PORT" => Some("1884".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(cfg.kafka.topic_prefix, "b.");
        assert_eq!(cfg.database.schema, "fleet");
        assert_eq!(cfg.mqtt.port, 1884);
        let bad = cfg.apply_env(|k| (k == "OTALEDGER_MQTT_PORT").then(|| "x".into()));
        assert!(bad.unwrap_err().contains("OTALEDGER_MQTT_PORT"));
        assert!(
            toml::from_str::<Config>("[kafka]\nbrokerz = 1\n").is_err(),
            "unknown keys are errors"
        );
    }
}

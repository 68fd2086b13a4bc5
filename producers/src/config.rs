//! Connection settings shared by every component.

use otaledger_domain::Stream;
use serde::Deserialize;

/// Kafka settings. `topic_prefix` lets several ledgers (tests, tenants) share one cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    pub brokers: String,
    pub topic_prefix: String,
    /// Partitions of each ledger topic when otaledger creates it.
    pub partitions: i32,
    pub replication_factor: i32,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            topic_prefix: String::new(),
            partitions: 6,
            replication_factor: 1,
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
    pub dead_letters: String,
}

impl Topics {
    #[must_use]
    pub fn with_prefix(prefix: &str) -> Self {
        Topics {
            device_events: format!("{prefix}ota.device-events"),
            rollout_events: format!("{prefix}ota.rollout-events"),
            device_commands: format!("{prefix}ota.device-commands"),
            dead_letters: format!("{prefix}ota.dead-letters"),
        }
    }

    #[must_use]
    pub fn for_stream(&self, stream: Stream) -> &str {
        match stream {
            Stream::DeviceEvents => &self.device_events,
            Stream::RolloutEvents => &self.rollout_events,
            Stream::DeviceCommands => &self.device_commands,
        }
    }

    #[must_use]
    pub fn all(&self) -> [&str; 4] {
        [
            &self.device_events,
            &self.rollout_events,
            &self.device_commands,
            &self.dead_letters,
        ]
    }
}

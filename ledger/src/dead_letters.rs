//! `ota.dead-letters`: what could not be decoded or applied, kept byte for byte with headers
//! naming where it came from and why, so nothing is lost and the pipeline never stops.

use rdkafka::message::{Header, OwnedHeaders};

use crate::kafka::{EventProducer, Pending};
use crate::metrics;
use crate::Result;

pub use otaledger_domain::rejection::Rejection;

/// Where a rejected message came from.
#[derive(Debug, Clone)]
pub struct Origin<'a> {
    /// `mqtt`, `amqp`, `http` or `kafka`.
    pub source: &'static str,
    /// MQTT topic, AMQP queue, HTTP path or Kafka topic.
    pub channel: &'a str,
    pub partition: Option<i32>,
    pub offset: Option<i64>,
}

/// Enqueues a rejected message on the dead-letter topic and counts it.
pub async fn dead_letter(
    producer: &EventProducer,
    origin: &Origin<'_>,
    key: &[u8],
    payload: &[u8],
    rejection: &Rejection,
) -> Result<Pending> {
    send(producer, None, origin, key, payload, rejection).await
}

/// Enqueues a record of the ledger that `consumer` could not decode or apply (header
/// `dlq-consumer`) on the dead-letter topic and counts it.
pub async fn dead_letter_for(
    producer: &EventProducer,
    consumer: &str,
    origin: &Origin<'_>,
    key: &[u8],
    payload: &[u8],
    rejection: &Rejection,
) -> Result<Pending> {
    send(producer, Some(consumer), origin, key, payload, rejection).await
}

async fn send(
    producer: &EventProducer,
    consumer: Option<&str>,
    origin: &Origin<'_>,
    key: &[u8],
    payload: &[u8],
    rejection: &Rejection,
) -> Result<Pending> {
    let partition = origin.partition.map(|p| p.to_string());
    let offset = origin.offset.map(|o| o.to_string());
    let mut headers = OwnedHeaders::new_with_capacity(7)
        .insert(Header {
            key: "dlq-source",
            value: Some(origin.source),
        })
        .insert(Header {
            key: "dlq-channel",
            value: Some(origin.channel),
        })
        .insert(Header {
            key: "dlq-reason",
            value: Some(rejection.reason),
        })
        .insert(Header {
            key: "dlq-error",
            value: Some(rejection.detail.as_str()),
        });
    if let Some(p) = &partition {
        headers = headers.insert(Header {
            key: "dlq-partition",
            value: Some(p.as_str()),
        });
    }
    if let Some(o) = &offset {
        headers = headers.insert(Header {
            key: "dlq-offset",
            value: Some(o.as_str()),
        });
    }
    if let Some(c) = consumer {
        headers = headers.insert(Header {
            key: "dlq-consumer",
            value: Some(c),
        });
    }
    tracing::warn!(source = origin.source, channel = origin.channel, consumer,
        reason = rejection.reason, detail = %rejection.detail, "dead-lettered");
    metrics::dead_lettered(origin.source, rejection.reason);
    let topic = producer.topics().dead_letters.clone();
    producer.send_raw(&topic, key, payload, headers).await
}

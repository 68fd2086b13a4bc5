//! `ota.dead-letters`: what could not be decoded or applied, kept byte for byte with headers
//! naming where it came from and why, so nothing is lost and the pipeline never stops.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};

use crate::config::KafkaConfig;
use crate::kafka::{EventProducer, Pending};
use crate::metrics;
use crate::reader::{Body, Decode, LedgerReader, ReaderConfig};
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

/// Dead letters by who refused them and why: (the consumer that could not decode or apply a
/// record of the ledger, or else the source an entrance refused a message from, reason) →
/// records. A record of the ledger dead-lettered more than once (its consumer stopped before
/// the offsets that skip it committed, or a rebuild read it again) counts once.
#[must_use]
pub fn tally<'a>(
    dead_letters: impl IntoIterator<Item = &'a [(String, String)]>,
) -> BTreeMap<(String, String), usize> {
    let mut out: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for headers in dead_letters {
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        let who = header("dlq-consumer")
            .or(header("dlq-source"))
            .unwrap_or("unknown");
        let reason = header("dlq-reason").unwrap_or("unknown");
        if let (Some(p), Some(o)) = (header("dlq-partition"), header("dlq-offset")) {
            if !seen.insert((who, reason, header("dlq-channel"), p, o)) {
                continue;
            }
        }
        *out.entry((who.to_owned(), reason.to_owned())).or_default() += 1;
    }
    out
}

/// [`tally`] of the whole dead-letter topic, read to its end.
pub async fn read_tally(kafka: &KafkaConfig) -> Result<BTreeMap<(String, String), usize>> {
    let topic = kafka.topics().dead_letters;
    let reader = LedgerReader::new(
        kafka,
        ReaderConfig::tool("dead-letters", vec![topic], Decode::Raw),
    )?;
    reader.assign_to_watermarks(|_, _| 0).await?;
    let mut headers = Vec::new();
    reader
        .read_to_end(Duration::from_secs(1), |batch| {
            headers.extend(batch.records.into_iter().filter_map(|r| match r.body {
                Body::Raw(raw) => Some(raw.headers),
                Body::Event { .. } | Body::Undecodable { .. } => None,
            }));
            Ok::<(), crate::Error>(())
        })
        .await?;
    Ok(tally(headers.iter().map(Vec::as_slice)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn dead_letters_are_tallied_by_consumer_or_source_and_reason_each_record_once() {
        let refused = |consumer: &str, offset: &str| {
            headers(&[
                ("dlq-source", "kafka"),
                ("dlq-channel", "ota.device-events"),
                ("dlq-reason", "unappliable"),
                ("dlq-partition", "2"),
                ("dlq-offset", offset),
                ("dlq-consumer", consumer),
            ])
        };
        let mqtt = headers(&[
            ("dlq-source", "mqtt"),
            ("dlq-channel", "devices/d-1/report"),
            ("dlq-reason", "invalid_json"),
        ]);
        let all = [
            refused("projector", "7"),
            refused("projector", "7"),
            refused("projector", "9"),
            refused("history", "7"),
            mqtt.clone(),
            mqtt,
            headers(&[("dlq-source", "kafka"), ("dlq-reason", "undecodable")]),
        ];
        let t = tally(all.iter().map(Vec::as_slice));
        let count = |who: &str, reason: &str| t.get(&(who.to_owned(), reason.to_owned())).copied();
        assert_eq!(
            count("projector", "unappliable"),
            Some(2),
            "offset 7 twice counts once"
        );
        assert_eq!(count("history", "unappliable"), Some(1));
        assert_eq!(
            count("mqtt", "invalid_json"),
            Some(2),
            "no position: each counts"
        );
        assert_eq!(
            count("kafka", "undecodable"),
            Some(1),
            "no consumer: the source"
        );
        assert_eq!(t.len(), 4);
    }
}

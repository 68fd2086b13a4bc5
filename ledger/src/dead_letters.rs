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

/// The most bytes of a rejected message kept in its dead letter. The entrances accept up to 1
/// MiB (MQTT) and 8 MiB (AMQP) before judging a message, while a Kafka record must stay under
/// [`crate::kafka::MAX_RECORD_BYTES`]: a dead letter that could not be written would stop its
/// bridge and bring the message back for ever. The rest is cut, and the headers say so.
pub const MAX_KEPT_BYTES: usize = 256 * 1024;
/// The most bytes of a key or of the error text kept.
const MAX_KEPT_TEXT: usize = 4 * 1024;

/// The first `max` bytes of `text`, cut at a character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
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
    let original = payload.len().to_string();
    let truncated = payload.len() > MAX_KEPT_BYTES;
    let payload = &payload[..payload.len().min(MAX_KEPT_BYTES)];
    let key = &key[..key.len().min(MAX_KEPT_TEXT)];
    let detail = cut(&rejection.detail, MAX_KEPT_TEXT);
    let channel = cut(origin.channel, MAX_KEPT_TEXT);
    let mut headers = OwnedHeaders::new_with_capacity(9)
        .insert(Header {
            key: "dlq-source",
            value: Some(origin.source),
        })
        .insert(Header {
            key: "dlq-channel",
            value: Some(channel),
        })
        .insert(Header {
            key: "dlq-reason",
            value: Some(rejection.reason),
        })
        .insert(Header {
            key: "dlq-error",
            value: Some(detail),
        });
    if truncated {
        // The payload holds the first MAX_KEPT_BYTES; this is how long the message was.
        headers = headers.insert(Header {
            key: "dlq-truncated-from",
            value: Some(original.as_str()),
        });
    }
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
    tracing::warn!(
        source = origin.source,
        channel,
        consumer,
        reason = rejection.reason,
        detail,
        truncated,
        "dead-lettered"
    );
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

/// A dead letter as read back from its topic.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    pub key: Vec<u8>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl DeadLetter {
    #[must_use]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Who refused it: the consumer that could not apply a record of the ledger, or else the
    /// entrance (`mqtt`, `amqp`, `http`) that refused a message.
    #[must_use]
    pub fn who(&self) -> &str {
        self.header("dlq-consumer")
            .or(self.header("dlq-source"))
            .unwrap_or("unknown")
    }

    #[must_use]
    pub fn reason(&self) -> &str {
        self.header("dlq-reason").unwrap_or("unknown")
    }
}

/// Every dead letter, read to the topic's end, in the order of each partition.
pub async fn read_all(kafka: &KafkaConfig) -> Result<Vec<DeadLetter>> {
    let topic = kafka.topics().dead_letters;
    let reader = LedgerReader::new(
        kafka,
        ReaderConfig::tool("dead-letters", vec![topic], Decode::Raw),
    )?;
    reader.assign_to_watermarks(|_, _| 0).await?;
    let mut out = Vec::new();
    reader
        .read_to_end(Duration::from_secs(1), |batch| {
            out.extend(batch.records.into_iter().filter_map(|r| match r.body {
                Body::Raw(raw) => Some(DeadLetter {
                    partition: r.position.partition,
                    offset: r.position.offset,
                    key: raw.key,
                    payload: raw.payload,
                    headers: raw.headers,
                }),
                Body::Event { .. } | Body::Undecodable { .. } => None,
            }));
            Ok::<(), crate::Error>(())
        })
        .await?;
    // tansu may repeat records at batch edges (ADR 0005): each position once.
    out.sort_by_key(|d| (d.partition, d.offset));
    out.dedup_by_key(|d| (d.partition, d.offset));
    Ok(out)
}

/// [`tally`] of the whole dead-letter topic, read to its end.
pub async fn read_tally(kafka: &KafkaConfig) -> Result<BTreeMap<(String, String), usize>> {
    let all = read_all(kafka).await?;
    Ok(tally(all.iter().map(|d| d.headers.as_slice())))
}

/// The event a dead letter from an entrance becomes when it is read again by today's rules
/// (after a fix, or a limit raised), with an id derived from where the dead letter sits, so
/// re-driving it twice appends the same event; `Err` says why it is not re-driven. Never
/// re-driven: a refusal of authority (`unauthorized`: the entrance's check cannot be made
/// again here), a message kept only in part, a whole gateway batch that did not read (its
/// gateway cannot be checked again), and a record of the ledger a consumer could not apply (it
/// is still in the ledger: fix the cause and rebuild).
pub fn redrive(
    dead: &DeadLetter,
    mqtt: &crate::config::MqttConfig,
    topic: &str,
) -> std::result::Result<otaledger_domain::Event, String> {
    use otaledger_domain::device_json::{
        device_message_from_value, parse_device_message, MessageKind,
    };
    if let Some(consumer) = dead.header("dlq-consumer") {
        return Err(format!(
            "a record of the ledger {consumer} could not apply: it is still in the ledger; fix \
             the cause and run `otaledger rebuild`"
        ));
    }
    if dead.reason() == "unauthorized" {
        return Err("refused for want of authority: never re-driven".into());
    }
    if dead.header("dlq-truncated-from").is_some() {
        return Err("kept only in part".into());
    }
    let channel = dead.header("dlq-channel").unwrap_or_default();
    let trace = format!("dead-letter {}:{}", dead.partition, dead.offset);
    let still = |r: Rejection| format!("still refused: {}: {}", r.reason, r.detail);
    let event = match dead.header("dlq-source") {
        Some("mqtt") => {
            let (device, kind) = mqtt
                .route(channel)
                .and_then(|(d, k)| Some((d, MessageKind::from_name(k)?)))
                .ok_or_else(|| format!("topic {channel:?} names no device report"))?;
            parse_device_message(kind, device, &dead.payload, &trace).map_err(still)?
        }
        Some("http") => {
            let (device, kind) = channel
                .strip_prefix("/v1/devices/")
                .and_then(|rest| rest.split_once('/'))
                .and_then(|(d, what)| {
                    let kind = match what {
                        "heartbeats" => MessageKind::Heartbeat,
                        "registrations" => MessageKind::Register,
                        "install-reports" => MessageKind::Install,
                        _ => return None,
                    };
                    Some((d, kind))
                })
                .ok_or_else(|| format!("path {channel:?} names no device report"))?;
            parse_device_message(kind, device, &dead.payload, &trace).map_err(still)?
        }
        Some("amqp") if !dead.key.is_empty() => {
            let report: serde_json::Value = serde_json::from_slice(&dead.payload)
                .map_err(|e| format!("the kept report does not read: {e}"))?;
            let text = |k: &str| report[k].as_str().unwrap_or_default().to_owned();
            let (gateway, device) = (text("gateway_id"), text("device_id"));
            let kind = MessageKind::from_name(&text("kind"))
                .ok_or_else(|| format!("unknown report kind {:?}", text("kind")))?;
            let mut data = report["data"].clone();
            if let (MessageKind::Heartbeat | MessageKind::Register, Some(obj)) =
                (kind, data.as_object_mut())
            {
                obj.insert("gateway_id".into(), gateway.into());
            }
            device_message_from_value(kind, &device, &data, &trace).map_err(still)?
        }
        Some("amqp") => {
            return Err(
                "a whole gateway batch that did not read: its gateway cannot be checked again"
                    .into(),
            )
        }
        other => return Err(format!("from {other:?}, which has no re-drive")),
    };
    Ok(otaledger_domain::Event::new(
        otaledger_domain::ids::derived_event_id(&[
            "dead-letter",
            topic,
            &dead.partition.to_string(),
            &dead.offset.to_string(),
        ]),
        event.payload,
        event.meta.occurred_at,
        event.meta.recorded_at,
        event.meta.trace_id,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &[u8] =
        br#"{"firmware_version":"1.0.0","uptime_s":1,"cpu_pct":1,"mem_pct":1,"temperature_c":20}"#;

    fn letter(pairs: &[(&str, &str)], key: &str, payload: &[u8]) -> DeadLetter {
        DeadLetter {
            partition: 1,
            offset: 7,
            key: key.as_bytes().to_vec(),
            payload: payload.to_vec(),
            headers: headers(pairs),
        }
    }

    fn mqtt() -> crate::config::MqttConfig {
        crate::config::MqttConfig {
            topic_root: "devices".into(),
            ..crate::config::MqttConfig::default()
        }
    }

    #[test]
    fn entrance_dead_letters_are_read_again_with_ids_from_where_they_sit() {
        use otaledger_domain::Payload;
        let from_mqtt = letter(
            &[
                ("dlq-source", "mqtt"),
                ("dlq-channel", "devices/dev-1/heartbeat"),
                ("dlq-reason", "invalid_field"),
            ],
            "dev-1",
            GOOD,
        );
        let first =
            redrive(&from_mqtt, &mqtt(), "ota.dead-letters").unwrap_or_else(|e| panic!("{e}"));
        let again =
            redrive(&from_mqtt, &mqtt(), "ota.dead-letters").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(first.meta.event_id, again.meta.event_id);
        assert!(matches!(&first.payload, Payload::Heartbeat(h) if h.device_id == "dev-1"));
        let elsewhere = DeadLetter {
            offset: 8,
            ..from_mqtt
        };
        let other =
            redrive(&elsewhere, &mqtt(), "ota.dead-letters").unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(first.meta.event_id, other.meta.event_id);

        let from_http = letter(
            &[
                ("dlq-source", "http"),
                ("dlq-channel", "/v1/devices/dev-2/heartbeats"),
                ("dlq-reason", "invalid_field"),
            ],
            "dev-2",
            GOOD,
        );
        let e = redrive(&from_http, &mqtt(), "t").unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(&e.payload, Payload::Heartbeat(h) if h.device_id == "dev-2"));

        let report = serde_json::json!({"gateway_id": "gw-1", "device_id": "dev-3",
            "kind": "heartbeat", "data": serde_json::from_slice::<serde_json::Value>(GOOD).unwrap_or_default()});
        let from_amqp = letter(
            &[("dlq-source", "amqp"), ("dlq-reason", "invalid_field")],
            "dev-3",
            report.to_string().as_bytes(),
        );
        let e = redrive(&from_amqp, &mqtt(), "t").unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(&e.payload, Payload::Heartbeat(h)
            if h.device_id == "dev-3" && h.gateway_id.as_deref() == Some("gw-1")));
    }

    #[test]
    fn what_cannot_be_checked_again_is_never_re_driven() {
        let refusals = [
            (
                letter(
                    &[
                        ("dlq-source", "mqtt"),
                        ("dlq-channel", "devices/d/heartbeat"),
                        ("dlq-reason", "unauthorized"),
                    ],
                    "d",
                    GOOD,
                ),
                "authority",
            ),
            (
                letter(
                    &[
                        ("dlq-source", "mqtt"),
                        ("dlq-channel", "devices/d/heartbeat"),
                        ("dlq-reason", "payload_too_large"),
                        ("dlq-truncated-from", "2000000"),
                    ],
                    "d",
                    GOOD,
                ),
                "in part",
            ),
            (
                letter(
                    &[
                        ("dlq-source", "kafka"),
                        ("dlq-consumer", "projector"),
                        ("dlq-reason", "unappliable"),
                    ],
                    "d",
                    GOOD,
                ),
                "rebuild",
            ),
            (
                letter(
                    &[("dlq-source", "amqp"), ("dlq-reason", "invalid_json")],
                    "",
                    b"{",
                ),
                "whole gateway batch",
            ),
            (
                letter(
                    &[
                        ("dlq-source", "mqtt"),
                        ("dlq-channel", "devices/d/heartbeat"),
                        ("dlq-reason", "invalid_json"),
                    ],
                    "d",
                    b"{not json",
                ),
                "still refused: invalid_json",
            ),
            (
                letter(
                    &[
                        ("dlq-source", "mqtt"),
                        ("dlq-channel", "elsewhere/d/heartbeat"),
                        ("dlq-reason", "unknown_topic"),
                    ],
                    "d",
                    GOOD,
                ),
                "names no device report",
            ),
        ];
        for (dead, why) in refusals {
            match redrive(&dead, &mqtt(), "t") {
                Ok(e) => panic!("{:?} was re-driven as {e:?}", dead.headers),
                Err(e) => assert!(e.contains(why), "{e}"),
            }
        }
    }

    #[test]
    fn text_is_cut_at_a_character_boundary() {
        assert_eq!(cut("abc", 3), "abc");
        assert_eq!(cut("abcd", 3), "abc");
        // 'é' is two bytes: a cut through it keeps the character before.
        assert_eq!(cut("aé", 2), "a");
        assert_eq!(cut("aé", 3), "aé");
    }

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

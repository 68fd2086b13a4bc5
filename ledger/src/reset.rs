//! Ledger reset detection (ADR 0023): at every assignment a consumer compares the positions it
//! stored in PostgreSQL with the start and end of each partition, and refuses to run on a ledger
//! that went backwards (the broker lost or recreated the topic while PostgreSQL kept the
//! projections) instead of dropping every new record below its stored offset as "already
//! applied".
//!
//! tansu answers ListOffsets(latest) with the base offset of the newest batch plus one, an
//! under-report of up to a batch (ADR 0005), so a stored position past the reported end is only
//! a suspicion: it is confirmed by reading the partition for the last record the consumer
//! applied. A position before the reported start means records it never applied are gone.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::TopicPartitionList;

use crate::config::KafkaConfig;
use crate::kafka::{client_config, resume_from};
use crate::metrics::REGISTRY;
use crate::{Error, KafkaContext, Result};

/// How long the confirming read waits for a further record before it concludes that the
/// partition ends before the last record the consumer applied.
const CONFIRM_IDLE: Duration = Duration::from_secs(5);
/// The confirming read never takes longer than this; past it the check fails as transient.
const CONFIRM_MAX: Duration = Duration::from_secs(60);

/// Where a stored next offset lies in a partition whose log runs from `start` to `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Within the log (or at its end): reading resumes there.
    Within,
    /// Before the log's start: records the consumer never applied are gone.
    BeforeStart,
    /// Past the log's end: the log has fewer records than the consumer applied.
    PastEnd,
}

/// The pure comparison: where `stored` (a next offset) lies in the log `start..end`.
#[must_use]
pub fn placement(stored: i64, start: i64, end: i64) -> Placement {
    if stored > end {
        Placement::PastEnd
    } else if stored < start {
        Placement::BeforeStart
    } else {
        Placement::Within
    }
}

/// The low and high watermarks of each of `partitions` of `topic`, as ListOffsets reports them
/// (on a blocking thread: librdkafka's call blocks).
pub async fn fetch_watermarks(
    kafka: &KafkaConfig,
    topic: &str,
    partitions: Vec<i32>,
) -> Result<BTreeMap<i32, (i64, i64)>> {
    let consumer: BaseConsumer = client_config(kafka)
        .create()
        .kafka("creating a metadata client")?;
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        partitions
            .into_iter()
            .map(|p| {
                consumer
                    .fetch_watermarks(&topic, p, Duration::from_secs(10))
                    .map(|marks| (p, marks))
                    .kafka("reading watermarks")
            })
            .collect()
    })
    .await
    .map_err(|e| Error::Other(format!("reading watermarks: {e}")))?
}

/// Refuses to go on when a stored next offset of `consumer` on `topic` (by partition) lies
/// outside its partition's log: [`Error::LedgerReset`] when the log is shorter than what was
/// applied, [`Error::LedgerTruncated`] when records not yet applied were deleted.
pub async fn check_positions(
    kafka: &KafkaConfig,
    consumer: &str,
    topic: &str,
    stored: &BTreeMap<i32, i64>,
) -> Result<()> {
    if stored.is_empty() {
        return Ok(());
    }
    let marks = fetch_watermarks(kafka, topic, stored.keys().copied().collect()).await?;
    for (&partition, &next) in stored {
        let Some(&(start, reported_end)) = marks.get(&partition) else {
            continue;
        };
        let failure = match placement(next, start, reported_end) {
            Placement::Within => continue,
            Placement::BeforeStart => Error::LedgerTruncated {
                consumer: consumer.to_owned(),
                topic: topic.to_owned(),
                partition,
                stored: next,
                start,
            },
            Placement::PastEnd => {
                let end = confirmed_end(kafka, topic, partition, next).await?;
                if next <= end {
                    continue;
                }
                Error::LedgerReset {
                    consumer: consumer.to_owned(),
                    topic: topic.to_owned(),
                    partition,
                    stored: next,
                    end,
                }
            }
        };
        REGISTRY
            .gauge(
                "otaledger_consumer_ledger_reset",
                "1 when a consumer refused to run because the ledger went backwards or lost \
                 records it had not applied (ADR 0023)",
                &[("consumer", consumer)],
            )
            .set(1);
        tracing::error!(consumer, topic, partition, error = %failure, "ledger reset detected");
        return Err(failure);
    }
    Ok(())
}

/// The end of `partition` as far as reading it shows, looking for the record before `next`
/// (the last one the consumer applied): `next` when it is there, otherwise one past the
/// highest offset read.
async fn confirmed_end(kafka: &KafkaConfig, topic: &str, partition: i32, next: i64) -> Result<i64> {
    let consumer: BaseConsumer = client_config(kafka)
        .set("group.id", "otaledger-reset-check")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "10")
        .create()
        .kafka("creating the reset check's reader")?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, resume_from(next - 1))
        .kafka("building the reset check's assignment")?;
    consumer
        .assign(&tpl)
        .kafka("assigning the reset check's partition")?;
    let wanted = next - 1;
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let mut last_record = Instant::now();
        let mut highest: i64 = -1;
        while last_record.elapsed() < CONFIRM_IDLE {
            if started.elapsed() > CONFIRM_MAX {
                return Err(Error::Other(format!(
                    "checking for a ledger reset: partition {partition} still delivers records \
                     after {CONFIRM_MAX:?} without reaching offset {wanted}"
                )));
            }
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    if m.offset() >= wanted {
                        return Ok(next);
                    }
                    highest = highest.max(m.offset());
                    last_record = Instant::now();
                }
                Some(Err(e)) => {
                    tracing::warn!(partition, error = %e, "kafka error while checking for a ledger reset");
                }
                None => {}
            }
        }
        Ok(highest + 1)
    })
    .await
    .map_err(|e| Error::Other(format!("checking for a ledger reset: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_position_is_placed_against_the_start_and_end_of_the_log() {
        assert_eq!(
            placement(0, 0, 0),
            Placement::Within,
            "nothing applied, empty log"
        );
        assert_eq!(placement(5, 0, 5), Placement::Within, "caught up");
        assert_eq!(placement(3, 0, 5), Placement::Within, "behind");
        assert_eq!(placement(5, 5, 9), Placement::Within, "at the start");
        assert_eq!(
            placement(6, 0, 5),
            Placement::PastEnd,
            "one more applied than the log holds"
        );
        assert_eq!(
            placement(30, 0, 0),
            Placement::PastEnd,
            "the log was recreated empty"
        );
        assert_eq!(
            placement(2, 5, 9),
            Placement::BeforeStart,
            "unapplied records deleted"
        );
    }

    #[test]
    fn the_errors_name_the_cause_and_the_fix() {
        let reset = Error::LedgerReset {
            consumer: "projector".into(),
            topic: "ota.device-events".into(),
            partition: 2,
            stored: 30,
            end: 5,
        }
        .to_string();
        assert!(
            reset.contains("fewer records than projector already applied"),
            "{reset}"
        );
        assert!(
            reset.contains("stored next offset 30 > end 5 on ota.device-events:2"),
            "{reset}"
        );
        assert!(reset.contains("`otaledger rebuild`"), "{reset}");
        assert!(
            reset.contains("refusing to skip records silently"),
            "{reset}"
        );
        let truncated = Error::LedgerTruncated {
            consumer: "saga".into(),
            topic: "t".into(),
            partition: 0,
            stored: 2,
            start: 5,
        }
        .to_string();
        assert!(
            truncated.contains("stored next offset 2 < start 5 on t:0"),
            "{truncated}"
        );
        assert!(!Error::Other(String::new()).is_ledger_reset());
    }
}

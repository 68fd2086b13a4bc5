//! Events a projection cannot apply (ADR 0021): PostgreSQL refuses a value they carry (a data
//! exception, an integrity violation). Such an event is no reason to stop: the runner applies
//! the refused batch again in halves under savepoints, down to the events at fault, dead-letters
//! exactly those with the consumer and the error, and commits the rest with the offsets past
//! them. An error that is not about the data (a lost connection, a pool timeout, I/O, a
//! serialization failure) still fails the runner, which the supervisor restarts.

use std::ops::Range;

use sqlx::{Connection, PgConnection};

use crate::dead_letters::{dead_letter_for, Origin, Rejection};
use crate::kafka::EventProducer;
use crate::runner::{Positioned, Projection};
use crate::{DbContext, Error, Result};

/// The `dlq-reason` of an event a projection cannot apply.
pub const REASON: &str = "unappliable";

/// SQLSTATE classes that are about the values written, not about the database: 22 (data
/// exception: a NUL in text, a timestamp out of range), 23 (integrity constraint violation) and
/// 54 (program limit exceeded: an index row or an array too large).
const DATA_CLASSES: [&str; 3] = ["22", "23", "54"];

/// Why `e` (or an error it was caused by) is about the data an event carries: its SQLSTATE, or
/// `encode` when the client could not encode a value. `None`: the database may be fine with the
/// data once it can be reached, so the transaction is to be retried, not its events left out.
#[must_use]
pub fn data_fault(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cause = Some(e);
    while let Some(c) = cause {
        match c.downcast_ref::<sqlx::Error>() {
            Some(sqlx::Error::Database(db)) => {
                let code = db.code()?;
                return DATA_CLASSES
                    .iter()
                    .any(|class| code.starts_with(class))
                    .then(|| code.into_owned());
            }
            Some(sqlx::Error::Encode(_)) => return Some("encode".to_owned()),
            Some(_) => return None,
            None => cause = c.source(),
        }
    }
    None
}

/// The order in which the events of a refused batch are tried again: the whole batch first,
/// then, for every refused range, its first half and then its second, until each refused range
/// is one event. Ranges come out in the batch's order and cover every event once, so what is
/// applied is applied in order.
#[derive(Debug)]
pub struct Bisect {
    /// Ranges still to try, the next one last.
    todo: Vec<Range<usize>>,
}

impl Bisect {
    /// Starts with the whole of `n` events (an empty range when `n` is 0).
    #[must_use]
    pub fn new(n: usize) -> Self {
        Bisect {
            todo: std::iter::once(0..n).collect(),
        }
    }

    /// The range to try next.
    pub fn next_range(&mut self) -> Option<Range<usize>> {
        self.todo.pop()
    }

    /// `range` was refused: its halves are tried next; a single event is returned as the one at
    /// fault (an empty range blames nothing).
    pub fn refused(&mut self, range: Range<usize>) -> Option<usize> {
        if range.len() <= 1 {
            return (range.len() == 1).then_some(range.start);
        }
        let middle = range.start + range.len() / 2;
        self.todo.push(middle..range.end);
        self.todo.push(range.start..middle);
        None
    }
}

/// Applies `events` in the transaction `tx`, each try under a savepoint, leaving out every event
/// the projection refuses for its data ([`data_fault`]); returns those events' indexes in
/// `events` with the error each got. A refusal of no events (what a folding projection folded
/// and `events` is empty) is returned as the error: nothing can be left out. So is every error
/// not about the data.
///
/// After a refused try the projection is told, as on an ownership change, to forget what it
/// staged or remembers: the rows it wrote in that try were rolled back.
pub async fn apply_leaving_out<P: Projection>(
    projection: &mut P,
    tx: &mut PgConnection,
    events: &[Positioned],
) -> Result<Vec<(usize, Error)>> {
    let mut bisect = Bisect::new(events.len());
    let mut refused = Vec::new();
    while let Some(range) = bisect.next_range() {
        let mut savepoint = tx.begin().await.db("setting a savepoint")?;
        match projection
            .apply(&mut savepoint, &events[range.clone()])
            .await
        {
            Ok(()) => savepoint.commit().await.db("releasing a savepoint")?,
            Err(e) if !range.is_empty() && data_fault(&e).is_some() => {
                savepoint
                    .rollback()
                    .await
                    .db("rolling back to a savepoint")?;
                projection.ownership_changed();
                if let Some(i) = bisect.refused(range) {
                    refused.push((i, e));
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(refused)
}

/// The dead letter's `dlq-error`: the error with its causes, and the SQLSTATE.
#[must_use]
pub fn describe(e: &Error) -> String {
    match data_fault(e) {
        Some(code) if code != "encode" => format!("{e} (SQLSTATE {code})"),
        _ => e.to_string(),
    }
}

/// Dead-letters the `refused` events of a batch that `consumer` read from `topic` (each
/// re-encoded: it decoded, so nothing is lost) and waits until Kafka has every one: only then
/// may the offsets that skip them be stored.
pub async fn dead_letter_refused(
    producer: &EventProducer,
    topic: &str,
    consumer: &str,
    events: &[Positioned],
    refused: &[(usize, Error)],
) -> Result<()> {
    let mut pending = Vec::with_capacity(refused.len());
    for (i, e) in refused {
        let Some(p) = events.get(*i) else { continue };
        let origin = Origin {
            source: "kafka",
            channel: topic,
            partition: Some(p.position.partition),
            offset: Some(p.position.offset),
        };
        tracing::warn!(consumer, partition = p.position.partition, offset = p.position.offset,
            event_type = p.event.event_type().name(), error = %e,
            "left out an event the projection cannot apply");
        let payload = otaledger_schemas::encode(&p.event)?;
        let rejection = Rejection::new(REASON, describe(e));
        let key = p.event.key().as_bytes();
        pending
            .push(dead_letter_for(producer, consumer, &origin, key, &payload, &rejection).await?);
    }
    for p in pending {
        p.acked().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::collections::BTreeSet;

    use super::*;

    /// Tries ranges of `n` events as the runner does, refusing every range that holds one of
    /// `bad`; returns the ranges applied and the events left out.
    fn run(n: usize, bad: &[usize]) -> (Vec<Range<usize>>, Vec<usize>) {
        let mut bisect = Bisect::new(n);
        let (mut applied, mut left_out) = (Vec::new(), Vec::new());
        while let Some(r) = bisect.next_range() {
            if bad.iter().any(|b| r.contains(b)) {
                left_out.extend(bisect.refused(r));
            } else {
                applied.push(r);
            }
        }
        (applied, left_out)
    }

    #[test]
    fn bisecting_leaves_out_exactly_the_bad_events_and_applies_the_rest_once_in_order() {
        for n in [1, 2, 3, 7, 10, 64, 100] {
            for bad in [vec![], vec![0], vec![n - 1], vec![n / 2], vec![0, n - 1], {
                let mut b: Vec<usize> = (0..n).step_by(3).collect();
                b.dedup();
                b
            }] {
                let (applied, left_out) = run(n, &bad);
                let want: BTreeSet<usize> = bad.iter().copied().collect();
                assert_eq!(
                    left_out,
                    want.iter().copied().collect::<Vec<_>>(),
                    "n {n} bad {bad:?}"
                );
                let covered: Vec<usize> = applied.iter().flat_map(Clone::clone).collect();
                let rest: Vec<usize> = (0..n).filter(|i| !want.contains(i)).collect();
                assert_eq!(
                    covered, rest,
                    "n {n} bad {bad:?}: each good event once, in order"
                );
            }
        }
    }

    #[test]
    fn a_good_batch_is_tried_once_and_a_single_bad_event_costs_two_tries_per_halving() {
        let (applied, _) = run(1000, &[]);
        assert_eq!((applied.len(), applied.first()), (1, Some(&(0..1000))));
        let mut tries = 0;
        let mut bisect = Bisect::new(1024);
        while let Some(r) = bisect.next_range() {
            tries += 1;
            if r.contains(&700) {
                let _ = bisect.refused(r);
            }
        }
        assert_eq!(
            tries,
            1 + 2 * 10,
            "the whole, then both halves at each of 10 levels"
        );
    }

    #[test]
    fn no_events_blame_nothing() {
        let mut bisect = Bisect::new(0);
        let r = bisect.next_range();
        assert_eq!(r, Some(0..0));
        assert_eq!(bisect.refused(0..0), None);
        assert_eq!(bisect.next_range(), None);
    }

    #[derive(Debug)]
    struct Refusal(&'static str);

    impl std::fmt::Display for Refusal {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "refused with {}", self.0)
        }
    }

    impl std::error::Error for Refusal {}

    impl sqlx::error::DatabaseError for Refusal {
        fn message(&self) -> &str {
            "refused"
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed(self.0))
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    /// A projection's error as the runtime carries it: its own error wrapping sqlx's.
    fn applying(source: sqlx::Error) -> Error {
        #[derive(Debug, thiserror::Error)]
        #[error("postgres: merging: {source}")]
        struct ProjectionError {
            source: sqlx::Error,
        }
        Error::Apply(Box::new(ProjectionError { source }))
    }

    fn database(code: &'static str) -> sqlx::Error {
        sqlx::Error::Database(Box::new(Refusal(code)))
    }

    #[test]
    fn data_exceptions_and_integrity_violations_are_about_the_data() {
        for code in ["22021", "22008", "22P05", "23514", "23505", "54000"] {
            assert_eq!(data_fault(&applying(database(code))).as_deref(), Some(code));
        }
        let direct = Error::Db {
            context: "merging".into(),
            source: database("22003"),
        };
        assert_eq!(data_fault(&direct).as_deref(), Some("22003"));
        let encode = sqlx::Error::Encode("a value out of range".into());
        assert_eq!(data_fault(&applying(encode)).as_deref(), Some("encode"));
        assert!(describe(&direct).ends_with("(SQLSTATE 22003)"));
    }

    #[test]
    fn unavailable_databases_and_transient_refusals_are_not_about_the_data() {
        // Admin shutdown, serialization failure, deadlock, too many connections, read only.
        for code in ["57P01", "40001", "40P01", "53300", "25006", "08006"] {
            assert_eq!(data_fault(&applying(database(code))), None, "{code}");
        }
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        for e in [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::Io(io),
            sqlx::Error::Protocol("unexpected message".into()),
        ] {
            assert_eq!(data_fault(&applying(e)), None);
        }
        assert_eq!(data_fault(&Error::Other("stopped".into())), None);
        assert_eq!(
            data_fault(&Error::Fenced {
                topic: "t".into(),
                partition: 0
            }),
            None
        );
    }
}

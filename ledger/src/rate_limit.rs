//! Per-device rate limits at the entrances (issue 17, item 5; ADR 0040): a token bucket per
//! device, so one device publishing a hundred times a second cannot take the bridge's budget,
//! and Kafka's throughput, from the others.
//!
//! What is refused is counted always, and dead-lettered (reason `rate_limited`) sparingly: the
//! first refusal of a device, then at most one a [`REPORT_EVERY`], carrying how many were refused
//! since the last one. A dead letter per refused message would let the flood through to Kafka
//! in another form. Install results are the exception, see [`DeviceLimits::judge`].
//!
//! [`DeviceLimits`] is pure: the caller passes the time, so the tests need no clock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// At most one dead letter per device in this interval for refused heartbeats and registrations.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);
/// How often idle buckets are forgotten.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// What to do with one message of a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the device's rate: ingest it.
    Admit,
    /// Over it: refuse it, and dead-letter it when `report` holds the number of messages of
    /// this device refused since its last dead letter (this one included).
    Refuse { report: Option<u64> },
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
    refused_unreported: u64,
    reported_at: Option<Instant>,
}

/// The buckets of the devices seen lately. `rate_per_s` 0 turns the limit off.
#[derive(Debug)]
pub struct DeviceLimits {
    rate_per_s: f64,
    burst: f64,
    buckets: HashMap<String, Bucket>,
    pruned_at: Option<Instant>,
}

impl DeviceLimits {
    /// `rate_per_s` messages a second per device on average, and up to `burst` at once (at
    /// least one).
    #[must_use]
    pub fn new(rate_per_s: f64, burst: u32) -> Self {
        DeviceLimits {
            rate_per_s: rate_per_s.max(0.0),
            burst: f64::from(burst.max(1)),
            buckets: HashMap::new(),
            pruned_at: None,
        }
    }

    /// Judges one message of `device` arriving at `now`. `always_report`: a refusal is
    /// dead-lettered whatever the interval (an install result: the rollout waits for it, and
    /// `otaledger dead-letters replay` can re-drive it once the device calms down).
    pub fn judge(&mut self, device: &str, now: Instant, always_report: bool) -> Verdict {
        if self.rate_per_s <= 0.0 {
            return Verdict::Admit;
        }
        self.prune(now);
        let (rate, burst) = (self.rate_per_s, self.burst);
        let bucket = match self.buckets.get_mut(device) {
            Some(b) => b,
            None => self.buckets.entry(device.to_owned()).or_insert(Bucket {
                tokens: burst,
                at: now,
                refused_unreported: 0,
                reported_at: None,
            }),
        };
        let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Verdict::Admit;
        }
        bucket.refused_unreported += 1;
        let due = bucket
            .reported_at
            .is_none_or(|at| now.saturating_duration_since(at) >= REPORT_EVERY);
        if !(due || always_report) {
            return Verdict::Refuse { report: None };
        }
        let refused = std::mem::take(&mut bucket.refused_unreported);
        bucket.reported_at = Some(now);
        Verdict::Refuse {
            report: Some(refused),
        }
    }

    /// Whole seconds until a device that was just refused has a token again (at least 1): what
    /// an HTTP client is told to wait (`Retry-After`).
    #[must_use]
    pub fn retry_after_s(&self) -> u64 {
        if self.rate_per_s <= 0.0 {
            return 1;
        }
        // Saturating float-to-int: a tiny rate gives a long wait, never a wrap.
        ((1.0 / self.rate_per_s).ceil() as u64).max(1)
    }

    /// How many devices have a bucket (for the memory it takes).
    #[must_use]
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }

    /// Forgets, every minute, the devices whose bucket has filled up again and that have no
    /// refusal left to report: they are as if never seen.
    fn prune(&mut self, now: Instant) {
        let due = self
            .pruned_at
            .is_none_or(|at| now.saturating_duration_since(at) >= PRUNE_EVERY);
        if !due {
            return;
        }
        self.pruned_at = Some(now);
        let (rate, burst) = (self.rate_per_s, self.burst);
        self.buckets.retain(|_, b| {
            let idle = now.saturating_duration_since(b.at).as_secs_f64();
            b.refused_unreported > 0 || b.tokens + idle * rate < burst
        });
    }
}

/// Messages refused because their device was over its rate, by entrance (`mqtt`, `amqp`,
/// `http`).
#[must_use]
pub fn refused_counter(source: &str) -> crate::metrics::Counter {
    crate::metrics::REGISTRY.counter(
        "otaledger_rate_limited_total",
        "Device messages refused because their device sent over its rate",
        &[("source", source)],
    )
}

/// The dead letter's reason for `refused` messages of `device` over its rate.
#[must_use]
pub fn rejection(device: &str, refused: u64) -> crate::dead_letters::Rejection {
    crate::dead_letters::Rejection::new(
        "rate_limited",
        format!(
            "device {device:?} sent over its rate (ingest.device_rate_per_s); {refused} of its \
             messages refused since the last such dead letter, this one included"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let t = Instant::now();
        let mut l = DeviceLimits::new(10.0, 3);
        for _ in 0..3 {
            assert_eq!(l.judge("d", t, false), Verdict::Admit);
        }
        assert_eq!(l.judge("d", t, false), Verdict::Refuse { report: Some(1) });
        // One token every 100 ms.
        assert_eq!(
            l.judge("d", t + ms(99), false),
            Verdict::Refuse { report: None }
        );
        assert_eq!(l.judge("d", t + ms(100), false), Verdict::Admit);
        assert_eq!(
            l.judge("d", t + ms(101), false),
            Verdict::Refuse { report: None }
        );
    }

    #[test]
    fn devices_have_buckets_of_their_own() {
        let t = Instant::now();
        let mut l = DeviceLimits::new(1.0, 1);
        assert_eq!(l.judge("flood", t, false), Verdict::Admit);
        assert!(matches!(l.judge("flood", t, false), Verdict::Refuse { .. }));
        assert_eq!(l.judge("quiet", t, false), Verdict::Admit);
    }

    #[test]
    fn refusals_are_reported_once_a_second_with_their_count() {
        let t = Instant::now();
        let mut l = DeviceLimits::new(0.001, 1);
        assert_eq!(l.judge("d", t, false), Verdict::Admit);
        assert_eq!(l.judge("d", t, false), Verdict::Refuse { report: Some(1) });
        for i in 1..=4 {
            assert_eq!(
                l.judge("d", t + ms(i * 100), false),
                Verdict::Refuse { report: None }
            );
        }
        assert_eq!(
            l.judge("d", t + ms(999), false),
            Verdict::Refuse { report: None }
        );
        // A second after the last report: this one and the five unreported.
        assert_eq!(
            l.judge("d", t + ms(1000), false),
            Verdict::Refuse { report: Some(6) }
        );
    }

    #[test]
    fn an_install_result_refused_is_always_reported() {
        let t = Instant::now();
        let mut l = DeviceLimits::new(0.001, 1);
        l.judge("d", t, false);
        assert_eq!(l.judge("d", t, false), Verdict::Refuse { report: Some(1) });
        assert_eq!(l.judge("d", t, false), Verdict::Refuse { report: None });
        assert_eq!(l.judge("d", t, true), Verdict::Refuse { report: Some(2) });
    }

    #[test]
    fn a_refused_device_is_told_when_a_token_is_back() {
        assert_eq!(DeviceLimits::new(10.0, 1).retry_after_s(), 1);
        assert_eq!(DeviceLimits::new(1.0, 1).retry_after_s(), 1);
        assert_eq!(DeviceLimits::new(0.5, 1).retry_after_s(), 2);
        assert_eq!(DeviceLimits::new(0.3, 1).retry_after_s(), 4);
    }

    #[test]
    fn a_zero_rate_turns_the_limit_off() {
        let t = Instant::now();
        let mut l = DeviceLimits::new(0.0, 1);
        for _ in 0..1000 {
            assert_eq!(l.judge("d", t, false), Verdict::Admit);
        }
        assert_eq!(l.tracked(), 0);
    }

    #[test]
    fn idle_devices_are_forgotten_a_minute_on() {
        let t = Instant::now();
        let mut l = DeviceLimits::new(1.0, 2);
        l.judge("idle", t, false);
        for _ in 0..3 {
            l.judge("busy", t, false); // the third refused, and reported at once
        }
        assert_eq!(l.tracked(), 2);
        l.judge("other", t + Duration::from_secs(59), false);
        assert_eq!(l.tracked(), 3, "not pruned before a minute");
        l.judge("other", t + Duration::from_secs(60), false);
        assert_eq!(
            l.tracked(),
            1,
            "both refilled, nothing to report: forgotten"
        );
    }

    #[test]
    fn devices_still_limited_or_owed_a_report_are_kept() {
        let t = Instant::now();
        let mut l = DeviceLimits::new(0.01, 2);
        l.judge("slow", t, false);
        l.judge("slow", t, false); // no tokens left; one per 100 s
        let mut owed = DeviceLimits::new(1.0, 1);
        owed.judge("d", t, false);
        owed.judge("d", t, false); // reported
        owed.judge("d", t + ms(1), false); // unreported
        l.judge("x", t + Duration::from_secs(60), false);
        owed.judge("x", t + Duration::from_secs(60), false);
        assert_eq!(l.tracked(), 2, "slow's bucket is not full yet");
        assert_eq!(owed.tracked(), 2, "d owes a report");
        l.judge("x", t + Duration::from_secs(200), false);
        assert_eq!(l.tracked(), 1, "slow refilled by now");
    }
}

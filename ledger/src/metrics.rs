//! A small Prometheus registry: labelled counters, gauges and histograms rendered in the text
//! exposition format. Handles are cheap clones of atomics, so hot paths never take a lock.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

#[derive(Debug, Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    #[must_use]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    /// Adds `v` (negative: subtracts).
    pub fn add(&self, v: i64) {
        self.0.fetch_add(v, Ordering::Relaxed);
    }
    #[must_use]
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Seconds buckets from 100 µs to 10 s.
const BUCKETS: [f64; 12] = [
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 10.0,
];

#[derive(Debug, Default)]
struct HistogramInner {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    /// Sum in microseconds, to stay atomic without floats.
    sum_micros: AtomicU64,
}

#[derive(Debug, Clone, Default)]
pub struct Histogram(Arc<HistogramInner>);

impl Histogram {
    /// Observations so far.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.0.count.load(Ordering::Relaxed)
    }

    /// Sum of the observations so far, in seconds.
    #[must_use]
    pub fn sum_seconds(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let s = self.0.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        s
    }

    pub fn observe(&self, seconds: f64) {
        for (i, le) in BUCKETS.iter().enumerate() {
            if seconds <= *le {
                self.0.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.0.count.fetch_add(1, Ordering::Relaxed);
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        self.0
            .sum_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }
}

#[derive(Debug)]
enum Metric {
    Counter(Counter),
    Gauge(Gauge),
    Histogram(Histogram),
}

#[derive(Debug, Default)]
struct Family {
    help: &'static str,
    kind: &'static str,
    series: BTreeMap<String, Metric>,
}

/// The process-wide registry behind `/metrics`.
#[derive(Debug, Default)]
pub struct Registry {
    families: Mutex<BTreeMap<&'static str, Family>>,
}

pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::default);

fn label_key(labels: &[(&'static str, &str)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let escaped = v
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n");
        let _ = write!(out, "{k}=\"{escaped}\"");
    }
    out
}

impl Registry {
    fn get_or_insert(
        &self,
        name: &'static str,
        help: &'static str,
        kind: &'static str,
        labels: &[(&'static str, &str)],
        make: impl FnOnce() -> Metric,
    ) -> Option<Metric> {
        let mut families = self.families.lock().unwrap_or_else(PoisonError::into_inner);
        let family = families.entry(name).or_insert_with(|| Family {
            help,
            kind,
            ..Family::default()
        });
        let metric = family.series.entry(label_key(labels)).or_insert_with(make);
        Some(match metric {
            Metric::Counter(c) => Metric::Counter(c.clone()),
            Metric::Gauge(g) => Metric::Gauge(g.clone()),
            Metric::Histogram(h) => Metric::Histogram(h.clone()),
        })
    }

    /// The counter `name{labels}`, created on first use.
    pub fn counter(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
    ) -> Counter {
        match self.get_or_insert(name, help, "counter", labels, || {
            Metric::Counter(Counter::default())
        }) {
            Some(Metric::Counter(c)) => c,
            _ => Counter::default(),
        }
    }

    pub fn gauge(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
    ) -> Gauge {
        match self.get_or_insert(name, help, "gauge", labels, || {
            Metric::Gauge(Gauge::default())
        }) {
            Some(Metric::Gauge(g)) => g,
            _ => Gauge::default(),
        }
    }

    pub fn histogram(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
    ) -> Histogram {
        match self.get_or_insert(name, help, "histogram", labels, || {
            Metric::Histogram(Histogram::default())
        }) {
            Some(Metric::Histogram(h)) => h,
            _ => Histogram::default(),
        }
    }

    /// The Prometheus text exposition of every series.
    #[must_use]
    pub fn render(&self) -> String {
        let families = self.families.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = String::with_capacity(4096);
        for (name, family) in families.iter() {
            let _ = writeln!(out, "# HELP {name} {}", family.help);
            let _ = writeln!(out, "# TYPE {name} {}", family.kind);
            for (labels, metric) in &family.series {
                let braces = |extra: &str| -> String {
                    match (labels.is_empty(), extra.is_empty()) {
                        (true, true) => String::new(),
                        (true, false) => format!("{{{extra}}}"),
                        (false, true) => format!("{{{labels}}}"),
                        (false, false) => format!("{{{labels},{extra}}}"),
                    }
                };
                match metric {
                    Metric::Counter(c) => {
                        let _ = writeln!(out, "{name}{} {}", braces(""), c.get());
                    }
                    Metric::Gauge(g) => {
                        let _ = writeln!(out, "{name}{} {}", braces(""), g.get());
                    }
                    Metric::Histogram(h) => {
                        for (i, le) in BUCKETS.iter().enumerate() {
                            let n = h.0.buckets[i].load(Ordering::Relaxed);
                            let _ = writeln!(
                                out,
                                "{name}_bucket{} {n}",
                                braces(&format!("le=\"{le}\""))
                            );
                        }
                        let count = h.0.count.load(Ordering::Relaxed);
                        let _ = writeln!(out, "{name}_bucket{} {count}", braces("le=\"+Inf\""));
                        #[allow(clippy::cast_precision_loss)]
                        let sum = h.0.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
                        let _ = writeln!(out, "{name}_sum{} {sum}", braces(""));
                        let _ = writeln!(out, "{name}_count{} {count}", braces(""));
                    }
                }
            }
        }
        out
    }
}

/// Counts a dead-lettered message by where it came from and why.
pub fn dead_lettered(source: &str, reason: &str) {
    REGISTRY
        .counter(
            "otaledger_dead_letters_total",
            "Messages sent to the dead-letter topic, by source and reason",
            &[("source", source), ("reason", reason)],
        )
        .inc();
}

/// Counts events appended to the ledger by where they came from.
#[must_use]
pub fn ingested(source: &str) -> Counter {
    REGISTRY.counter(
        "otaledger_events_ingested_total",
        "Events appended to the ledger, by ingest source",
        &[("source", source)],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_labels_and_histograms() {
        let r = Registry::default();
        r.counter("x_total", "an x", &[("source", "mq\"tt")]).add(3);
        r.counter("x_total", "an x", &[("source", "mq\"tt")]).inc();
        r.histogram("lat_seconds", "latency", &[]).observe(0.003);
        let text = r.render();
        assert!(text.contains("# TYPE x_total counter"), "{text}");
        assert!(text.contains("x_total{source=\"mq\\\"tt\"} 4"), "{text}");
        assert!(
            text.contains("lat_seconds_bucket{le=\"0.0025\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("lat_seconds_bucket{le=\"0.005\"} 1"),
            "{text}"
        );
        assert!(text.contains("lat_seconds_count 1"), "{text}");
    }
}

//! One function per scenario of the bench, each reading and adding to the run's [`Ctx`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use otaledger_ledger::kafka::EventProducer;
use otaledger_projections::projector::{fold_batch, merge_patches, DimensionCache};

use crate::api::{api_over_fleet, open_loop};
use crate::limits::{copy_rate, raw_consume, raw_produce};
use crate::projection::project;
use crate::{heartbeats, peak_rss_mib, percentile, rate, rss_figure, BoxError, Ctx, CHUNK};

/// The machine's limits: raw produce and consume through librdkafka alone (no otaledger code,
/// so they bound it), and PostgreSQL `COPY`.
pub(crate) async fn limits(b: &mut Ctx<'_>) -> Result<(), BoxError> {
    let Ctx {
        args,
        cfg: bench_cfg,
        name,
        raw_topic,
        encoded,
        report,
        ..
    } = b;
    let kafka = bench_cfg.kafka.clone();
    let t = raw_produce(&kafka, raw_topic, encoded).await?;
    report.add("limits", "raw produce", rate(encoded.len(), t), "msg/s");
    let (k, topic, n) = (kafka.clone(), raw_topic.clone(), encoded.len());
    let t =
        tokio::task::spawn_blocking(move || raw_consume(&k, &topic, n).map_err(|e| e.to_string()))
            .await??;
    report.add("limits", "raw consume", rate(n, t), "msg/s");
    let rows = args.events.min(1_000_000);
    let t = copy_rate(bench_cfg, name, rows).await?;
    report.add("limits", "postgres COPY", rate(rows, t), "rows/s");
    Ok(())
}

/// The otaledger producer appending every event; records where each partition ends.
pub(crate) async fn ingest(b: &mut Ctx<'_>) -> Result<(), BoxError> {
    let Ctx {
        args,
        cfg: bench_cfg,
        now,
        events,
        ends,
        report,
        ..
    } = b;
    let (kafka, now) = (bench_cfg.kafka.clone(), *now);
    let producer = EventProducer::new(&kafka)?;
    let started = Instant::now();
    let mut pending = std::collections::VecDeque::new();
    let mut note = |d: otaledger_ledger::kafka::Delivered| {
        let end = ends.entry(d.partition).or_insert(0);
        *end = (*end).max(d.offset + 1);
    };
    for chunk in (0..args.events).step_by(CHUNK) {
        // The first million are the codec sample, generated already; the rest as they go.
        let generated;
        let slice = if chunk < events.len() {
            &events[chunk..(chunk + CHUNK).min(events.len())]
        } else {
            generated = heartbeats(chunk..(chunk + CHUNK).min(args.events), args.devices, now);
            &generated[..]
        };
        for e in slice {
            pending.push_back(producer.enqueue(e).await?);
        }
        while pending.len() > 4 * CHUNK {
            if let Some(p) = pending.pop_front() {
                note(p.acked().await?);
            }
        }
    }
    for p in pending {
        note(p.acked().await?);
    }
    report.add(
        "ingest",
        "otaledger producer (Avro, acks=all)",
        rate(args.events, started.elapsed()),
        "events/s",
    );
    report.ratio("otaledger producer (Avro, acks=all)", "raw produce");
    Ok(())
}

/// Projector processes catching up with the backlog (live windows, far behind, two instances),
/// and a naive projector (one event per transaction) for contrast.
pub(crate) async fn projection(b: &mut Ctx<'_>) -> Result<(), BoxError> {
    let Ctx {
        args,
        cfg: bench_cfg,
        name,
        events,
        ends,
        report,
        ..
    } = b;
    // Live windows (at most 50,000 rows a transaction): what the projector sustains while
    // it follows the stream, and the rate the lag scenario halves. Far behind, deep
    // windows fold the backlog (the whole of it here) before writing.
    let runs: [(&'static str, &str, &[&str], bool); 3] = [
        ("projector catch-up", "", &["bench"], false),
        ("projector catch-up, far behind", "_deep", &["bench"], true),
        (
            "2 instances catch-up, far behind",
            "_pair",
            &["bench-a", "bench-b"],
            true,
        ),
    ];
    for (figure, suffix, members, far_behind) in runs {
        let schema = format!("{name}{suffix}");
        let (elapsed, rss) = project(
            bench_cfg,
            &schema,
            members,
            ends,
            far_behind,
            &args.components,
        )
        .await?;
        report.add("projection", figure, rate(args.events, elapsed), "events/s");
        report.ratio(figure, "raw consume");
        if let [one] = rss[..] {
            let name = if far_behind {
                "peak RSS, projector far behind"
            } else {
                "peak RSS, projector"
            };
            report.add("projection", name, one, "MiB");
        }
    }

    // The naive projector: the same merge, one event per transaction.
    let naive_schema = format!("{name}_naive");
    let naive =
        otaledger_projections::migrations::migrated_pool(&bench_cfg.database.url, &naive_schema, 2)
            .await?;
    let n = args.naive_events.min(events.len());
    let started = Instant::now();
    for (i, e) in events.iter().take(n).enumerate() {
        let positioned = [otaledger_ledger::Positioned {
            position: otaledger_domain::device_view::Position {
                partition: 0,
                offset: i as i64,
            },
            event: e.clone(),
        }];
        let mut tx = naive.begin().await?;
        merge_patches(
            &mut tx,
            fold_batch(&positioned),
            &mut DimensionCache::default(),
        )
        .await?;
        tx.commit().await?;
    }
    report.add(
        "projection",
        "naive projector (1 event per tx)",
        rate(n, started.elapsed()),
        "events/s",
    );
    let catch_up = report
        .figures
        .iter()
        .find(|f| f.name == "projector catch-up")
        .map(|f| f.value);
    if let (Some(fast), Some(f)) = (catch_up, report.figures.last_mut()) {
        println!(
            "  {:<11} {:<34} {:>14.1} x faster than naive",
            "",
            "",
            fast / f.value
        );
    }
    report.add(
        "projection",
        "peak RSS, bench process (naive projector, event sample)",
        peak_rss_mib(),
        "MiB",
    );
    Ok(())
}

/// Lag at a steady rate (half the catch-up rate) against the raw path's at the same rate.
pub(crate) async fn lag(b: &mut Ctx<'_>) -> Result<(), BoxError> {
    let Ctx {
        args,
        cfg: bench_cfg,
        name,
        report,
        ..
    } = b;
    // Half the measured catch-up rate, as a steady load the projector must follow closely.
    let catch_up = report
        .figures
        .iter()
        .find(|f| f.name == "projector catch-up")
        .map_or(20_000.0, |f| f.value);
    let rate = args.lag_rate.unwrap_or(catch_up / 2.0).max(100.0);
    let mut lag_cfg = bench_cfg.clone();
    lag_cfg.kafka.topic_prefix = format!("{name}.lag.");
    let samples = crate::lag::steady_lag(
        &lag_cfg,
        &format!("{name}_lag"),
        rate,
        args.lag_duration,
        args.devices,
    )
    .await?;
    let rate_name = if args.lag_rate.is_some() {
        "steady rate (--lag-rate)"
    } else {
        "steady rate (half of catch-up)"
    };
    report.add("lag", rate_name, rate, "events/s");
    let pct = |q: f64| percentile(&samples, q);
    report.add("lag", "occurred-at to commit p50", pct(0.50), "ms");
    report.add("lag", "occurred-at to commit p99", pct(0.99), "ms");
    report.add("lag", "occurred-at to commit max", pct(1.0), "ms");
    let samples = crate::lag::raw_lag(
        &lag_cfg.kafka,
        &format!("{name}.lag.raw"),
        rate,
        args.lag_duration,
        args.devices,
    )
    .await?;
    let pct = |q: f64| percentile(&samples, q);
    report.add("lag", "raw produce to consume p50", pct(0.50), "ms");
    report.add("lag", "raw produce to consume p99", pct(0.99), "ms");
    report.add("lag", "raw produce to consume max", pct(1.0), "ms");
    report.ratio("occurred-at to commit p99", "raw produce to consume p99");
    Ok(())
}

/// One open-loop run of `label` against `addr`, after a second of warm-up (connections, the
/// pool and PostgreSQL's caches): the sorted latencies and the error count.
async fn measure_api(
    args: &crate::BenchArgs,
    addr: std::net::SocketAddr,
    token: std::sync::Arc<str>,
    label: &'static str,
) -> Result<(Vec<i64>, u64), BoxError> {
    let warm = args.api_duration.min(Duration::from_secs(1));
    open_loop(
        addr,
        token.clone(),
        label,
        args.api_rate,
        warm,
        args.api_devices,
    )
    .await?;
    let measured = open_loop(
        addr,
        token,
        label,
        args.api_rate,
        args.api_duration,
        args.api_devices,
    )
    .await?;
    println!(
        "  api         {label} at {:.0} req/s for {:?}",
        args.api_rate, args.api_duration
    );
    Ok(measured)
}

/// p50, p99, p99.9 and errors of a run under `names`; returns the p99.
#[allow(clippy::cast_precision_loss)]
fn add_latencies(
    report: &mut crate::Report,
    names: [&'static str; 4],
    (lat, errors): &(Vec<i64>, u64),
) -> f64 {
    let pct = |q: f64| percentile(lat, q);
    report.add("api", names[0], pct(0.50), "ms");
    report.add("api", names[1], pct(0.99), "ms");
    report.add("api", names[2], pct(0.999), "ms");
    report.add("api", names[3], *errors as f64, "requests");
    pct(0.99)
}

/// API latency over a large fleet, open loop.
pub(crate) async fn api(b: &mut Ctx<'_>) -> Result<(), BoxError> {
    let Ctx {
        args,
        cfg: bench_cfg,
        name,
        report,
        ..
    } = b;
    let schema = format!("{name}_api");
    let served = api_over_fleet(bench_cfg, &schema, args.api_devices).await?;
    let (server, token) = (served.server, served.token);
    // With and without authentication, twice each and alternating, the better run of each kept:
    // one run's p99 moves by a fifth from run to run on two shared cores.
    let (lookup, open) = (
        "GET /v1/devices/{id}",
        "GET /v1/devices/{id} (authentication off)",
    );
    let mut runs = Vec::new();
    for _ in 0..2 {
        let with = measure_api(args, served.addr, token.clone(), lookup).await?;
        runs.push((true, with));
        let without = measure_api(args, served.open_addr, token.clone(), open).await?;
        runs.push((false, without));
    }
    let best = |auth: bool| {
        runs.iter()
            .filter(|(a, _)| *a == auth)
            .map(|(_, m)| m)
            .min_by(|a, b| percentile(&a.0, 0.99).total_cmp(&percentile(&b.0, 0.99)))
            .cloned()
            .unwrap_or_default()
    };
    let with = add_latencies(
        report,
        [
            "devices/{id} p50",
            "devices/{id} p99",
            "devices/{id} p99.9",
            "devices/{id} errors",
        ],
        &best(true),
    );
    let without = add_latencies(
        report,
        [
            "devices/{id} p50 without auth",
            "devices/{id} p99 without auth",
            "devices/{id} p99.9 without auth",
            "devices/{id} errors without auth",
        ],
        &best(false),
    );
    // What checking a bearer token on every request adds to the lookup's p99 (target: < 10 %).
    report.add(
        "api",
        "auth cost on devices/{id} p99",
        (with / without.max(f64::EPSILON) - 1.0) * 100.0,
        "%",
    );
    let summary = measure_api(args, served.addr, token.clone(), "GET /v1/fleet/summary").await?;
    add_latencies(
        report,
        [
            "summary p50",
            "summary p99",
            "summary p99.9",
            "summary errors",
        ],
        &summary,
    );
    let (lookups, queries) = otaledger_api::device_lookup::counters();
    #[allow(clippy::cast_precision_loss)]
    report.add(
        "api",
        "devices/{id} lookups per query",
        lookups.get() as f64 / queries.get().max(1) as f64,
        "lookups",
    );
    server.abort();
    Ok(())
}

/// Every projection rebuilt into a shadow schema.
pub(crate) async fn rebuild(b: &mut Ctx<'_>) -> Result<(), BoxError> {
    let Ctx {
        args,
        cfg: bench_cfg,
        name,
        ends,
        report,
        ..
    } = b;
    let kafka = bench_cfg.kafka.clone();
    let plan = otaledger_projections::rebuild::RebuildPlan {
        database_url: bench_cfg.database.url.clone(),
        kafka: kafka.clone(),
        shadow: format!("{name}_rebuild"),
        until: None,
        stop_at: Some(BTreeMap::from([
            ("projector".to_owned(), ends.clone()),
            ("history".to_owned(), ends.clone()),
            ("rollout-projector".to_owned(), BTreeMap::new()),
        ])),
    };
    let p = otaledger_projections::rebuild::build_shadow(&plan, |_| {}).await?;
    // Every projection of the device events (fleet view and device history) reads them all.
    report.add(
        "rebuild",
        "rebuild into a shadow schema",
        rate(args.events, p.elapsed),
        "events/s",
    );
    report.ratio("rebuild into a shadow schema", "raw consume");
    report.add(
        "rebuild",
        "rebuild time",
        p.elapsed.as_secs_f64() * 1000.0,
        "ms",
    );
    Ok(())
}

/// The dispatcher alone, then a whole rollout with every component in its own process.
pub(crate) async fn rollout(b: &mut Ctx<'_>) -> Result<(), BoxError> {
    let Ctx {
        args,
        cfg: bench_cfg,
        name,
        report,
        ..
    } = b;
    let mut rc = bench_cfg.clone();
    rc.database.schema = format!("{name}_rollout");
    rc.mqtt.topic_root = format!("{name}/devices");
    rc.amqp.reports_queue = format!("{name}.reports");
    rc.amqp.commands_exchange = format!("{name}.gateway-commands");
    let (alone, alone_mqtt, alone_amqp) =
        crate::rollout::dispatch_only(&rc, args.rollout_devices).await?;
    report.add(
        "rollout",
        "dispatcher alone, commands queued",
        alone,
        "commands/s",
    );
    report.add(
        "rollout",
        "dispatcher alone, over MQTT",
        alone_mqtt,
        "commands/s",
    );
    report.add(
        "rollout",
        "dispatcher alone, over AMQP",
        alone_amqp,
        "commands/s",
    );
    let f = crate::rollout::run(&rc, args.rollout_devices, &args.components).await?;
    #[allow(clippy::cast_precision_loss)]
    {
        report.add("rollout", "fleet size", f.devices as f64, "devices");
        report.add(
            "rollout",
            "commands dispatched",
            f.commands_per_s,
            "commands/s",
        );
        report.add(
            "rollout",
            "commands dispatched while waiting",
            f.dispatch_busy_per_s,
            "commands/s",
        );
        report.add(
            "rollout",
            "commands dispatched, best second",
            f.peak_per_s,
            "commands/s",
        );
        report.add("rollout", "commands over MQTT", f.mqtt_per_s, "commands/s");
        report.add("rollout", "commands over AMQP", f.amqp_per_s, "commands/s");
        report.add(
            "rollout",
            "MQTT commands",
            f.mqtt_commands as f64,
            "commands",
        );
        report.add(
            "rollout",
            "AMQP commands",
            f.amqp_commands as f64,
            "commands",
        );
    }
    report.add(
        "rollout",
        "request to last command",
        f.request_to_last_command_s * 1000.0,
        "ms",
    );
    report.add(
        "rollout",
        "request to completion",
        f.request_to_completion_s * 1000.0,
        "ms",
    );
    report.add("rollout", "saga decision p50", f.decision_p50_ms, "ms");
    report.add("rollout", "saga decision p99", f.decision_p99_ms, "ms");
    for (c, mib) in &f.peak_rss_mib {
        report.add("rollout", rss_figure(*c), *mib, "MiB");
    }
    report.add(
        "rollout",
        "peak RSS, bench process (simulated fleet)",
        f.simulator_peak_rss_mib,
        "MiB",
    );
    Ok(())
}

/// Device reports through Mosquitto and the MQTT bridge, plain and over TLS, alternating twice
/// and keeping the better run of each (two shared cores move one run by a tenth).
pub(crate) async fn mqtt(b: &mut Ctx<'_>) -> Result<(), BoxError> {
    let Ctx {
        args,
        cfg: bench_cfg,
        name,
        report,
        ..
    } = b;
    // The better run of each transport, plain first; TLS only when a listener is given.
    let transports: Vec<(&str, Option<&crate::mqtt_ingest::TlsListener>)> =
        std::iter::once(("plain", None))
            .chain(args.mqtt_tls.as_ref().map(|l| ("tls", Some(l))))
            .collect();
    let mut best = vec![0.0_f64; transports.len()];
    for i in 0..2 {
        for ((label, tls), best) in transports.iter().zip(best.iter_mut()) {
            let root = format!("{name}-{label}-{i}");
            let r = crate::mqtt_ingest::reports_per_s(
                &args.components,
                bench_cfg,
                &root,
                args.mqtt_devices,
                4,
                *tls,
            )
            .await?;
            *best = best.max(r);
        }
    }
    let (plain, tls) = (best[0], best.get(1).copied().unwrap_or_default());
    report.add("mqtt", "MQTT ingest, plain", plain, "reports/s");
    if args.mqtt_tls.is_none() {
        println!("  (no TLS listener given: --mqtt-tls-port and --tls-ca)");
        return Ok(());
    }
    report.add("mqtt", "MQTT ingest, TLS", tls, "reports/s");
    report.ratio("MQTT ingest, TLS", "MQTT ingest, plain");
    report.add(
        "mqtt",
        "TLS cost on MQTT ingest",
        (1.0 - tls / plain.max(f64::EPSILON)) * 100.0,
        "%",
    );
    Ok(())
}

/// Artifact downloads (issue 18, item 6): throughput of `GET /v1/artifacts/{sha256}` with an
/// operator's token against nginx serving the same file over loopback, best of two runs on two
/// connections each; then a fleet getting a release through caching gateways (1,000 devices, 20
/// gateways, 10 MB at the quick and full sizes), against one copy per gateway from the origin.
pub(crate) async fn download(b: &mut Ctx<'_>) -> Result<(), BoxError> {
    use otaledger_artifacts::Store as _;
    let Ctx {
        args,
        cfg: bench_cfg,
        name,
        report,
        ..
    } = b;
    let size = &args.download;
    let dir = std::env::temp_dir().join(format!("{name}-download"));
    std::fs::create_dir_all(dir.join("www"))?;
    let store = otaledger_artifacts::FsStore::open(dir.join("store")).await?;
    let big = crate::download::artifact(size.artifact_bytes);
    let stored = store.put(&mut &big[..], u64::MAX, None).await?;
    std::fs::write(dir.join("www").join(stored.sha256.as_str()), &big)?;
    drop(big);
    let small = crate::download::artifact(size.release_bytes);
    let release_stored = store.put(&mut &small[..], u64::MAX, None).await?;
    drop(small);

    let pool = otaledger_projections::migrations::migrated_pool(
        &bench_cfg.database.url,
        &bench_cfg.database.schema,
        8,
    )
    .await?;
    let producer = EventProducer::new(&bench_cfg.kafka)?;
    let state = otaledger_api::AppState::new(
        pool.clone(),
        producer.clone(),
        bench_cfg.kafka.clone(),
        bench_cfg.offline_after(),
    )?
    .with_artifacts(std::sync::Arc::new(store), u64::MAX);
    let token = otaledger_api::tokens::issue(
        &pool,
        &producer,
        "bench-operator",
        otaledger_domain::access::Role::Operator,
        None,
        "otaledger-bench",
        None,
    )
    .await?
    .token;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, otaledger_api::app(state)).await;
    });
    let nginx = crate::download::Nginx::start(&dir, &dir.join("www")).await?;
    let api_path = format!("/v1/artifacts/{}", stored.sha256);
    let nginx_path = format!("/{}", stored.sha256);
    let run = size.run;
    let (mut api, mut reference) = (0.0_f64, 0.0_f64);
    for _ in 0..2 {
        if let Some(n) = &nginx {
            let r = crate::download::throughput(n.addr, &nginx_path, None, 2, run).await?;
            reference = reference.max(r);
        }
        let r = crate::download::throughput(addr, &api_path, Some(&token), 2, run).await?;
        api = api.max(r);
    }
    if nginx.is_some() {
        report.add("download", "nginx, the same file", reference / 1e6, "MB/s");
    } else {
        println!("  (nginx is not installed: scripts/bench.sh installs Debian's)");
    }
    report.add("download", "artifact download (API)", api / 1e6, "MB/s");
    report.ratio("artifact download (API)", "nginx, the same file");
    drop(nginx);

    // The fleet: each gateway fetches the release once through a signed link, for its devices.
    let key = otaledger_domain::download_link::LinkKey::new(
        otaledger_ledger::db::stored_secret(&pool, "api_download_link_key").await?,
    );
    let expires = otaledger_domain::time::now_micros() / 1_000_000 + 3600;
    let sig = key.sign(&release_stored.sha256, expires);
    let release = otaledger_domain::events::Release {
        version: "2.0.0".into(),
        artifact_uri: format!(
            "http://{addr}/v1/artifacts/{}?expires={expires}&sig={sig}",
            release_stored.sha256
        ),
        sha256: release_stored.sha256.as_str().to_owned(),
        size_bytes: i64::try_from(size.release_bytes)?,
        signature: String::new(),
    };
    let (devices, gateways) = (size.fleet_devices, size.gateways);
    let fleet = crate::download::through_gateways(release, devices, gateways).await?;
    if fleet.verified != devices as u64 {
        return Err(format!(
            "{} of {devices} devices verified the release",
            fleet.verified
        )
        .into());
    }
    println!("  download    a fleet of {devices} devices behind {gateways} gateways, a release of {} bytes", size.release_bytes);
    report.add(
        "download",
        "one copy per gateway",
        (gateways * size.release_bytes) as f64 / 1e6,
        "MB",
    );
    report.add(
        "download",
        "origin bytes, fleet via gateways",
        fleet.origin_bytes as f64 / 1e6,
        "MB",
    );
    report.ratio("origin bytes, fleet via gateways", "one copy per gateway");
    report.add(
        "download",
        "gateway cache hits",
        fleet.cache_hits as f64,
        "hits",
    );
    report.add(
        "download",
        "bytes the caches saved",
        fleet.bytes_saved as f64 / 1e6,
        "MB",
    );
    report.add(
        "download",
        "fleet served and verified in",
        fleet.elapsed.as_secs_f64() * 1000.0,
        "ms",
    );
    server.abort();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

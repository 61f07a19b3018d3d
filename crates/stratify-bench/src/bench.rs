//! `stratify bench ingest`: a load client for the real server. Bodies are
//! built before the clock starts, so the figure is the server's, not the
//! client's JSON encoding. Every event carries an `event_id`, so the server
//! does the full idempotency check, and an answer counts only when it says
//! every event was accepted (durable before acknowledgement).

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// POSTs batches of events to /v1/events and reports events/s.
    Ingest(IngestArgs),
    /// Sustained ingest with live segments: events/s, ack → change latency,
    /// deadline lateness (see scripts/bench-live.sh).
    Live(LiveArgs),
    /// Sets up the serving benchmark: the 50 segments, built, and running
    /// experiments targeting them (see scripts/bench-experiments.sh).
    ExperimentsSetup(ExperimentsArgs),
    /// Writes the results benchmark's data set straight into a stopped
    /// server's data directory: one running experiment, its exposures and
    /// purchase events (see scripts/bench-results.sh).
    ResultsSetup(ResultsArgs),
    /// Reads a topic from its start with a plain consumer (no processing)
    /// and reports records/s: the broker's own rate (see
    /// scripts/bench-kafka.sh).
    KafkaRead(KafkaReadArgs),
}

#[derive(Args)]
pub struct KafkaReadArgs {
    #[arg(long)]
    brokers: String,
    #[arg(long)]
    topic: String,
    /// Stop after this many records.
    #[arg(long)]
    records: u64,
    /// Extra consumer settings, `name=value` (repeatable).
    #[arg(long = "set")]
    settings: Vec<String>,
}

/// Consumes `records` records of `topic` with a fresh group from the
/// earliest offset; prints the rate from the first record to the last.
async fn kafka_read(args: KafkaReadArgs) -> anyhow::Result<()> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::Message;
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("group.id", format!("bench-read-{}", std::process::id()))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[&args.topic])?;
    let (mut n, mut bytes, mut first) = (0u64, 0usize, None);
    while n < args.records {
        let m = tokio::time::timeout(std::time::Duration::from_secs(30), consumer.recv())
            .await
            .map_err(|_| anyhow::anyhow!("no record for 30 s after {n}"))??;
        first.get_or_insert_with(std::time::Instant::now);
        bytes += m.payload().map_or(0, <[u8]>::len);
        n += 1;
    }
    let secs = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    println!(
        "{n} records ({:.1} MB) in {secs:.2} s = {:.0} records/s",
        bytes as f64 / 1e6,
        n as f64 / secs
    );
    Ok(())
}

#[derive(Args)]
pub struct ResultsArgs {
    #[arg(long, default_value = "./data")]
    data_dir: std::path::PathBuf,
    /// Users exposed to the experiment.
    #[arg(long, default_value_t = 1_000_000)]
    users: u64,
    /// Purchase events, spread over the exposed users and the last 28 days.
    #[arg(long, default_value_t = 10_000_000)]
    events: u64,
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

/// The experiment `bench-results` (control 50 / treatment 50) with metrics
/// `purchased` (conversion within 14 days) and `revenue` (sum of `amount`);
/// users exposed over the first 14 of the last 28 days; purchases at random
/// instants of those 28 days (some before the user's exposure, which must
/// not count), treatment users a little more often.
async fn results_setup(args: ResultsArgs) -> anyhow::Result<()> {
    use rand::{Rng, SeedableRng};
    use serde_json::json;
    use stratify_engine::model::{AssignmentRecord, EventBatch, IngestReport, Source};
    use stratify_engine::{Engine, SystemClock};
    use stratify_store::{Assignments, EventLog};
    const DAY: i64 = 86_400_000;
    let store = stratify_engine::open_store(&args.data_dir)?;
    let engine = Engine::start(store.clone(), Arc::new(SystemClock), None).await?;
    let now = engine.now();
    let input = serde_json::from_value(json!({
        "key": "bench-results", "name": "Results benchmark",
        "variants": [{"key": "control", "weight": 50, "is_control": true}, {"key": "treatment", "weight": 50}],
    }))?;
    let experiment = engine.experiments.create_experiment(input, "bench").await?;
    let id = experiment.record.id.clone();
    engine
        .experiments
        .transition_experiment(&id, stratify_engine::experiments::Action::Start, "bench")
        .await?;
    for m in [
        json!({"key": "purchased", "kind": "conversion", "event": "purchase", "window": "14d"}),
        json!({"key": "revenue", "kind": "sum", "event": "purchase", "property": "amount"}),
    ] {
        engine
            .results
            .create_metric(serde_json::from_value(m)?)
            .await?;
    }
    engine.shutdown().await;
    drop(engine);

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(args.seed);
    let start = now - 28 * DAY;
    let started = Instant::now();
    let mut treatment = Vec::with_capacity(args.users as usize);
    for chunk in (0..args.users).collect::<Vec<_>>().chunks(50_000) {
        let rows: Vec<AssignmentRecord> = chunk
            .iter()
            .map(|i| {
                let t = rng.random::<bool>();
                treatment.push(t);
                AssignmentRecord {
                    user_id: format!("u{i}"),
                    experiment_id: id.clone(),
                    variant: if t { "treatment" } else { "control" }.into(),
                    bucket_version: 1,
                    assigned_at: start + rng.random_range(0..14 * DAY),
                }
            })
            .collect();
        store.save_assignments(Arc::new(rows)).await?;
    }
    eprintln!("{} exposures in {:.1?}", args.users, started.elapsed());
    let started = Instant::now();
    let mut written = 0;
    while written < args.events {
        let n = (args.events - written).min(10_000);
        let events: Vec<stratify_core::event::NewEvent> = (0..n)
            .map(|_| {
                // Treatment users buy a little more often: a second draw for some.
                let mut user = rng.random_range(0..args.users);
                if !treatment[user as usize] && rng.random::<f64>() < 0.05 {
                    user = rng.random_range(0..args.users);
                }
                let mut properties = serde_json::Map::new();
                properties.insert(
                    "amount".into(),
                    json!(rng.random_range(500..10_000) as f64 / 100.0),
                );
                stratify_core::event::NewEvent {
                    event_id: None,
                    user_id: stratify_core::ids::UserId::parse(format!("u{user}"))
                        .expect("a valid id"),
                    name: stratify_core::ids::EventName::parse("purchase").expect("a valid name"),
                    timestamp: start + rng.random_range(0..28 * DAY),
                    properties: Some(properties),
                    dedupe_key: None,
                }
            })
            .collect();
        store
            .append_events(EventBatch {
                events: Arc::new(events),
                report: IngestReport {
                    source: Source::Import,
                    received: n,
                    rejected: 0,
                    forwarded: 0,
                    last_error: None,
                    now,
                },
                on_commit: None,
            })
            .await?;
        written += n;
    }
    eprintln!("{written} events in {:.1?}", started.elapsed());
    println!("{id}");
    if let Ok(store) = Arc::try_unwrap(store) {
        store.close();
    }
    Ok(())
}

#[derive(Args)]
pub struct ExperimentsArgs {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    #[arg(long, env = "STRATIFY_ADMIN_KEY", hide_env_values = true)]
    key: String,
    #[arg(long, default_value_t = 100)]
    experiments: usize,
}

/// The 50 segments, then `--experiments` running experiments: most target
/// one or two of the segments, every tenth targets everyone, every seventh
/// sits in a namespace, every fifth carries banners; weights vary.
async fn experiments_setup(args: ExperimentsArgs) -> anyhow::Result<()> {
    use serde_json::json;
    let client = reqwest::Client::new();
    let segments = setup_segments(&client, &args.url, &args.key).await?;
    let start = Instant::now();
    for i in 0..args.experiments {
        let targets: Vec<&String> = if i % 10 == 0 {
            Vec::new()
        } else {
            vec![
                &segments[i % segments.len()],
                &segments[(i * 7 + 3) % segments.len()],
            ]
        };
        let treatment = if i % 5 == 0 {
            json!({"banners": [i, i + 1, i + 2]})
        } else {
            json!({"feature": format!("f{i}"), "level": i % 3})
        };
        let mut body = json!({
            "key": format!("bench-exp-{i}"),
            "name": format!("Benchmark experiment {i}"),
            "segment_ids": targets,
            "coverage": if i % 4 == 0 { 0.5 } else { 1.0 },
            "variants": [
                {"key": "control", "weight": 50, "is_control": true},
                {"key": "treatment", "weight": 50, "payload": treatment}
            ]
        });
        if i % 7 == 0 {
            let slot = (i / 7 % 4) as f64 * 0.25;
            body["namespace"] = json!({"id": "bench", "start": slot, "end": slot + 0.25});
        }
        let resp = client
            .post(format!("{}/v1/experiments", args.url))
            .bearer_auth(&args.key)
            .json(&body)
            .send()
            .await?;
        let status = resp.status();
        let created: serde_json::Value = resp.json().await?;
        if !status.is_success() {
            bail!("cannot create experiment {i}: {created}");
        }
        let id = created["id"].as_str().unwrap_or_default();
        let resp = client
            .post(format!("{}/v1/experiments/{id}/start", args.url))
            .bearer_auth(&args.key)
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("cannot start experiment {i}: {}", resp.text().await?);
        }
    }
    println!(
        "setup: {} running experiments created in {:.1}s",
        args.experiments,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

#[derive(Args)]
pub struct IngestArgs {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    #[arg(long, env = "STRATIFY_ADMIN_KEY", hide_env_values = true)]
    key: String,
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    #[arg(long, default_value_t = 5_000)]
    batch: usize,
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    #[arg(long, default_value_t = 100_000)]
    users: usize,
    /// Send NDJSON bodies instead of `{"events": [...]}`.
    #[arg(long)]
    ndjson: bool,
}

pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Ingest(args) => ingest(args).await,
        BenchCommand::Live(args) => live(args).await,
        BenchCommand::ExperimentsSetup(args) => experiments_setup(args).await,
        BenchCommand::ResultsSetup(args) => results_setup(args).await,
        BenchCommand::KafkaRead(args) => kafka_read(args).await,
    }
}

const NAMES: [&str; 5] = [
    "LOGIN",
    "PAGE_VIEW",
    "SEARCH",
    "ADDED_TO_CART",
    "order_placed",
];

fn body(args: &IngestArgs, run_id: u64, batch: usize) -> Vec<u8> {
    let mut out = String::with_capacity(args.batch * 140);
    if !args.ndjson {
        out.push_str("{\"events\":[");
    }
    for i in 0..args.batch {
        let n = batch * args.batch + i;
        if i > 0 && !args.ndjson {
            out.push(',');
        }
        let name = NAMES[n % NAMES.len()];
        let user = format!("user-{}", n % args.users);
        let ts = 1_700_000_000_000u64 + n as u64 * 7;
        push_event(&mut out, &format!("b{run_id}-{n}"), &user, name, ts, n);
        if args.ndjson {
            out.push('\n');
        }
    }
    if !args.ndjson {
        out.push_str("]}");
    }
    out.into_bytes()
}

async fn ingest(args: IngestArgs) -> anyhow::Result<()> {
    if args.batch == 0 || args.events < args.batch {
        bail!("--events must be at least --batch (> 0)");
    }
    let batches = args.events / args.batch;
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    let bodies: Arc<Vec<Vec<u8>>> =
        Arc::new((0..batches).map(|b| body(&args, run_id, b)).collect());
    let content_type = if args.ndjson {
        "application/x-ndjson"
    } else {
        "application/json"
    };
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (client, bodies, next) = (client.clone(), bodies.clone(), next.clone());
        let (url, key, expect) = (
            format!("{}/v1/events", args.url),
            args.key.clone(),
            args.batch as u64,
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { break };
                let t = Instant::now();
                let resp = client
                    .post(&url)
                    .bearer_auth(&key)
                    .header("content-type", content_type)
                    .body(body.clone())
                    .send()
                    .await
                    .context("request failed")?;
                let status = resp.status();
                let answer: serde_json::Value = resp.json().await.context("answer is not JSON")?;
                if !status.is_success() || answer["accepted"].as_u64() != Some(expect) {
                    bail!("batch {i} not fully accepted ({status}): {answer}");
                }
                latencies.push(t.elapsed().as_secs_f64());
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let secs = start.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
            * 1000.0
    };
    let total = batches * args.batch;
    println!(
        "ingest over HTTP ({}): {total} events in {secs:.2}s = {:.0} events/s; batch {} x concurrency {}; batch latency p50 {:.1} ms, p99 {:.1} ms",
        if args.ndjson { "NDJSON" } else { "JSON batches" },
        total as f64 / secs,
        args.batch,
        args.concurrency,
        pct(0.50),
        pct(0.99)
    );
    Ok(())
}

/// `stratify bench live`: sustained ingest with live segments, measuring
/// events/s, acknowledgement → change-on-the-stream latency, and how late
/// time-driven changes (deadlines) arrive after their instants.
#[derive(Args)]
pub struct LiveArgs {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    #[arg(long, env = "STRATIFY_ADMIN_KEY", hide_env_values = true)]
    key: String,
    /// Users the events go to (ids "1".."N", as `stratify generate` writes them).
    #[arg(long, default_value_t = 1_000_000)]
    users: usize,
    /// Events sent: the first `--pings` are one PING per user (each sets a
    /// deadline 30 s later in the `pinged_30s` segment), the rest a mix of app events.
    #[arg(long, default_value_t = 2_000_000)]
    events: usize,
    /// Leading PING events (default: one per user).
    #[arg(long)]
    pings: Option<usize>,
    #[arg(long, default_value_t = 5_000)]
    batch: usize,
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Create the 50 benchmark segments first and wait for their builds.
    #[arg(long)]
    setup: bool,
    /// Longest wait for the deadlines to fire after the ingest.
    #[arg(long, default_value_t = 120)]
    drain_seconds: u64,
    /// Offered load in events/s (batches sent on a fixed schedule); 0 = as
    /// fast as the server answers.
    #[arg(long, default_value_t = 0)]
    rate: u64,
}

/// The 50 benchmark segments: attribute, windowed, recency and mixed rules.
pub fn live_segments() -> Vec<(String, serde_json::Value)> {
    use serde_json::json;
    let mut out = Vec::new();
    let states = ["California", "Texas", "New York", "Florida", "Illinois"];
    let plans = ["free", "premium", "basic", "free", "premium"];
    let devices = ["mobile", "desktop", "tablet", "desktop", "mobile"];
    for (i, state) in states.iter().enumerate() {
        let lo = 18 + 8 * i as i64;
        out.push((
            format!("attr_{i}_age_location"),
            json!({"operator": "AND", "conditions": [
            {"field": "age", "op": "between", "value": [lo, lo + 7]},
            {"field": "location", "op": "eq", "value": state}]}),
        ));
        out.push((
            format!("attr_{i}_plan_device"),
            json!({"operator": "AND", "conditions": [
            {"field": "subscription_plan", "op": "eq", "value": plans[i]},
            {"field": "device_type", "op": "eq", "value": devices[i]},
            {"field": "age", "op": "gte", "value": 20 + 5 * i as i64}]}),
        ));
        out.push((format!("attr_{i}_state"), json!({"location": state})));
    }
    let names = ["LOGIN", "PAGE_VIEW", "SEARCH", "ADDED_TO_CART"];
    let windows = ["1m", "10m", "1h", "1d"];
    for (i, name) in names.iter().enumerate() {
        for (j, w) in windows.iter().enumerate() {
            out.push((
                format!("win_{name}_{w}"),
                json!({"event": name, "within": w, "op": "gte", "value": 1 + (i + j) % 3}),
            ));
        }
    }
    out.push((
        "pinged_30s".into(),
        json!({"event": "PING", "within": "30s", "op": "gte", "value": 1}),
    ));
    out.push(("spend_7d".into(), json!({"event": "order_placed", "within": "7d", "agg": "sum", "property": "amount", "op": "gt", "value": 500})));
    out.push((
        "orders_1h".into(),
        json!({"field": "order_count_last_1_days", "op": "gte", "value": 2}),
    ));
    for (i, name) in names.iter().enumerate() {
        out.push((format!("recent_{name}"), json!({"event": name, "agg": "seconds_since_last", "op": "lte", "value": 300 * (i + 1)})));
        out.push((format!("lapsed_{name}"), json!({"event": name, "agg": "seconds_since_last", "op": "gte", "value": 120 * (i + 1)})));
    }
    out.push((
        "dormant_buyer".into(),
        json!({"field": "seconds_since_last_order", "op": "gte", "value": 600}),
    ));
    out.push((
        "mix_engaged_ca".into(),
        json!({"operator": "AND", "conditions": [
        {"location": "California"}, {"event": "LOGIN", "within": "1h", "op": "gte", "value": 1}]}),
    ));
    out.push((
        "mix_cart_no_order".into(),
        json!({"operator": "AND", "conditions": [
        {"event": "ADDED_TO_CART", "within": "1h", "op": "gte", "value": 1},
        {"not": {"event": "order_placed", "within": "1h", "op": "gte", "value": 1}}]}),
    ));
    out.push((
        "mix_premium_or_spender".into(),
        json!({"operator": "OR", "conditions": [
        {"subscription_plan": "premium"}, {"field": "ltv", "op": "gt", "value": 1000}]}),
    ));
    out.push(("mix_young_searchers".into(), json!({"operator": "AND", "conditions": [
        {"field": "age", "op": "lt", "value": 30}, {"event": "SEARCH", "within": "10m", "op": "gte", "value": 2}]})));
    out.push(("mix_not_mobile_active".into(), json!({"operator": "AND", "conditions": [
        {"not": {"device_type": "mobile"}}, {"event": "PAGE_VIEW", "within": "1d", "op": "gte", "value": 1}]})));
    out.push((
        "mix_tx_new".into(),
        json!({"operator": "AND", "conditions": [
        {"location": "Texas"}, {"field": "is_new_user", "op": "eq", "value": true}]}),
    ));
    out.push(("mix_pinged_premium".into(), json!({"operator": "AND", "conditions": [
        {"subscription_plan": "premium"}, {"event": "PING", "within": "1h", "op": "gte", "value": 1}]})));
    out
}

const LIVE_NAMES: [&str; 5] = [
    "LOGIN",
    "PAGE_VIEW",
    "SEARCH",
    "ADDED_TO_CART",
    "order_placed",
];

fn live_body(args: &LiveArgs, run_id: u64, batch: usize, now_ms: u64) -> Vec<u8> {
    let mut out = String::with_capacity(args.batch * 140);
    out.push_str("{\"events\":[");
    for i in 0..args.batch {
        let n = batch * args.batch + i;
        if i > 0 {
            out.push(',');
        }
        let name = if n < args.pings.unwrap_or(args.users) {
            "PING"
        } else {
            LIVE_NAMES[(n / 7) % LIVE_NAMES.len()]
        };
        let user = (n % args.users + 1).to_string();
        push_event(&mut out, &format!("l{run_id}-{n}"), &user, name, now_ms, n);
    }
    out.push_str("]}");
    out.into_bytes()
}

/// One event as JSON; orders carry an amount and a city.
fn push_event(out: &mut String, id: &str, user: &str, name: &str, ts: u64, n: usize) {
    use std::fmt::Write;
    let _ = write!(
        out,
        "{{\"event_id\":\"{id}\",\"user_id\":\"{user}\",\"name\":\"{name}\",\"timestamp\":{ts}"
    );
    if name == "order_placed" {
        let _ = write!(
            out,
            ",\"properties\":{{\"amount\":{}.5,\"city\":\"Pune\"}}",
            100 + n % 900
        );
    }
    out.push('}');
}

/// The string value following `key` (which ends with the opening quote).
fn field<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let rest = &json[json.find(key)? + key.len()..];
    Some(&rest[..rest.find('"')?])
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One change as the stream delivered it.
struct Seen {
    received: Instant,
    received_wall: u64,
    /// The event index `n` for event-caused changes.
    event: Option<usize>,
    at_ms: Option<u64>,
    time: bool,
}

async fn setup_segments(
    client: &reqwest::Client,
    url: &str,
    key: &str,
) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    for (name, rules) in live_segments() {
        let resp = client
            .post(format!("{url}/v1/segments"))
            .bearer_auth(key)
            .json(&serde_json::json!({"name": name, "rules": rules}))
            .send()
            .await?;
        let status = resp.status();
        let body: serde_json::Value = resp.json().await?;
        if !status.is_success() {
            bail!("cannot create segment {name}: {body}");
        }
        ids.push(body["id"].as_str().unwrap_or_default().to_owned());
    }
    let start = Instant::now();
    for id in &ids {
        loop {
            let s: serde_json::Value = client
                .get(format!("{url}/v1/segments/{id}"))
                .bearer_auth(key)
                .send()
                .await?
                .json()
                .await?;
            if s["build"]["state"] == "ready" {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
    println!(
        "setup: {} segments created and built over every user in {:.1}s",
        ids.len(),
        start.elapsed().as_secs_f64()
    );
    Ok(ids)
}

async fn metric(client: &reqwest::Client, url: &str, name: &str) -> Option<f64> {
    let text = client
        .get(format!("{url}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

async fn live(args: LiveArgs) -> anyhow::Result<()> {
    if args.batch == 0 || args.events < args.batch {
        bail!("--events must be at least --batch (> 0)");
    }
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency + 2)
        .build()?;
    if args.setup {
        setup_segments(&client, &args.url, &args.key).await?;
    }
    let batches = args.events / args.batch;
    let run_id = wall_ms();
    // Follow the change stream from now on.
    let mut stream = client
        .get(format!("{}/v1/changes/stream", args.url))
        .bearer_auth(&args.key)
        .send()
        .await?;
    if !stream.status().is_success() {
        bail!("cannot open the change stream: {}", stream.status());
    }
    let seen = Arc::new(parking_lot::Mutex::new(Vec::<Seen>::with_capacity(
        args.events,
    )));
    let prefix = format!("l{run_id}-");
    let sink = seen.clone();
    let reader = tokio::spawn(async move {
        let mut buf = String::new();
        while let Ok(Some(chunk)) = stream.chunk().await {
            let received = Instant::now();
            let received_wall = wall_ms();
            buf.push_str(&String::from_utf8_lossy(&chunk));
            let mut batch = Vec::new();
            while let Some(end) = buf.find("\n\n") {
                let frame: String = buf.drain(..end + 2).collect();
                let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data:")) else {
                    continue;
                };
                // The server's own JSON, in a known shape: pick the three
                // fields by hand (a full parse per change cost this client,
                // on the server's machine, a third of a core).
                let event = field(data, "\"event_id\":\"")
                    .and_then(|e| e.strip_prefix(prefix.as_str()))
                    .and_then(|n| n.parse::<usize>().ok());
                let at_ms = field(data, "\"at\":\"")
                    .and_then(|t| stratify_core::time::parse_rfc3339(t).ok())
                    .map(|t| t as u64);
                batch.push(Seen {
                    received,
                    received_wall,
                    event,
                    at_ms,
                    time: data.contains("\"cause\":\"time\""),
                });
            }
            sink.lock().extend(batch);
        }
    });
    let acks = Arc::new(parking_lot::Mutex::new(vec![None::<Instant>; batches]));
    let next = Arc::new(AtomicUsize::new(0));
    // Bodies are built as they are sent, stamped with the sending instant,
    // so the PING deadlines (30 s later) spread as the ingest does.
    let args = Arc::new(args);
    let sent_at = wall_ms();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (client, next, acks, args) = (client.clone(), next.clone(), acks.clone(), args.clone());
        let (url, key, expect) = (
            format!("{}/v1/events", args.url),
            args.key.clone(),
            args.batch as u64,
        );
        let interval = (args.rate > 0)
            .then(|| std::time::Duration::from_secs_f64(args.batch as f64 / args.rate as f64));
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= batches {
                    break;
                }
                if let Some(every) = interval {
                    tokio::time::sleep_until((start + every * i as u32).into()).await;
                }
                let body = live_body(&args, run_id, i, wall_ms());
                let resp = client
                    .post(&url)
                    .bearer_auth(&key)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .context("request failed")?;
                let status = resp.status();
                let answer: serde_json::Value = resp.json().await.context("answer is not JSON")?;
                if !status.is_success() || answer["accepted"].as_u64() != Some(expect) {
                    bail!("batch {i} not fully accepted ({status}): {answer}");
                }
                acks.lock()[i] = Some(Instant::now());
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    let mut peak_deadlines = 0.0f64;
    for t in tasks {
        t.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    let total = batches * args.batch;
    println!(
        "live ingest: {total} events in {secs:.2}s = {:.0} events/s (batch {} x concurrency {}, {} users, offered {})",
        total as f64 / secs,
        args.batch,
        args.concurrency,
        args.users,
        if args.rate > 0 { format!("{} events/s", args.rate) } else { "as fast as acknowledged".into() }
    );
    // Wait for the deadlines (30 s after each PING) to fire.
    let pings = args.pings.unwrap_or(args.users).min(total);
    let deadline = Instant::now() + std::time::Duration::from_secs(args.drain_seconds);
    loop {
        if let Some(d) = metric(&client, &args.url, "stratify_live_deadlines_pending").await {
            peak_deadlines = peak_deadlines.max(d);
        }
        let fired = seen.lock().iter().filter(|s| s.time).count();
        if fired >= pings || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    reader.abort();
    let seen = seen.lock();
    let acks = acks.lock();
    let mut ack_latency: Vec<f64> = seen
        .iter()
        .filter_map(|s| {
            let ack = acks.get(s.event? / args.batch).copied().flatten()?;
            Some(s.received.saturating_duration_since(ack).as_secs_f64() * 1000.0)
        })
        .collect();
    let mut lag: Vec<f64> = seen
        .iter()
        .filter(|s| s.time)
        .filter_map(|s| Some(s.received_wall.saturating_sub(s.at_ms?) as f64))
        .collect();
    let pct = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(f64::total_cmp);
        v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "ack -> change on the stream: {} changes from this run's events; p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        ack_latency.len(),
        pct(&mut ack_latency, 0.50),
        pct(&mut ack_latency, 0.99),
        pct(&mut ack_latency, 1.0)
    );
    println!(
        "deadlines: peak {peak_deadlines:.0} pending; {} time-driven changes, the {pings} PING windows among them (set over {:.1}s from {}); lateness after their instants: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        lag.len(),
        secs,
        sent_at,
        pct(&mut lag, 0.50),
        pct(&mut lag, 0.99),
        pct(&mut lag, 1.0)
    );
    Ok(())
}

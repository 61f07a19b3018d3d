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
        let props = if name == "order_placed" {
            format!(
                ",\"properties\":{{\"amount\":{}.5,\"city\":\"Pune\"}}",
                100 + n % 900
            )
        } else {
            String::new()
        };
        out.push_str(&format!(
            "{{\"event_id\":\"b{run_id}-{n}\",\"user_id\":\"user-{}\",\"name\":\"{name}\",\"timestamp\":{}{props}}}",
            n % args.users,
            1_700_000_000_000u64 + n as u64 * 7
        ));
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

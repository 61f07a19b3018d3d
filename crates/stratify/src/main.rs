//! The `stratify` binary: `serve`, `generate`, `import`, `refresh`, `rebuild`, `demo`.
//!
//! Only wiring and command-line concerns live here (flags, config layering,
//! progress bars, signals); domain logic is in the engine and the core.

mod backend;
mod config;
mod demo;
mod generate;
mod import;
mod maintain;
mod scenario;
mod serve;

use clap::{Parser, Subcommand};

/// mimalloc: the live engine and ingest allocate many small, short-lived
/// objects; glibc's malloc spent a fifth of the live worker's time in
/// free/consolidate (perf, scripts/bench-live.sh).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "stratify",
    version,
    about = "User segmentation and experimentation"
)]
struct Cli {
    /// A TOML config file (keys: addr, data_dir, max_body_bytes, max_ingest_body_bytes,
    /// request_timeout_seconds, log).
    #[arg(long, global = true, env = "STRATIFY_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the HTTP server on the embedded store.
    Serve(serve::ServeArgs),
    /// Writes a realistic, seeded synthetic data set as CSV files.
    Generate(generate::GenerateArgs),
    /// Loads CSV/NDJSON files into the store (idempotent).
    Import(import::ImportArgs),
    /// Re-evaluates every user for every dynamic segment from the event log and
    /// records any difference (run with the server stopped).
    Refresh(maintain::MaintainArgs),
    /// Reconstructs profiles, memberships and deadlines from the event log alone
    /// and corrects the stored memberships (run with the server stopped).
    Rebuild(maintain::MaintainArgs),
    /// Loads the food-delivery demo scenario (13 segments, 18 experiments, 5
    /// users with orders) into a running server through its API.
    Demo(DemoArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let settings = match config::Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    init_tracing(&settings.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::run(settings, args).await,
            Command::Generate(args) => generate::run(args),
            Command::Import(args) => import::run(settings, args).await,
            Command::Refresh(args) => maintain::refresh(settings, args).await,
            Command::Rebuild(args) => maintain::rebuild(settings, args).await,
            Command::Demo(args) => demo(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[derive(clap::Args)]
struct DemoArgs {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// An admin key.
    #[arg(long, env = "STRATIFY_ADMIN_KEY", hide_env_values = true)]
    key: String,
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    let s = scenario::apply(&args.url, &args.key).await?;
    println!(
        "Demo scenario applied to {}: {} segments, {} experiments, {} users added; {} orders sent",
        args.url, s.segments, s.experiments, s.users, s.orders
    );
    Ok(())
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

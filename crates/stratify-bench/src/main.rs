//! `stratify-bench`: the developer's load generators and benchmark set-up.
//!
//! Owns the clients that drive a running server (`ingest`, `live`), the
//! set-up of the serving benchmark over the API (`experiments-setup`) and
//! the one set-up that writes a stopped server's data directory directly
//! (`results-setup`, a million exposures in seconds). The `scripts/bench-*.sh`
//! build and call it. It is never shipped: the `stratify` binary holds the
//! product only, and nothing here may be imported by it.

mod bench;

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "stratify-bench",
    about = "Stratify's benchmark drivers (developer tool)"
)]
struct Cli {
    #[command(subcommand)]
    command: bench::BenchCommand,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
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
    match runtime.block_on(bench::run(cli.command)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

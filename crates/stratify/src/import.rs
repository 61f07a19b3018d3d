use crate::config::Settings;
use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use stratify_engine::import::{FileKind, ImportReport};
use stratify_engine::{Engine, SystemClock};

#[derive(Args)]
pub struct ImportArgs {
    /// Users CSV (`user_id` plus attribute columns).
    #[arg(long)]
    users: Option<PathBuf>,
    /// Events CSV (`user_id,event_name,timestamp`) or NDJSON (`.ndjson`/`.jsonl`).
    #[arg(long)]
    events: Option<PathBuf>,
    /// Orders CSV (`order_id,user_id,amount,city,timestamp`).
    #[arg(long)]
    orders: Option<PathBuf>,
    #[arg(long, env = "STRATIFY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Import into this PostgreSQL database instead (see `serve --postgres-url`).
    #[arg(long, env = "STRATIFY_POSTGRES_URL", hide_env_values = true)]
    postgres_url: Option<String>,
}

pub async fn run(mut settings: Settings, args: ImportArgs) -> anyhow::Result<()> {
    if let Some(dir) = args.data_dir {
        settings.data_dir = dir;
    }
    if args.users.is_none() && args.events.is_none() && args.orders.is_none() {
        anyhow::bail!("nothing to import: give --users, --events and/or --orders");
    }
    let backend =
        crate::backend::Backend::open(&settings.data_dir, args.postgres_url.as_deref()).await?;
    // Derived state is read from, and saved to, the checkpoints `serve`
    // uses: each import starts from the last one's, and so does the server.
    let config = stratify_engine::EngineConfig {
        checkpoint_dir: Some(settings.data_dir.join("checkpoints")),
        ..Default::default()
    };
    let engine =
        Engine::start_with(backend.store.clone(), Arc::new(SystemClock), None, config).await?;
    let files = files(&args.users, &args.events, &args.orders);
    // Events and orders files: about one event per 40 bytes (a CSV row of
    // an id, a name and a timestamp).
    let event_bytes: u64 = files
        .iter()
        .filter(|(kind, _)| *kind != FileKind::Users)
        .map(|(_, path)| std::fs::metadata(path).map(|m| m.len()).unwrap_or(0))
        .sum();
    let mut bulk = false;
    let mut bad = 0;
    let mut imported = Ok(());
    for (kind, path) in files {
        if kind != FileKind::Users && !bulk {
            bulk = engine.ingest.begin_bulk_import(event_bytes / 40).await?;
        }
        match import_file(&engine, kind, path).await {
            Ok(report) => bad += report.bad_rows,
            Err(e) => {
                imported = Err(e);
                break;
            }
        }
    }
    let indexes = || async {
        if !bulk {
            return Ok(None);
        }
        let start = Instant::now();
        engine.ingest.end_bulk_import().await?;
        Ok::<_, stratify_engine::EngineError>(Some(start.elapsed()))
    };
    if imported.is_err() {
        indexes().await?;
        imported?;
    }
    // The derived state is saved while the store builds its indexes:
    // neither reads what the other writes (the checkpoints are stamped with
    // the log's sequence, which the index build does not move).
    let (built, ()) = tokio::join!(indexes(), engine.shutdown());
    if let Some(took) = built? {
        println!("event log indexes built in {:.2}s", took.as_secs_f64());
    }
    drop(engine);
    backend.close();
    if bad > 0 {
        eprintln!("{bad} bad rows were skipped (see above)");
    }
    Ok(())
}

fn files<'a>(
    users: &'a Option<PathBuf>,
    events: &'a Option<PathBuf>,
    orders: &'a Option<PathBuf>,
) -> Vec<(FileKind, &'a Path)> {
    let mut out = Vec::new();
    if let Some(p) = users {
        out.push((FileKind::Users, p.as_path()));
    }
    if let Some(p) = events {
        let ndjson = p.extension().is_some_and(|e| e == "ndjson" || e == "jsonl");
        out.push((
            if ndjson {
                FileKind::EventsNdjson
            } else {
                FileKind::EventsCsv
            },
            p.as_path(),
        ));
    }
    if let Some(p) = orders {
        out.push((FileKind::Orders, p.as_path()));
    }
    out
}

pub async fn import_file(
    engine: &Engine,
    kind: FileKind,
    path: &Path,
) -> anyhow::Result<ImportReport> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let bar = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(size);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:>24} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(
            path.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let start = Instant::now();
    let progress_bar = bar.clone();
    let report = engine
        .ingest
        .import(
            kind,
            std::io::BufReader::with_capacity(1 << 20, file),
            move |bytes| progress_bar.set_position(bytes),
        )
        .await
        .with_context(|| format!("importing {}", path.display()))?;
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{}: {} rows in {:.2}s ({:.0} rows/s): {} written, {} already present, {} bad",
        path.display(),
        report.rows,
        secs,
        report.rows as f64 / secs.max(1e-9),
        report.written,
        report.unchanged,
        report.bad_rows
    );
    for e in &report.errors {
        eprintln!("  line {}: {}", e.line, e.message);
    }
    if report.bad_rows > report.errors.len() as u64 {
        eprintln!(
            "  ... and {} more bad rows",
            report.bad_rows - report.errors.len() as u64
        );
    }
    Ok(report)
}

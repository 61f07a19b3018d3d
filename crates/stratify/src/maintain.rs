//! `stratify refresh` and `stratify rebuild`: offline maintenance of the
//! live state (memberships, deadlines) in a data directory. Run them while
//! the server is stopped; the server itself keeps this state current.

use crate::config::Settings;
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;
use stratify_engine::{Engine, SystemClock};

#[derive(Args)]
pub struct MaintainArgs {
    #[arg(long, env = "STRATIFY_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

/// Re-evaluates every (user, dynamic segment) now, from the event log; any
/// membership that differs is changed and logged with cause `refresh`.
pub async fn refresh(mut settings: Settings, args: MaintainArgs) -> anyhow::Result<()> {
    if let Some(dir) = args.data_dir {
        settings.data_dir = dir;
    }
    let store = stratify_engine::open_store(&settings.data_dir)?;
    let engine = Engine::start(store.clone(), Arc::new(SystemClock), None).await?;
    let changed = engine.live().refresh().await;
    let snapshot = engine.live().snapshot().await;
    println!(
        "refreshed {} segments: {changed} memberships changed, {} pending deadlines",
        snapshot.members.len(),
        snapshot.deadlines.len()
    );
    finish(engine, store).await;
    Ok(())
}

/// Reconstructs profiles, memberships and deadlines from the event log
/// alone (ignoring the live watermark) and corrects the materialised
/// memberships where they differ.
pub async fn rebuild(mut settings: Settings, args: MaintainArgs) -> anyhow::Result<()> {
    if let Some(dir) = args.data_dir {
        settings.data_dir = dir;
    }
    let store = stratify_engine::open_store(&settings.data_dir)?;
    let before = stratify_store::ChangeLog::last_change_seq(store.as_ref()).await?;
    let engine = Engine::start_rebuilt(store.clone(), Arc::new(SystemClock)).await?;
    engine.live().sync().await;
    let after = stratify_store::ChangeLog::last_change_seq(store.as_ref()).await?;
    let snapshot = engine.live().snapshot().await;
    let memberships: usize = snapshot.members.values().map(|m| m.len()).sum();
    println!(
        "rebuilt from the event log: {memberships} memberships in {} segments, {} pending deadlines; {} memberships corrected",
        snapshot.members.len(),
        snapshot.deadlines.len(),
        after - before
    );
    finish(engine, store).await;
    Ok(())
}

async fn finish(engine: Engine, store: Arc<stratify_store::sqlite::SqliteStore>) {
    engine.shutdown().await;
    drop(engine);
    if let Ok(store) = Arc::try_unwrap(store) {
        store.close();
    }
}

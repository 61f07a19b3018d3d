//! `serve --demo`: the DuckMart data set (10 000 users, 50 000 events, 10 000
//! orders, seed 42), generated and imported through the normal import path
//! when the store is empty.

use crate::generate::write_dataset;
use stratify_core::datagen::Spec;
use stratify_engine::import::FileKind;
use stratify_engine::Engine;

pub async fn load_if_empty(engine: &Engine) -> anyhow::Result<()> {
    let counts = engine.store().counts().await?;
    if counts.users > 0 || counts.events > 0 {
        println!(
            "Demo: the store already holds {} users and {} events; nothing loaded",
            counts.users, counts.events
        );
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let spec = Spec {
        users: 10_000,
        events: 50_000,
        orders: 10_000,
        seed: 42,
        now: engine.now(),
    };
    write_dataset(dir.path(), spec)?;
    for (kind, file) in [
        (FileKind::Users, "user_attributes.csv"),
        (FileKind::EventsCsv, "user_events.csv"),
        (FileKind::Orders, "orders.csv"),
    ] {
        crate::import::import_file(engine, kind, &dir.path().join(file)).await?;
    }
    println!("Demo: loaded the DuckMart data set (seed 42)");
    Ok(())
}

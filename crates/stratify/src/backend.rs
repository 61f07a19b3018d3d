//! How `serve` and `import` pick their store: PostgreSQL when a URL is
//! given, else the embedded SQLite store in the data directory. (`refresh`
//! and `rebuild` maintain a stopped embedded store only.)

use anyhow::Context;
use std::path::Path;
use std::sync::Arc;
use stratify_store::sqlite::SqliteStore;
use stratify_store::Store;

pub struct Backend {
    pub store: Arc<dyn Store>,
    /// The embedded store, to close (flush its writer) after the last use.
    sqlite: Option<Arc<SqliteStore>>,
}

impl Backend {
    pub async fn open(data_dir: &Path, postgres_url: Option<&str>) -> anyhow::Result<Self> {
        Ok(match postgres_url {
            Some(url) => Self {
                store: Arc::new(
                    stratify_store::postgres::PgStore::connect(url)
                        .await
                        .context("cannot open the PostgreSQL store")?,
                ),
                sqlite: None,
            },
            None => {
                let store = stratify_engine::open_store(data_dir)
                    .with_context(|| format!("cannot open the store in {}", data_dir.display()))?;
                Self {
                    store: store.clone(),
                    sqlite: Some(store),
                }
            }
        })
    }

    /// Waits for the embedded store's queued writes (call once every
    /// other holder of the store is gone).
    pub fn close(self) {
        drop(self.store);
        if let Some(store) = self.sqlite {
            match Arc::try_unwrap(store) {
                Ok(store) => store.close(),
                Err(_) => {
                    tracing::warn!("store still shared at shutdown; relying on the last commit")
                }
            }
        }
    }
}

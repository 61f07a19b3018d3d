use std::sync::Arc;

/// Whatever went wrong below the engine. `Conflict` and `NotFound` are the
/// caller's fault; the rest are internal and keep their cause chain.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} already exists")]
    Conflict(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("database error")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database error")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("invalid store configuration: {0}")]
    Config(String),
    #[error("the group commit failed")]
    Commit(#[source] Arc<rusqlite::Error>),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("cannot open the data directory {path}")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A write named users that are gone: erased, or merged into another
    /// user meanwhile (`(id, merged into)`). The caller resolves the ids
    /// again and retries.
    #[error("users were merged or erased during the write")]
    UsersMoved(Vec<(String, Option<String>)>),
    #[error("cannot lock the data directory")]
    Lock(#[source] std::io::Error),
    #[error("the store is shut down")]
    Closed,
    #[error("a blocking store task failed")]
    Task(#[source] tokio::task::JoinError),
}

impl From<serde_json::Error> for StoreError {
    fn from(e: serde_json::Error) -> Self {
        StoreError::Corrupt(format!("invalid JSON in a stored column: {e}"))
    }
}

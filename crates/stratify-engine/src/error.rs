use stratify_core::ErrorCode;
use stratify_core::ValidationError;
use stratify_store::StoreError;

/// Errors of the engine, by whose fault they are.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The client sent something that breaks a rule (422).
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// No such thing (404). `code` is stable, e.g. `user_not_found`.
    #[error("{message}")]
    NotFound { code: ErrorCode, message: String },
    /// It already exists (409).
    #[error("{message}")]
    Conflict { code: ErrorCode, message: String },
    /// A service the write needs is down (503), e.g. the cluster's broker.
    #[error("{0}")]
    Unavailable(String),
    /// Below us: internal unless the store says the caller is at fault.
    #[error("storage failed")]
    Store(#[source] StoreError),
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(what) => EngineError::Conflict {
                code: ErrorCode::Conflict,
                message: format!("{what} already exists"),
            },
            StoreError::NotFound(what) => EngineError::NotFound {
                code: ErrorCode::NotFound,
                message: format!("{what} not found"),
            },
            other => EngineError::Store(other),
        }
    }
}

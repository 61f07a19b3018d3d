//! The one error type of the HTTP layer and its JSON shape (API.md, Errors).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use stratify_core::ErrorCode;
use stratify_core::ValidationError;
use stratify_engine::EngineError;

/// An error as the client sees it: a status, a stable code, a message and
/// the JSON pointer of the field at fault.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
    pub field: Option<String>,
}

impl ApiError {
    /// An error answered with its code's status (the one table,
    /// [`ErrorCode::status`]).
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let status = StatusCode::from_u16(code.status()).unwrap_or(StatusCode::BAD_REQUEST);
        Self::with_status(status, code, message)
    }

    /// An error answered with another status than its code's: a rule broken
    /// inside a document is 422 whatever its code (a per-item rejection, an
    /// unknown segment referenced by a rule), and axum's own rejections keep
    /// theirs.
    pub fn with_status(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    pub fn at(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn body(&self) -> serde_json::Value {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(f) = &self.field {
            error["field"] = json!(f);
        }
        json!({ "error": error })
    }

    pub fn unauthorized() -> Self {
        Self::new(
            ErrorCode::Unauthorized,
            "a valid API key is required (Authorization: Bearer <key> or X-API-Key)",
        )
    }

    pub fn internal() -> Self {
        Self::new(ErrorCode::InternalError, "internal error")
    }

    /// The generic error for a status that carries no JSON of its own (axum's
    /// built-in rejections, unknown routes, wrong methods).
    pub fn for_status(status: StatusCode) -> Self {
        let (code, message) = match status {
            StatusCode::NOT_FOUND => (ErrorCode::NotFound, "no such route"),
            StatusCode::METHOD_NOT_ALLOWED => (
                ErrorCode::MethodNotAllowed,
                "this route does not take that method",
            ),
            StatusCode::PAYLOAD_TOO_LARGE => (
                ErrorCode::PayloadTooLarge,
                "the request body is over the limit",
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                (ErrorCode::UnsupportedMediaType, "unsupported Content-Type")
            }
            StatusCode::BAD_REQUEST => (ErrorCode::BadRequest, "the request is malformed"),
            StatusCode::REQUEST_TIMEOUT => (ErrorCode::Timeout, "the request took too long"),
            StatusCode::UNPROCESSABLE_ENTITY => {
                (ErrorCode::InvalidRequest, "the request breaks a rule")
            }
            s if s.is_server_error() => (ErrorCode::InternalError, "internal error"),
            _ => (ErrorCode::Error, "request failed"),
        };
        Self::with_status(status, code, message)
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: e.code,
            message: e.message,
            field: e.field,
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Invalid(v) => v.into(),
            EngineError::NotFound { code, message } => Self::new(code, message),
            EngineError::Conflict { code, message } => Self::new(code, message),
            EngineError::Unavailable(message) => {
                tracing::error!(error = %message, "a write could not be handed on");
                Self::new(ErrorCode::Unavailable, message)
            }
            EngineError::Store(source) => {
                tracing::error!(error = %chain(&source), "storage failure");
                Self::internal()
            }
        }
    }
}

/// "a: b: c" from an error and its sources, for logs.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

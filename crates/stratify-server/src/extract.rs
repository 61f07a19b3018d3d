//! Extractors that turn every bad input into an [`ApiError`]: malformed JSON
//! is 400, a well-formed body that breaks a rule (wrong type, unknown or
//! missing field) is 422 with the JSON pointer of the field, an oversized
//! body is 413.

use crate::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;
use stratify_core::ErrorCode;

/// A JSON body deserialised into `T` (which should `deny_unknown_fields`).
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (kind, bytes) = read_body(req, state).await?;
        if kind != BodyKind::Json {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                "send application/json",
            ));
        }
        parse_json(&bytes).map(Body)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Json,
    Ndjson,
}

/// The raw body and its declared kind; a missing Content-Type is taken as JSON.
pub struct RawBody(pub BodyKind, pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let (kind, bytes) = read_body(req, state).await?;
        Ok(RawBody(kind, bytes))
    }
}

async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<(BodyKind, Bytes), ApiError> {
    let kind = match req
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or(""))
    {
        None => BodyKind::Json,
        Some(ct) => {
            let essence = ct
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            match essence.as_str() {
                // curl -d sends form encoding by default; a JSON body under
                // that label is still JSON, and anything else fails as such.
                "application/json" | "" | "application/x-www-form-urlencoded" | "text/plain" => BodyKind::Json,
                "application/x-ndjson" | "application/ndjson" | "application/jsonl" => BodyKind::Ndjson,
                other if other.ends_with("+json") => BodyKind::Json,
                _ => {
                    return Err(ApiError::new(ErrorCode::UnsupportedMediaType,
                        format!("unsupported Content-Type '{ct}': send application/json or application/x-ndjson"),
                    ))
                }
            }
        }
    };
    let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                "the request body is over the limit",
            )
        } else {
            ApiError::new(ErrorCode::UnreadableBody, rejection.body_text())
        }
    })?;
    Ok((kind, bytes))
}

/// Parses JSON into `T`, classifying the failure.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let pointer = to_pointer(e.path());
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => {
                let err = ApiError::new(ErrorCode::InvalidBody, strip_position(&inner.to_string()));
                if pointer.is_empty() {
                    err
                } else {
                    err.at(pointer)
                }
            }
            _ => malformed(&inner),
        }
    })?;
    de.end().map_err(|e| malformed(&e))?;
    Ok(value)
}

fn malformed(e: &serde_json::Error) -> ApiError {
    ApiError::new(
        ErrorCode::MalformedJson,
        format!("the body is not valid JSON: {e}"),
    )
}

fn strip_position(message: &str) -> String {
    match message.find(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

/// serde_path_to_error's path as an RFC 6901 pointer.
fn to_pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("/{index}")),
            Segment::Map { key } => {
                out.push_str(&format!("/{}", stratify_core::error::pointer_token(key)))
            }
            Segment::Enum { variant } => out.push_str(&format!(
                "/{}",
                stratify_core::error::pointer_token(variant)
            )),
            Segment::Unknown => out.push_str("/?"),
        }
    }
    out
}

/// Query parameters deserialised into `T`; a bad one is a 422 naming it.
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(Params)
            .map_err(|e| {
                let param = e.path().to_string();
                let message = e.into_inner().to_string();
                let err = ApiError::new(ErrorCode::InvalidQuery, message);
                if param.is_empty() || param == "." {
                    err
                } else {
                    err.at(format!("/{param}"))
                }
            })
    }
}

//! Per-key rate limits (ingest and serving) and the cap on concurrent
//! streams. Rates are token buckets on the engine's clock: `rate` requests a
//! second, with a burst of one second's worth.

use crate::ApiError;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use std::collections::HashMap;
use stratify_core::time::Millis;
use stratify_core::ErrorCode;

/// Which limit a route counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateKind {
    Ingest,
    Serving,
}

struct Bucket {
    tokens: f64,
    at: Millis,
}

/// Token buckets by (kind, key id). One entry per active key and kind, so
/// its size is bounded by the API-key cap.
#[derive(Default)]
pub struct RateLimiter {
    buckets: parking_lot::Mutex<HashMap<(RateKind, String), Bucket>>,
}

impl RateLimiter {
    /// Takes one token of `key`'s `kind` bucket at `now`, or says how many
    /// whole seconds until one is there.
    pub fn take(&self, kind: RateKind, key: &str, rate: u32, now: Millis) -> Result<(), u64> {
        let rate = f64::from(rate.max(1));
        let mut buckets = self.buckets.lock();
        let bucket = buckets.entry((kind, key.to_owned())).or_insert(Bucket {
            tokens: rate,
            at: now,
        });
        let elapsed = (now - bucket.at).max(0) as f64 / 1000.0;
        bucket.tokens = (bucket.tokens + elapsed * rate).min(rate);
        bucket.at = bucket.at.max(now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - bucket.tokens) / rate).ceil().max(1.0) as u64)
        }
    }
}

/// 429 `rate_limited` with `Retry-After`.
pub fn rate_limited(kind: RateKind, retry_after: u64) -> Response {
    let what = match kind {
        RateKind::Ingest => "ingest",
        RateKind::Serving => "serving",
    };
    let mut response = ApiError::new(
        ErrorCode::RateLimited,
        format!("this key's {what} rate limit is reached; retry after {retry_after} s"),
    )
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&retry_after.to_string()) {
        response.headers_mut().insert(header::RETRY_AFTER, v);
    }
    response
}

/// One open stream's place under `max_streams` (released on drop).
pub type StreamPermit = tokio::sync::OwnedSemaphorePermit;

/// Takes a stream place, or answers 429 `too_many_streams`.
pub fn stream_permit(
    streams: &std::sync::Arc<tokio::sync::Semaphore>,
    max: usize,
) -> Result<StreamPermit, ApiError> {
    streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            ErrorCode::TooManyStreams,
            format!("{max} streams are open (the server's max_streams); retry later"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_rate_then_refills_with_time() {
        let limiter = RateLimiter::default();
        let ok = |now| {
            (0..10)
                .filter(|_| limiter.take(RateKind::Ingest, "k", 5, now).is_ok())
                .count()
        };
        assert_eq!(ok(0), 5);
        assert_eq!(limiter.take(RateKind::Ingest, "k", 5, 0), Err(1));
        // Another key and another kind have their own buckets.
        assert!(limiter.take(RateKind::Serving, "k", 5, 0).is_ok());
        assert!(limiter.take(RateKind::Ingest, "other", 5, 0).is_ok());
        assert_eq!(ok(400), 2);
        assert_eq!(ok(10_000), 5);
    }
}

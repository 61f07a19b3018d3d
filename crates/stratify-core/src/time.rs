//! Instants. Stratify stores time as milliseconds since the Unix epoch (UTC)
//! and speaks RFC 3339 with millisecond precision on the wire.

use crate::ErrorCode;
use crate::ValidationError;
use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, Utc};

/// Milliseconds since 1970-01-01T00:00:00Z.
pub type Millis = i64;

/// Earliest instant accepted (1970-01-01) and latest (year 9999): anything
/// outside is a client error, not something to store.
pub const MIN_MILLIS: Millis = 0;
pub const MAX_MILLIS: Millis = 253_402_300_799_999;

/// Parses an RFC 3339 instant (`2026-05-01T12:00:00Z`, offsets allowed).
pub fn parse_rfc3339(text: &str) -> Result<Millis, ValidationError> {
    let dt = DateTime::parse_from_rfc3339(text).map_err(|_| {
        ValidationError::new(
            ErrorCode::InvalidTimestamp,
            format!("'{}' is not an RFC 3339 timestamp", truncate(text, 64)),
        )
    })?;
    in_range(dt.timestamp_millis())
}

/// Parses the timestamp forms accepted in files: RFC 3339, `YYYY-MM-DD HH:MM:SS[.fff]`
/// (taken as UTC, the form SQL engines print), a date `YYYY-MM-DD` (midnight UTC),
/// or epoch milliseconds.
pub fn parse_flexible(text: &str) -> Result<Millis, ValidationError> {
    let t = text.trim();
    if let Ok(ms) = t.parse::<i64>() {
        return in_range(ms);
    }
    if let Ok(ms) = parse_rfc3339(t) {
        return Ok(ms);
    }
    for fmt in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f"] {
        if let Ok(naive) = NaiveDateTime::parse_from_str(t, fmt) {
            return in_range(naive.and_utc().timestamp_millis());
        }
    }
    if let Some(ms) = NaiveDate::parse_from_str(t, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|dt| dt.and_utc().timestamp_millis())
    {
        return in_range(ms);
    }
    Err(ValidationError::new(
        ErrorCode::InvalidTimestamp,
        format!(
            "'{}' is not a timestamp (RFC 3339, 'YYYY-MM-DD HH:MM:SS' or epoch ms)",
            truncate(t, 64)
        ),
    ))
}

/// Checks epoch milliseconds are within the supported range.
pub fn in_range(ms: Millis) -> Result<Millis, ValidationError> {
    if (MIN_MILLIS..=MAX_MILLIS).contains(&ms) {
        Ok(ms)
    } else {
        Err(ValidationError::new(
            ErrorCode::InvalidTimestamp,
            "timestamp is outside 1970-01-01..9999-12-31",
        ))
    }
}

/// Formats as RFC 3339 UTC with milliseconds: `2026-05-01T12:00:00.000Z`.
pub fn format_rfc3339(ms: Millis) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_with_milliseconds() {
        let ms = parse_rfc3339("2026-05-01T12:00:00.250+02:00").unwrap_or_default();
        assert_eq!(format_rfc3339(ms), "2026-05-01T10:00:00.250Z");
    }

    #[test]
    fn flexible_parsing_accepts_sql_dates_and_epoch_ms() {
        assert_eq!(parse_flexible("1970-01-02").ok(), Some(86_400_000));
        assert_eq!(parse_flexible("1970-01-01 00:00:01").ok(), Some(1000));
        assert_eq!(parse_flexible("1500").ok(), Some(1500));
        assert!(parse_flexible("yesterday").is_err());
        assert!(parse_flexible("-5").is_err());
    }

    #[test]
    fn truncation_never_splits_a_character() {
        assert_eq!(truncate("ééé", 2), "éé");
    }
}

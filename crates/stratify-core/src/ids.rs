//! Typed identifiers, parsed once at the edge and trusted inside.

use crate::ErrorCode;
use crate::ValidationError;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest user id accepted, in bytes.
pub const MAX_USER_ID_BYTES: usize = 256;
/// Longest event name accepted, in bytes.
pub const MAX_EVENT_NAME_BYTES: usize = 128;
/// Longest client-supplied event id accepted, in bytes.
pub const MAX_EVENT_ID_BYTES: usize = 128;

fn check_text(value: &str, what: &str, max: usize, code: ErrorCode) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Err(ValidationError::new(
            code,
            format!("{what} must not be empty"),
        ));
    }
    if value.len() > max {
        return Err(ValidationError::new(
            code,
            format!("{what} is longer than {max} bytes"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(ValidationError::new(
            code,
            format!("{what} must not contain control characters"),
        ));
    }
    Ok(())
}

/// A user's external id: 1–256 bytes of text without control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(String);

impl UserId {
    pub fn parse(value: impl Into<String>) -> Result<Self, ValidationError> {
        let value = value.into();
        check_text(
            &value,
            "user_id",
            MAX_USER_ID_BYTES,
            ErrorCode::InvalidUserId,
        )?;
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An event's name (`LOGIN`, `order_placed`): 1–128 bytes, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EventName(String);

impl EventName {
    pub fn parse(value: impl Into<String>) -> Result<Self, ValidationError> {
        let value = value.into();
        check_text(
            &value,
            "event name",
            MAX_EVENT_NAME_BYTES,
            ErrorCode::InvalidEventName,
        )?;
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A client-supplied idempotency key for an event.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EventId(String);

impl EventId {
    pub fn parse(value: impl Into<String>) -> Result<Self, ValidationError> {
        let value = value.into();
        check_text(
            &value,
            "event_id",
            MAX_EVENT_ID_BYTES,
            ErrorCode::InvalidEventId,
        )?;
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! string_newtype_impls {
    ($($t:ident),*) => {$(
        impl TryFrom<String> for $t {
            type Error = ValidationError;
            fn try_from(value: String) -> Result<Self, Self::Error> {
                Self::parse(value)
            }
        }
        impl From<$t> for String {
            fn from(value: $t) -> String {
                value.0
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    )*};
}
string_newtype_impls!(UserId, EventName, EventId);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_reject_empty_long_and_control_text() {
        assert!(UserId::parse("").is_err());
        assert!(UserId::parse("a".repeat(257)).is_err());
        assert!(UserId::parse("a\nb").is_err());
        assert_eq!(
            UserId::parse("user_42").map(|u| u.to_string()).ok(),
            Some("user_42".into())
        );
    }

    #[test]
    fn event_names_keep_their_case() {
        assert_eq!(
            EventName::parse("LOGIN").map(|n| n.to_string()).ok(),
            Some("LOGIN".into())
        );
        assert_eq!(
            EventName::parse("").map_err(|e| e.code.as_str()),
            Err("invalid_event_name")
        );
    }
}

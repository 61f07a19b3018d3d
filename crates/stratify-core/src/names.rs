//! Limits on the human text of configuration objects (segments,
//! experiments): names and descriptions.

use crate::error::{ErrorCode, ValidationError};

/// Longest description, in bytes.
pub const MAX_DESCRIPTION: usize = 1024;

/// A name: 1–128 characters of text, trimmed.
pub fn name(name: &str) -> Result<String, ValidationError> {
    let name = name.trim();
    if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
        return Err(ValidationError::new(
            ErrorCode::InvalidName,
            "name is 1–128 characters of text",
        )
        .at("/name"));
    }
    Ok(name.to_owned())
}

/// An optional description of at most [`MAX_DESCRIPTION`] bytes.
pub fn description(d: Option<String>) -> Result<Option<String>, ValidationError> {
    match d {
        Some(d) if d.len() > MAX_DESCRIPTION => Err(ValidationError::new(
            ErrorCode::InvalidDescription,
            "description is at most 1024 bytes",
        )
        .at("/description")),
        other => Ok(other),
    }
}

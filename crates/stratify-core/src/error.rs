//! The one error type of the pure core: an input that breaks a rule.

use std::fmt;

/// A well-formed input that breaks a rule. Always the client's fault.
///
/// `code` is stable (clients match on it); `field` is a JSON pointer
/// (RFC 6901) relative to the document that was validated, when one field is
/// at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationError {
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
}

impl ValidationError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            field: None,
        }
    }

    pub fn at(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// Prefixes the pointer with `prefix` (a pointer to the enclosing node),
    /// so errors found inside a sub-document point into the whole document.
    pub fn within(mut self, prefix: &str) -> Self {
        self.field = Some(match self.field.take() {
            Some(f) => format!("{prefix}{f}"),
            None => prefix.to_owned(),
        });
        self
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{} ({}): {}", self.code, field, self.message),
            None => write!(f, "{}: {}", self.code, self.message),
        }
    }
}

/// Escapes one reference token of a JSON pointer (RFC 6901 §3).
pub fn pointer_token(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointer_tokens_escape_tilde_before_slash() {
        assert_eq!(pointer_token("a/b~c"), "a~1b~0c");
    }

    #[test]
    fn within_prefixes_the_field_pointer() {
        let e = ValidationError::new("x", "m")
            .at("/name")
            .within("/events/3");
        assert_eq!(e.field.as_deref(), Some("/events/3/name"));
        let e = ValidationError::new("x", "m").within("/events/3");
        assert_eq!(e.field.as_deref(), Some("/events/3"));
    }
}

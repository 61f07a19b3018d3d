//! The one error type of the pure core (an input that breaks a rule) and
//! the table of every error code a client can see.

use std::fmt;

/// Declares [`ErrorCode`]: each row a variant, its wire code, its HTTP status
/// and one line of documentation (shown in the OpenAPI document).
macro_rules! error_codes {
    ($($variant:ident $code:literal $status:literal $doc:literal;)*) => {
        /// Every stable error code (API.md, Errors), with the HTTP status it
        /// is answered with. Clients match on [`ErrorCode::as_str`]; a code
        /// never changes its meaning or its status.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum ErrorCode {
            $(#[doc = $doc] $variant,)*
        }

        impl ErrorCode {
            /// Every code, in table order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The code on the wire (`snake_case`).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $code,)*
                }
            }

            /// The HTTP status an error with this code is answered with.
            pub const fn status(self) -> u16 {
                match self {
                    $(ErrorCode::$variant => $status,)*
                }
            }

            /// What the code means, in one line.
            pub const fn doc(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $doc,)*
                }
            }
        }
    };
}

// BEGIN ERROR CODES
error_codes! {
    ApiKeyNotFound "api_key_not_found" 404 "No api key with that id or key.";
    BadRequest "bad_request" 400 "Bad request: the message says what and why.";
    BatchTooLarge "batch_too_large" 413 "Over a documented limit (batch too large).";
    Conflict "conflict" 409 "Conflict: the message says what and why.";
    CsrfFailed "csrf_failed" 403 "Csrf failed: the message says what and why.";
    DuplicateVariant "duplicate_variant" 422 "Duplicate variant: the message says what and why.";
    DynamicSegment "dynamic_segment" 409 "Dynamic segment: the message says what and why.";
    EmptyFilters "empty_filters" 422 "Empty filters: the message says what and why.";
    EmptyRecord "empty_record" 422 "Empty record: the message says what and why.";
    Error "error" 400 "Error: the message says what and why.";
    EventTypeExists "event_type_exists" 409 "Another one already has this: event type exists.";
    EventTypeNotFound "event_type_not_found" 404 "No event type with that id or key.";
    ExperimentKeyTaken "experiment_key_taken" 409 "Another one already has this: experiment key taken.";
    ExperimentNotFound "experiment_not_found" 404 "No experiment with that id or key.";
    ExtraColumn "extra_column" 422 "Extra column: the message says what and why.";
    Forbidden "forbidden" 403 "Forbidden: the message says what and why.";
    ImmutableKey "immutable_key" 422 "Immutable key: the message says what and why.";
    InternalError "internal_error" 500 "Internal error: the message says what and why.";
    InvalidAfter "invalid_after" 422 "The after given is not valid; the message says why and `field` points at it.";
    InvalidAgg "invalid_agg" 422 "The agg given is not valid; the message says why and `field` points at it.";
    InvalidAmount "invalid_amount" 422 "The amount given is not valid; the message says why and `field` points at it.";
    InvalidArm "invalid_arm" 422 "The arm given is not valid; the message says why and `field` points at it.";
    InvalidArms "invalid_arms" 422 "The arms given is not valid; the message says why and `field` points at it.";
    InvalidAsOf "invalid_as_of" 422 "The as of given is not valid; the message says why and `field` points at it.";
    InvalidBody "invalid_body" 422 "The body given is not valid; the message says why and `field` points at it.";
    InvalidBucket "invalid_bucket" 422 "The bucket given is not valid; the message says why and `field` points at it.";
    InvalidCity "invalid_city" 422 "The city given is not valid; the message says why and `field` points at it.";
    InvalidConditions "invalid_conditions" 422 "The conditions given is not valid; the message says why and `field` points at it.";
    InvalidCount "invalid_count" 422 "The count given is not valid; the message says why and `field` points at it.";
    InvalidCoverage "invalid_coverage" 422 "The coverage given is not valid; the message says why and `field` points at it.";
    InvalidCursor "invalid_cursor" 422 "The cursor given is not valid; the message says why and `field` points at it.";
    InvalidDescription "invalid_description" 422 "The description given is not valid; the message says why and `field` points at it.";
    InvalidEvent "invalid_event" 422 "The event given is not valid; the message says why and `field` points at it.";
    InvalidEventId "invalid_event_id" 422 "The event id given is not valid; the message says why and `field` points at it.";
    InvalidEventName "invalid_event_name" 422 "The event name given is not valid; the message says why and `field` points at it.";
    InvalidField "invalid_field" 422 "The field given is not valid; the message says why and `field` points at it.";
    InvalidFieldName "invalid_field_name" 422 "The field name given is not valid; the message says why and `field` points at it.";
    InvalidFilters "invalid_filters" 422 "The filters given is not valid; the message says why and `field` points at it.";
    InvalidHashAttribute "invalid_hash_attribute" 422 "The hash attribute given is not valid; the message says why and `field` points at it.";
    InvalidHashVersion "invalid_hash_version" 422 "The hash version given is not valid; the message says why and `field` points at it.";
    InvalidKey "invalid_key" 422 "The key given is not valid; the message says why and `field` points at it.";
    InvalidLimit "invalid_limit" 422 "The limit given is not valid; the message says why and `field` points at it.";
    InvalidMetrics "invalid_metrics" 422 "The metrics given is not valid; the message says why and `field` points at it.";
    InvalidName "invalid_name" 422 "The name given is not valid; the message says why and `field` points at it.";
    InvalidNamespace "invalid_namespace" 422 "The namespace given is not valid; the message says why and `field` points at it.";
    InvalidOp "invalid_op" 422 "The op given is not valid; the message says why and `field` points at it.";
    InvalidOperator "invalid_operator" 422 "The operator given is not valid; the message says why and `field` points at it.";
    InvalidOrder "invalid_order" 422 "The order given is not valid; the message says why and `field` points at it.";
    InvalidProperty "invalid_property" 422 "The property given is not valid; the message says why and `field` points at it.";
    InvalidQuery "invalid_query" 422 "The query given is not valid; the message says why and `field` points at it.";
    InvalidRange "invalid_range" 422 "The range given is not valid; the message says why and `field` points at it.";
    InvalidRefresh "invalid_refresh" 422 "The refresh given is not valid; the message says why and `field` points at it.";
    InvalidRequest "invalid_request" 422 "The request given is not valid; the message says why and `field` points at it.";
    InvalidRule "invalid_rule" 422 "The rule given is not valid; the message says why and `field` points at it.";
    InvalidSchedule "invalid_schedule" 422 "The schedule given is not valid; the message says why and `field` points at it.";
    InvalidSecret "invalid_secret" 422 "The secret given is not valid; the message says why and `field` points at it.";
    InvalidSeed "invalid_seed" 422 "The seed given is not valid; the message says why and `field` points at it.";
    InvalidSegment "invalid_segment" 422 "The segment given is not valid; the message says why and `field` points at it.";
    InvalidSegmentIds "invalid_segment_ids" 422 "The segment ids given is not valid; the message says why and `field` points at it.";
    InvalidSegmentRef "invalid_segment_ref" 422 "The segment ref given is not valid; the message says why and `field` points at it.";
    InvalidTimestamp "invalid_timestamp" 422 "The timestamp given is not valid; the message says why and `field` points at it.";
    InvalidTransition "invalid_transition" 409 "The transition given is not valid; the message says why and `field` points at it.";
    InvalidUrl "invalid_url" 422 "The url given is not valid; the message says why and `field` points at it.";
    InvalidUserId "invalid_user_id" 422 "The user id given is not valid; the message says why and `field` points at it.";
    InvalidValue "invalid_value" 422 "A value has the wrong type or is out of its range.";
    InvalidVariants "invalid_variants" 422 "The variants given is not valid; the message says why and `field` points at it.";
    InvalidWeight "invalid_weight" 422 "The weight given is not valid; the message says why and `field` points at it.";
    InvalidWeights "invalid_weights" 422 "The weights given is not valid; the message says why and `field` points at it.";
    InvalidWhere "invalid_where" 422 "The where given is not valid; the message says why and `field` points at it.";
    InvalidWindow "invalid_window" 422 "The window given is not valid; the message says why and `field` points at it.";
    LengthMismatch "length_mismatch" 422 "Length mismatch: the message says what and why.";
    MalformedBody "malformed_body" 400 "Malformed body: the message says what and why.";
    MalformedJson "malformed_json" 400 "Malformed json: the message says what and why.";
    MethodNotAllowed "method_not_allowed" 405 "Method not allowed: the message says what and why.";
    MetricNotFound "metric_not_found" 404 "No metric with that id or key.";
    MissingField "missing_field" 422 "Missing field: the message says what and why.";
    MissingProperty "missing_property" 422 "Missing property: the message says what and why.";
    MissingValue "missing_value" 422 "Missing value: the message says what and why.";
    NameMismatch "name_mismatch" 422 "Name mismatch: the message says what and why.";
    NotFound "not_found" 404 "Not found: the message says what and why.";
    OutOfRange "out_of_range" 422 "Out of range: the message says what and why.";
    PayloadTooLarge "payload_too_large" 413 "Over a documented limit (payload too large).";
    RuleTooDeep "rule_too_deep" 422 "Over a documented limit (rule too deep).";
    RuleTooLarge "rule_too_large" 422 "Over a documented limit (rule too large).";
    SchemaTooLarge "schema_too_large" 422 "Over a documented limit (schema too large).";
    SegmentCycle "segment_cycle" 422 "Segment cycle: the message says what and why.";
    SegmentInUse "segment_in_use" 409 "Segment in use: the message says what and why.";
    SegmentNameTaken "segment_name_taken" 409 "Another one already has this: segment name taken.";
    SegmentNotAttached "segment_not_attached" 404 "Segment not attached: the message says what and why.";
    SegmentNotFound "segment_not_found" 404 "No segment with that id or key.";
    StaticSegment "static_segment" 422 "Static segment: the message says what and why.";
    Timeout "timeout" 408 "Timeout: the message says what and why.";
    TooLarge "too_large" 422 "Over a documented limit (too large).";
    TooLong "too_long" 422 "Over a documented limit (too long).";
    TooManyExperiments "too_many_experiments" 422 "Over a documented limit (too many experiments).";
    TooManyFields "too_many_fields" 422 "Over a documented limit (too many fields).";
    TooManyIds "too_many_ids" 422 "Over a documented limit (too many ids).";
    TooManyRerandomizations "too_many_rerandomizations" 409 "Over a documented limit (too many rerandomizations).";
    TooManyWebhooks "too_many_webhooks" 409 "Over a documented limit (too many webhooks).";
    TypeMismatch "type_mismatch" 422 "Type mismatch: the message says what and why.";
    Unauthorized "unauthorized" 401 "Unauthorized: the message says what and why.";
    Unavailable "unavailable" 503 "Unavailable: the message says what and why.";
    UnexpectedField "unexpected_field" 422 "Unexpected field: the message says what and why.";
    UnexpectedProperty "unexpected_property" 422 "Unexpected property: the message says what and why.";
    UnknownField "unknown_field" 422 "Unknown field: the message says what and why.";
    UnreadableBody "unreadable_body" 400 "Unreadable body: the message says what and why.";
    UnreadableFile "unreadable_file" 422 "Unreadable file: the message says what and why.";
    UnsupportedMediaType "unsupported_media_type" 415 "Unsupported media type: the message says what and why.";
    UserExists "user_exists" 409 "Another one already has this: user exists.";
    UserNotFound "user_not_found" 404 "No user with that id or key.";
    ValueTooDeep "value_too_deep" 422 "Over a documented limit (value too deep).";
    WebhookNotFound "webhook_not_found" 404 "No webhook with that id or key.";
}
// END ERROR CODES

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<str> for ErrorCode {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

/// A well-formed input that breaks a rule. Always the client's fault.
///
/// `code` is stable (clients match on it); `field` is a JSON pointer
/// (RFC 6901) relative to the document that was validated, when one field is
/// at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationError {
    pub code: ErrorCode,
    pub message: String,
    pub field: Option<String>,
}

impl ValidationError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
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
    fn error_codes_are_unique_snake_case_with_a_client_or_service_status_and_a_doc_line() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            let s = code.as_str();
            assert!(seen.insert(s), "{s} twice");
            assert!(
                !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{s} is not snake_case"
            );
            assert!(
                (400..600).contains(&code.status()),
                "{s}: {}",
                code.status()
            );
            assert!(
                code.doc().ends_with('.') && code.doc().len() > 10,
                "{s}: {:?}",
                code.doc()
            );
        }
    }

    #[test]
    fn pointer_tokens_escape_tilde_before_slash() {
        assert_eq!(pointer_token("a/b~c"), "a~1b~0c");
    }

    #[test]
    fn within_prefixes_the_field_pointer() {
        let e = ValidationError::new(ErrorCode::InvalidValue, "m")
            .at("/name")
            .within("/events/3");
        assert_eq!(e.field.as_deref(), Some("/events/3/name"));
        let e = ValidationError::new(ErrorCode::InvalidValue, "m").within("/events/3");
        assert_eq!(e.field.as_deref(), Some("/events/3"));
    }
}

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
    ApiKeyNotFound "api_key_not_found" 404 "No API key with that id.";
    BadRequest "bad_request" 400 "The request is malformed in a way the server cannot read further.";
    BatchTooLarge "batch_too_large" 413 "An ingest batch holds more events than one request may.";
    Conflict "conflict" 409 "The thing being created already exists.";
    CsrfFailed "csrf_failed" 403 "A dashboard form did not come from the dashboard's own page (missing or wrong CSRF token).";
    DuplicateVariant "duplicate_variant" 422 "Two variants of an experiment have the same key.";
    DynamicSegment "dynamic_segment" 409 "Members of a dynamic segment follow its rules and cannot be set by hand.";
    EmptyFilters "empty_filters" 422 "A DuckMart query gives neither a user filter nor an event filter.";
    EmptyRecord "empty_record" 422 "A Kafka record has no payload (counted in ingest status).";
    Error "error" 400 "A request failed with a status that has no more specific code.";
    EventTypeExists "event_type_exists" 409 "An event type with that name is already declared.";
    EventTypeNotFound "event_type_not_found" 404 "No event type with that name.";
    ExperimentKeyTaken "experiment_key_taken" 409 "Another experiment already has that key.";
    ExperimentNotFound "experiment_not_found" 404 "No experiment with that id or key (422 when an experiment named inside a request body is unknown).";
    ExtraColumn "extra_column" 422 "A CSV row has more columns than the header row.";
    Forbidden "forbidden" 403 "The API key's role does not allow this route.";
    IdentityConflict "identity_conflict" 409 "The anonymous id is already merged into another user, or the known id is an alias of the anonymous one.";
    ImmutableKey "immutable_key" 422 "An experiment's key cannot change once it is created.";
    InternalError "internal_error" 500 "The server failed; the cause is in its log, not in the answer.";
    InvalidAfter "invalid_after" 422 "`after` is not a change-log sequence number (0 or more).";
    InvalidAgg "invalid_agg" 422 "A behavioural rule's aggregate is not one of count, sum, avg, min, max, seconds_since_last, seconds_since_first.";
    InvalidAmount "invalid_amount" 422 "An order's amount is not a finite, non-negative number.";
    InvalidArm "invalid_arm" 422 "A calculator arm has missing or impossible counts, means or variances.";
    InvalidArms "invalid_arms" 422 "A calculator call needs between two and the maximum number of arms.";
    InvalidAsOf "invalid_as_of" 422 "`as_of` is not an RFC 3339 instant or epoch milliseconds.";
    InvalidBody "invalid_body" 422 "The JSON body has the wrong shape for this route.";
    InvalidBucket "invalid_bucket" 422 "A size-history bucket is not `hour` or `day`.";
    InvalidCity "invalid_city" 422 "An order's city is empty or too long.";
    InvalidConditions "invalid_conditions" 422 "A rule's `conditions` is not an array of rule nodes.";
    InvalidCount "invalid_count" 422 "A rule's count is not a whole number of 0 or more.";
    InvalidCoverage "invalid_coverage" 422 "An experiment's coverage is not between 0 and 1.";
    InvalidCursor "invalid_cursor" 422 "A paging cursor is malformed or its user no longer exists; start again.";
    InvalidDescription "invalid_description" 422 "A description is not a string or is too long.";
    InvalidEvent "invalid_event" 422 "An event is not a JSON object with the event fields.";
    InvalidEventId "invalid_event_id" 422 "An event id is empty, too long or holds control characters.";
    InvalidEventName "invalid_event_name" 422 "An event name is empty, too long or holds control characters.";
    InvalidField "invalid_field" 422 "A field name is empty, too long, not a string or holds a forbidden character.";
    InvalidFieldName "invalid_field_name" 422 "An attribute or property name in a schema is not allowed.";
    InvalidFilters "invalid_filters" 422 "DuckMart filters have the wrong shape.";
    InvalidHashAttribute "invalid_hash_attribute" 422 "An experiment's hash attribute is not an attribute name.";
    InvalidHashVersion "invalid_hash_version" 422 "An experiment's hash version is not 1 or 2.";
    InvalidIdentity "invalid_identity" 422 "An identify call names one id as both the anonymous and the known user.";
    InvalidKey "invalid_key" 422 "A key is not 1–64 letters, digits, `_`, `-` or `.`.";
    InvalidLimit "invalid_limit" 422 "A page `limit` is outside the route's range.";
    InvalidMetrics "invalid_metrics" 422 "A results query names no metric or more than allowed.";
    InvalidName "invalid_name" 422 "A name is empty or not a string.";
    InvalidNamespace "invalid_namespace" 422 "An experiment's namespace is not a name with a range inside [0, 1].";
    InvalidOp "invalid_op" 422 "A rule's comparison operator is unknown or does not fit the value.";
    InvalidOperator "invalid_operator" 422 "A rule's logical operator is not AND, OR or NOT.";
    InvalidOrder "invalid_order" 422 "`order` is not `asc` or `desc`.";
    InvalidProperty "invalid_property" 422 "A property name is not allowed where it is used.";
    InvalidQuery "invalid_query" 422 "A query-string parameter has the wrong type or value (`field` names it).";
    InvalidRange "invalid_range" 422 "A time range ends before it starts.";
    InvalidRefresh "invalid_refresh" 422 "A Kafka refresh record names no user id (counted in ingest status).";
    InvalidRequest "invalid_request" 422 "The request breaks a rule (a rejection with no more specific code).";
    InvalidRule "invalid_rule" 422 "A rule is not a rule node in any of the accepted formats.";
    InvalidSchedule "invalid_schedule" 422 "An experiment's start and end are not instants in order.";
    InvalidSecret "invalid_secret" 422 "A webhook secret is not `whsec_` and the base64 of 24 to 64 bytes.";
    InvalidSeed "invalid_seed" 422 "An experiment's seed is empty or too long.";
    InvalidSegment "invalid_segment" 422 "A segment gives both or neither of rules and user ids, or has the wrong shape.";
    InvalidSegmentIds "invalid_segment_ids" 422 "An experiment's segment ids are not a list of segment ids.";
    InvalidSegmentRef "invalid_segment_ref" 422 "A rule's `segment` reference is not a segment id.";
    InvalidTimestamp "invalid_timestamp" 422 "A timestamp is not RFC 3339 or epoch milliseconds, or is out of range.";
    InvalidTransition "invalid_transition" 409 "An experiment cannot make this transition from its current status, or changed meanwhile.";
    InvalidUrl "invalid_url" 422 "A webhook URL is not an http(s):// URL of at most 2048 bytes, or targets a refused (loopback, link-local, private, unspecified) address.";
    InvalidUserId "invalid_user_id" 422 "A user id is empty, too long or holds control characters.";
    InvalidValue "invalid_value" 422 "A value has the wrong type or is out of its range.";
    InvalidVariants "invalid_variants" 422 "An experiment has no variants or more than allowed, or its variants have the wrong shape.";
    InvalidWeight "invalid_weight" 422 "A variant's weight is not a finite number of 0 or more.";
    InvalidWeights "invalid_weights" 422 "The variants' weights are percentages that do not sum to 100.";
    InvalidWhere "invalid_where" 422 "A behavioural rule's `where` is not an array of {field, op, value}.";
    InvalidWindow "invalid_window" 422 "A time window is not a duration such as `30s`, `14d`, within the limit.";
    LimitReached "limit_reached" 409 "Creating one more would pass a configured cap (segments, experiments, metrics, API keys, event types); the message names the setting.";
    LengthMismatch "length_mismatch" 422 "The SRM check's observed counts and weights differ in length.";
    MalformedBody "malformed_body" 400 "The body cannot be read as the route's format (JSON, NDJSON or text).";
    MalformedJson "malformed_json" 400 "The body is not JSON (422 for one item of a batch, which is rejected alone).";
    MethodNotAllowed "method_not_allowed" 405 "The route does not take that method.";
    MetricNotFound "metric_not_found" 404 "No metric with that id or key.";
    MissingField "missing_field" 422 "A required field is absent or empty.";
    MissingProperty "missing_property" 422 "An event lacks a property its event type requires.";
    MissingValue "missing_value" 422 "A rule's operator needs a value and none is given.";
    NameMismatch "name_mismatch" 422 "The body's name differs from the name in the path.";
    NotFound "not_found" 404 "No such route, or the thing named does not exist.";
    OutOfRange "out_of_range" 422 "A number is outside the range its parameter allows.";
    PayloadTooLarge "payload_too_large" 413 "The request body is over the route's limit.";
    RateLimited "rate_limited" 429 "The key sent more ingest or serving requests per second than the server allows; retry after `Retry-After` seconds.";
    ReferenceGraphTooLarge "reference_graph_too_large" 422 "A rule's segment references reach more rule nodes, or a longer chain of references, than allowed.";
    RuleTooDeep "rule_too_deep" 422 "A rule nests deeper than the allowed depth.";
    RuleTooLarge "rule_too_large" 422 "A rule has more nodes than allowed.";
    SchemaTooLarge "schema_too_large" 422 "A schema declares more fields than allowed.";
    SegmentCycle "segment_cycle" 422 "A segment would refer to itself, directly or through others.";
    SegmentInUse "segment_in_use" 409 "A segment another segment or an experiment refers to cannot be deleted.";
    SegmentNameTaken "segment_name_taken" 409 "Another segment already has that name.";
    SegmentNotAttached "segment_not_attached" 404 "The segment is not attached to that experiment.";
    SegmentNotFound "segment_not_found" 404 "No segment with that id (422 when a rule or experiment refers to an unknown segment).";
    StaticSegment "static_segment" 422 "A static segment has no rules; change its members instead.";
    Timeout "timeout" 408 "The request took longer than the server's request timeout.";
    TooLarge "too_large" 422 "A document (attributes, properties) is over its size limit in bytes.";
    TooLong "too_long" 422 "A text (name, description) is over its length limit.";
    TooManyExperiments "too_many_experiments" 422 "An eligibility check names more experiments than allowed.";
    TooManyFields "too_many_fields" 422 "A document has more fields than allowed.";
    TooManyIds "too_many_ids" 422 "A request names more user ids than allowed.";
    TooManyRerandomizations "too_many_rerandomizations" 409 "An experiment was re-randomised as often as allowed.";
    TooManyStreams "too_many_streams" 429 "As many SSE and WebSocket streams are open as the server's `max_streams` allows.";
    TooManyWebhooks "too_many_webhooks" 409 "The webhook limit is reached.";
    TypeMismatch "type_mismatch" 422 "A value does not have the type its schema declares.";
    Unauthorized "unauthorized" 401 "No API key, or one that is unknown or revoked.";
    Unavailable "unavailable" 503 "A service the write needs is down (the cluster's broker); retry.";
    UnexpectedField "unexpected_field" 422 "A field is given that this kind does not take (say, a property on a count metric).";
    UnexpectedProperty "unexpected_property" 422 "An aggregate that takes no property is given one.";
    UnknownField "unknown_field" 422 "A field this route does not know (typos are refused, not ignored).";
    UnreadableBody "unreadable_body" 400 "The request body could not be read.";
    UnreadableFile "unreadable_file" 422 "An import file cannot be read or parsed.";
    UnsupportedMediaType "unsupported_media_type" 415 "The Content-Type is not one this route reads.";
    UserExists "user_exists" 409 "A user with that id already exists.";
    UserNotFound "user_not_found" 404 "No user with that id.";
    ValueTooDeep "value_too_deep" 422 "A JSON value nests deeper than allowed.";
    WebhookNotFound "webhook_not_found" 404 "No webhook with that id.";
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

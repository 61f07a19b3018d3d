//! Optional schemas that tighten validation: the attribute schema of users
//! (`PUT /v1/attributes/schema`) and event types (`POST /v1/event-types`).
//!
//! Without a schema every JSON value is accepted as it is. With one, declared
//! fields must have their declared type; fields not declared are still
//! accepted (schemas describe what is known, they do not close the set), and
//! `required` properties of an event type must be present.

use crate::error::pointer_token;
use crate::time;
use crate::ErrorCode;
use crate::ValidationError;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Most fields one schema may declare.
pub const MAX_SCHEMA_FIELDS: usize = 200;
/// Longest field name in a schema, attribute map or property map.
pub const MAX_FIELD_NAME_BYTES: usize = 64;

/// The type of one declared field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    String,
    Number,
    Boolean,
    /// A calendar date as a string, `YYYY-MM-DD`.
    Date,
    /// An instant as an RFC 3339 string or epoch milliseconds.
    Timestamp,
    /// A string with one `@`, a non-empty local part and a dotted domain.
    Email,
}

impl FieldType {
    pub fn name(self) -> &'static str {
        match self {
            Self::String => "string",
            Self::Number => "number",
            Self::Boolean => "boolean",
            Self::Date => "date",
            Self::Timestamp => "timestamp",
            Self::Email => "email",
        }
    }

    /// Whether `value` is of this type. `null` never is: a field that may be
    /// absent is simply left out.
    pub fn accepts(self, value: &Value) -> bool {
        match (self, value) {
            (Self::String, Value::String(_)) => true,
            (Self::Number, Value::Number(_)) => true,
            (Self::Boolean, Value::Bool(_)) => true,
            (Self::Date, Value::String(s)) => is_date(s),
            (Self::Timestamp, Value::String(s)) => time::parse_rfc3339(s).is_ok(),
            (Self::Timestamp, Value::Number(n)) => {
                n.as_i64().is_some_and(|ms| time::in_range(ms).is_ok())
            }
            (Self::Email, Value::String(s)) => is_email(s),
            _ => false,
        }
    }
}

/// `YYYY-MM-DD` naming a real day.
pub fn is_date(s: &str) -> bool {
    s.len() == 10 && chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok()
}

fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !s.chars().any(char::is_whitespace)
        && s.len() <= 254
}

/// The declared type of each user attribute.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttributeSchema {
    pub attributes: BTreeMap<String, AttributeSpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttributeSpec {
    #[serde(rename = "type")]
    pub field_type: FieldType,
}

impl AttributeSchema {
    pub fn validate_definition(&self) -> Result<(), ValidationError> {
        check_field_names(self.attributes.keys(), "/attributes")
    }

    /// Checks declared attributes in `attrs` have their declared type.
    /// `pointer` locates `attrs` in the request document.
    pub fn check(&self, attrs: &Map<String, Value>, pointer: &str) -> Result<(), ValidationError> {
        for (name, spec) in &self.attributes {
            if let Some(value) = attrs.get(name) {
                if !value.is_null() && !spec.field_type.accepts(value) {
                    return Err(type_mismatch(name, spec.field_type, value)
                        .at(format!("{pointer}/{}", pointer_token(name))));
                }
            }
        }
        Ok(())
    }
}

/// An event type: its name and the schema of its properties.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventTypeSchema {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub properties: BTreeMap<String, PropertySpec>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PropertySpec {
    #[serde(rename = "type")]
    pub field_type: FieldType,
    #[serde(default)]
    pub required: bool,
}

impl EventTypeSchema {
    pub fn validate_definition(&self) -> Result<(), ValidationError> {
        crate::ids::EventName::parse(self.name.clone()).map_err(|e| e.at("/name"))?;
        if self.description.as_ref().is_some_and(|d| d.len() > 1024) {
            return Err(ValidationError::new(
                ErrorCode::InvalidDescription,
                "description is longer than 1024 bytes",
            )
            .at("/description"));
        }
        check_field_names(self.properties.keys(), "/properties")
    }

    /// Checks an event's properties against this type.
    pub fn check(
        &self,
        props: Option<&Map<String, Value>>,
        pointer: &str,
    ) -> Result<(), ValidationError> {
        for (name, spec) in &self.properties {
            let field = format!("{pointer}/{}", pointer_token(name));
            match props.and_then(|p| p.get(name)).filter(|v| !v.is_null()) {
                None if spec.required => {
                    return Err(ValidationError::new(
                        ErrorCode::MissingProperty,
                        format!("event type '{}' requires property '{name}'", self.name),
                    )
                    .at(field))
                }
                None => {}
                Some(value) if !spec.field_type.accepts(value) => {
                    return Err(type_mismatch(name, spec.field_type, value).at(field))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

fn check_field_names<'a>(
    names: impl ExactSizeIterator<Item = &'a String>,
    pointer: &str,
) -> Result<(), ValidationError> {
    if names.len() > MAX_SCHEMA_FIELDS {
        return Err(ValidationError::new(
            ErrorCode::SchemaTooLarge,
            format!("a schema declares at most {MAX_SCHEMA_FIELDS} fields"),
        )
        .at(pointer));
    }
    for name in names {
        check_field_name(name).map_err(|e| e.at(format!("{pointer}/{}", pointer_token(name))))?;
    }
    Ok(())
}

/// A field name: 1–64 bytes, no control characters.
pub fn check_field_name(name: &str) -> Result<(), ValidationError> {
    if name.is_empty() || name.len() > MAX_FIELD_NAME_BYTES || name.chars().any(char::is_control) {
        return Err(ValidationError::new(
            ErrorCode::InvalidFieldName,
            format!("field names are 1–{MAX_FIELD_NAME_BYTES} bytes without control characters"),
        ));
    }
    Ok(())
}

fn type_mismatch(name: &str, expected: FieldType, value: &Value) -> ValidationError {
    ValidationError::new(
        ErrorCode::TypeMismatch,
        format!(
            "'{name}' must be of type {}, got {}",
            expected.name(),
            json_type_name(value)
        ),
    )
}

/// The JSON type of a value, for messages.
pub fn json_type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn order_type() -> EventTypeSchema {
        serde_json::from_value(json!({
            "name": "order_placed",
            "properties": {"amount": {"type": "number", "required": true}, "city": {"type": "string"}}
        }))
        .unwrap_or_else(|e| unreachable!("{e}"))
    }

    #[test]
    fn required_property_missing_is_rejected_with_its_pointer() {
        let err = order_type().check(
            Some(json!({"city": "Pune"}).as_object().unwrap_or(&Map::new())),
            "/properties",
        );
        let err = err.err().unwrap_or_else(|| unreachable!());
        assert_eq!(err.code, "missing_property");
        assert_eq!(err.field.as_deref(), Some("/properties/amount"));
    }

    #[test]
    fn wrong_type_is_rejected_and_undeclared_properties_pass() {
        let t = order_type();
        let bad = json!({"amount": "12"});
        assert_eq!(
            t.check(bad.as_object(), "/properties")
                .map_err(|e| e.code.as_str()),
            Err("type_mismatch")
        );
        let ok = json!({"amount": 12.5, "coupon": "X"});
        assert!(t.check(ok.as_object(), "/properties").is_ok());
    }

    #[test]
    fn field_types_accept_exactly_their_values() {
        assert!(FieldType::Date.accepts(&json!("2024-02-29")));
        assert!(!FieldType::Date.accepts(&json!("2023-02-29")));
        assert!(FieldType::Email.accepts(&json!("a@b.co")));
        assert!(!FieldType::Email.accepts(&json!("a@b")));
        assert!(!FieldType::Email.accepts(&json!("a b@c.d")));
        assert!(FieldType::Timestamp.accepts(&json!(1_700_000_000_000i64)));
        assert!(FieldType::Timestamp.accepts(&json!("2026-01-01T00:00:00Z")));
        assert!(!FieldType::Number.accepts(&json!("1")));
        assert!(!FieldType::Boolean.accepts(&json!(null)));
    }

    #[test]
    fn unknown_schema_keys_are_refused() {
        let r: Result<EventTypeSchema, _> =
            serde_json::from_value(json!({"name": "x", "props": {}}));
        assert!(r.is_err());
    }
}

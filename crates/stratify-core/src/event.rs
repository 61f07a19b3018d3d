//! Behavioral events as accepted at the edge.
//!
//! Wire form (API.md): `{event_id?, user_id, name, timestamp?, properties?}`.
//! `timestamp` is RFC 3339 text or epoch milliseconds and defaults to the
//! receiving instant; unknown top-level fields are refused so that a typo
//! (`"propeties"`) is an error, not silently lost data.

use crate::attributes::check_map;
use crate::hash::{event_id_key, StableHasher};
use crate::ids::{EventId, EventName, UserId};
use crate::schema::json_type_name;
use crate::time::{self, Millis};
use crate::ErrorCode;
use crate::ValidationError;
use serde_json::{Map, Value};

/// Most properties one event may carry.
pub const MAX_PROPERTIES: usize = 64;
/// Largest encoded size of one event's properties, in bytes.
pub const MAX_PROPERTIES_BYTES: usize = 8 * 1024;
/// Most events in one ingest request (JSON batch or NDJSON body).
pub const MAX_BATCH_EVENTS: usize = 10_000;

/// The event name `POST /v1/orders` produces and the built-in order fields read.
pub const ORDER_PLACED: &str = "order_placed";

/// A validated event, ready to be appended to the log.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event_id: Option<EventId>,
    pub user_id: UserId,
    pub name: EventName,
    pub timestamp: Millis,
    pub properties: Option<Map<String, Value>>,
    /// Idempotency key: derived from `event_id`, or from the import row; `None`
    /// means the event is always new.
    pub dedupe_key: Option<i64>,
}

impl NewEvent {
    /// Validates one event document. `now` is the default timestamp.
    pub fn from_json(value: Value, now: Millis) -> Result<Self, ValidationError> {
        let Value::Object(mut obj) = value else {
            return Err(ValidationError::new(
                ErrorCode::InvalidEvent,
                format!("an event is a JSON object, got {}", json_type_name(&value)),
            ));
        };
        if let Some(unknown) = obj.keys().find(|k| {
            !matches!(
                k.as_str(),
                "event_id" | "user_id" | "name" | "timestamp" | "properties"
            )
        }) {
            return Err(ValidationError::new(
                ErrorCode::UnknownField,
                format!("unknown field '{unknown}'"),
            )
            .at(format!("/{}", crate::error::pointer_token(unknown))));
        }
        let user_id = match obj.remove("user_id") {
            Some(Value::String(s)) => UserId::parse(s).map_err(|e| e.at("/user_id"))?,
            Some(other) => return Err(expected("user_id", "a string", &other)),
            None => {
                return Err(
                    ValidationError::new(ErrorCode::MissingField, "user_id is required")
                        .at("/user_id"),
                )
            }
        };
        let name = match obj.remove("name") {
            Some(Value::String(s)) => EventName::parse(s).map_err(|e| e.at("/name"))?,
            Some(other) => return Err(expected("name", "a string", &other)),
            None => {
                return Err(
                    ValidationError::new(ErrorCode::MissingField, "name is required").at("/name"),
                )
            }
        };
        let event_id = match obj.remove("event_id") {
            Some(Value::String(s)) => Some(EventId::parse(s).map_err(|e| e.at("/event_id"))?),
            Some(Value::Number(n)) => {
                Some(EventId::parse(n.to_string()).map_err(|e| e.at("/event_id"))?)
            }
            Some(Value::Null) | None => None,
            Some(other) => return Err(expected("event_id", "a string", &other)),
        };
        let timestamp = match obj.remove("timestamp") {
            None | Some(Value::Null) => now,
            Some(Value::String(s)) => time::parse_rfc3339(&s).map_err(|e| e.at("/timestamp"))?,
            Some(Value::Number(n)) => match n.as_i64() {
                Some(ms) => time::in_range(ms).map_err(|e| e.at("/timestamp"))?,
                None => {
                    return Err(ValidationError::new(
                        ErrorCode::InvalidTimestamp,
                        "epoch milliseconds must be an integer",
                    )
                    .at("/timestamp"))
                }
            },
            Some(other) => {
                return Err(expected(
                    "timestamp",
                    "RFC 3339 text or epoch milliseconds",
                    &other,
                ))
            }
        };
        let properties = match obj.remove("properties") {
            None | Some(Value::Null) => None,
            Some(Value::Object(map)) => {
                check_map(
                    &map,
                    "/properties",
                    MAX_PROPERTIES,
                    MAX_PROPERTIES_BYTES,
                    "properties",
                )?;
                (!map.is_empty()).then_some(map)
            }
            Some(other) => return Err(expected("properties", "an object", &other)),
        };
        let dedupe_key = event_id.as_ref().map(|id| event_id_key(id.as_str()));
        Ok(Self {
            event_id,
            user_id,
            name,
            timestamp,
            properties,
            dedupe_key,
        })
    }

    /// The event as a document [`NewEvent::from_json`] reads back unchanged
    /// (the timestamp in epoch milliseconds), e.g. to hand it to another node.
    pub fn to_json(&self) -> Value {
        let mut obj = Map::with_capacity(5);
        if let Some(id) = &self.event_id {
            obj.insert("event_id".into(), Value::String(id.as_str().to_owned()));
        }
        obj.insert(
            "user_id".into(),
            Value::String(self.user_id.as_str().to_owned()),
        );
        obj.insert("name".into(), Value::String(self.name.as_str().to_owned()));
        obj.insert("timestamp".into(), Value::from(self.timestamp));
        if let Some(p) = &self.properties {
            obj.insert("properties".into(), Value::Object(p.clone()));
        }
        Value::Object(obj)
    }

    /// An `order_placed` event from `POST /v1/orders`. An `order_id` becomes
    /// the event id `order:<order_id>`, so re-sending an order is idempotent
    /// and order ids cannot collide with other clients' event ids.
    pub fn from_order_json(value: Value, now: Millis) -> Result<Self, ValidationError> {
        let Value::Object(mut obj) = value else {
            return Err(ValidationError::new(
                ErrorCode::InvalidOrder,
                "an order is a JSON object",
            ));
        };
        if let Some(unknown) = obj.keys().find(|k| {
            !matches!(
                k.as_str(),
                "order_id" | "user_id" | "amount" | "city" | "timestamp"
            )
        }) {
            return Err(ValidationError::new(
                ErrorCode::UnknownField,
                format!("unknown field '{unknown}'"),
            )
            .at(format!("/{}", crate::error::pointer_token(unknown))));
        }
        let amount = match obj.remove("amount") {
            Some(Value::Number(n)) if n.as_f64().is_some_and(|a| a.is_finite() && a >= 0.0) => {
                Value::Number(n)
            }
            Some(Value::Number(_)) => {
                return Err(ValidationError::new(
                    ErrorCode::InvalidAmount,
                    "amount must be a finite number >= 0",
                )
                .at("/amount"))
            }
            Some(other) => return Err(expected("amount", "a number", &other)),
            None => {
                return Err(
                    ValidationError::new(ErrorCode::MissingField, "amount is required")
                        .at("/amount"),
                )
            }
        };
        let city = match obj.remove("city") {
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 128 => Value::String(s),
            Some(Value::String(_)) => {
                return Err(ValidationError::new(
                    ErrorCode::InvalidCity,
                    "city is 1–128 bytes of text",
                )
                .at("/city"))
            }
            Some(other) => return Err(expected("city", "a string", &other)),
            None => {
                return Err(
                    ValidationError::new(ErrorCode::MissingField, "city is required").at("/city"),
                )
            }
        };
        let order_id = match obj.remove("order_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(Value::Number(n)) => Some(n.to_string()),
            Some(other) => return Err(expected("order_id", "a string", &other)),
        };
        let mut properties = Map::new();
        properties.insert("amount".into(), amount);
        properties.insert("city".into(), city);
        let mut event = Map::new();
        if let Some(id) = &order_id {
            properties.insert("order_id".into(), Value::String(id.clone()));
            event.insert("event_id".into(), Value::String(format!("order:{id}")));
        }
        event.insert(
            "user_id".into(),
            obj.remove("user_id").unwrap_or(Value::Null),
        );
        event.insert("name".into(), Value::String(ORDER_PLACED.into()));
        if let Some(ts) = obj.remove("timestamp") {
            event.insert("timestamp".into(), ts);
        }
        event.insert("properties".into(), Value::Object(properties));
        Self::from_json(Value::Object(event), now).map_err(|mut e| {
            // Point at the order's own field names.
            if e.field.as_deref() == Some("/event_id") {
                e.field = Some("/order_id".into());
            }
            e
        })
    }
}

/// The idempotency key of a row of an imported file: the file kind, the row's
/// content and its line number. Re-importing the same file (or a file that
/// only grew at the end) adds nothing twice, while identical rows at
/// different lines stay distinct events, as they were in the file.
pub fn import_row_key(kind: &str, line: u64, fields: &[&str]) -> i64 {
    let mut h = StableHasher::default();
    h.field(b"import")
        .field(kind.as_bytes())
        .field(&line.to_le_bytes());
    for f in fields {
        h.field(f.as_bytes());
    }
    h.finish()
}

fn expected(field: &str, what: &str, got: &Value) -> ValidationError {
    ValidationError::new(
        ErrorCode::TypeMismatch,
        format!("{field} must be {what}, got {}", json_type_name(got)),
    )
    .at(format!("/{field}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: Millis = 1_700_000_000_000;

    #[test]
    fn to_json_reads_back_as_the_same_event() {
        let docs = [
            json!({"user_id": "u1", "name": "LOGIN"}),
            json!({"event_id": "e-7", "user_id": "u2", "name": "order_placed",
                   "timestamp": "2024-03-01T10:00:00.250Z", "properties": {"amount": 12.5, "city": "Oslo"}}),
        ];
        for doc in docs {
            let e = NewEvent::from_json(doc, NOW).unwrap_or_else(|e| unreachable!("{e}"));
            let back =
                NewEvent::from_json(e.to_json(), NOW + 1).unwrap_or_else(|e| unreachable!("{e}"));
            assert_eq!(back, e);
        }
        let order = NewEvent::from_order_json(
            json!({"order_id": "o1", "user_id": "u3", "amount": 30, "city": "Lima"}),
            NOW,
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        let back =
            NewEvent::from_json(order.to_json(), NOW).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(back, order, "an order keeps its idempotency key");
    }

    #[test]
    fn minimal_event_defaults_its_timestamp_to_now() {
        let e = NewEvent::from_json(json!({"user_id": "u1", "name": "LOGIN"}), NOW)
            .unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(e.timestamp, NOW);
        assert_eq!(e.dedupe_key, None);
        assert_eq!(e.properties, None);
    }

    #[test]
    fn timestamps_accept_rfc3339_and_epoch_ms_only() {
        let ok = NewEvent::from_json(
            json!({"user_id": "u", "name": "n", "timestamp": "1970-01-01T00:00:01Z"}),
            NOW,
        );
        assert_eq!(ok.map(|e| e.timestamp).ok(), Some(1000));
        let ms = NewEvent::from_json(json!({"user_id": "u", "name": "n", "timestamp": 5}), NOW);
        assert_eq!(ms.map(|e| e.timestamp).ok(), Some(5));
        for bad in [json!(1.5), json!("yesterday"), json!(true), json!(-1)] {
            let err =
                NewEvent::from_json(json!({"user_id": "u", "name": "n", "timestamp": bad}), NOW)
                    .err();
            assert_eq!(err.and_then(|e| e.field).as_deref(), Some("/timestamp"));
        }
    }

    #[test]
    fn unknown_and_mistyped_fields_point_at_the_field() {
        let err =
            NewEvent::from_json(json!({"user_id": "u", "name": "n", "propeties": {}}), NOW).err();
        assert_eq!(
            err.map(|e| (e.code.as_str(), e.field)),
            Some(("unknown_field", Some("/propeties".into())))
        );
        let err = NewEvent::from_json(json!({"user_id": 7, "name": "n"}), NOW).err();
        assert_eq!(err.map(|e| e.field), Some(Some("/user_id".into())));
        let err = NewEvent::from_json(json!(["x"]), NOW).err();
        assert_eq!(err.map(|e| e.code.as_str()), Some("invalid_event"));
    }

    #[test]
    fn event_ids_give_stable_dedupe_keys() {
        let a =
            NewEvent::from_json(json!({"event_id": "e1", "user_id": "u", "name": "n"}), NOW).ok();
        let b = NewEvent::from_json(
            json!({"event_id": "e1", "user_id": "v", "name": "m"}),
            NOW + 1,
        )
        .ok();
        assert!(a.as_ref().and_then(|e| e.dedupe_key).is_some());
        assert_eq!(a.and_then(|e| e.dedupe_key), b.and_then(|e| e.dedupe_key));
    }

    #[test]
    fn orders_become_order_placed_events_with_amount_and_city() {
        let e = NewEvent::from_order_json(
            json!({"user_id": "u", "amount": 250.5, "city": "Pune", "order_id": 17}),
            NOW,
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(e.name.as_str(), ORDER_PLACED);
        assert_eq!(
            e.event_id.map(|i| i.to_string()).as_deref(),
            Some("order:17")
        );
        assert_eq!(
            e.properties,
            json!({"amount": 250.5, "city": "Pune", "order_id": "17"})
                .as_object()
                .cloned()
        );
        let neg =
            NewEvent::from_order_json(json!({"user_id": "u", "amount": -1, "city": "Pune"}), NOW)
                .err();
        assert_eq!(neg.map(|e| e.code.as_str()), Some("invalid_amount"));
    }

    #[test]
    fn import_row_keys_depend_on_line_and_content() {
        let a = import_row_key("events", 2, &["u", "LOGIN", "t"]);
        assert_eq!(a, import_row_key("events", 2, &["u", "LOGIN", "t"]));
        assert_ne!(a, import_row_key("events", 3, &["u", "LOGIN", "t"]));
        assert_ne!(a, import_row_key("orders", 2, &["u", "LOGIN", "t"]));
    }
}

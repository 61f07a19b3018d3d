//! User attributes: a JSON object whose values keep their JSON types, bounded
//! in size, plus the type inference used by CSV import.

use crate::error::pointer_token;
use crate::schema::{check_field_name, is_date};
use crate::ErrorCode;
use crate::ValidationError;
use serde_json::{Map, Number, Value};

/// Most attributes one user may have.
pub const MAX_ATTRIBUTES: usize = 100;
/// Largest encoded size of one user's attributes, in bytes.
pub const MAX_ATTRIBUTES_BYTES: usize = 16 * 1024;
/// Deepest nesting of arrays/objects inside one attribute or property value.
pub const MAX_VALUE_DEPTH: usize = 4;

/// Checks an attribute map's size, names and nesting. `pointer` locates the
/// map in the request document.
pub fn check(attrs: &Map<String, Value>, pointer: &str) -> Result<(), ValidationError> {
    check_map(
        attrs,
        pointer,
        MAX_ATTRIBUTES,
        MAX_ATTRIBUTES_BYTES,
        "attributes",
    )
}

/// Shared limits of attribute maps and event property maps.
pub fn check_map(
    map: &Map<String, Value>,
    pointer: &str,
    max_fields: usize,
    max_bytes: usize,
    what: &str,
) -> Result<(), ValidationError> {
    if map.len() > max_fields {
        return Err(ValidationError::new(
            ErrorCode::TooManyFields,
            format!("at most {max_fields} {what} are allowed"),
        )
        .at(pointer));
    }
    let mut bytes = 2usize;
    for (name, value) in map {
        let field = || format!("{pointer}/{}", pointer_token(name));
        check_field_name(name).map_err(|e| e.at(field()))?;
        if depth(value) > MAX_VALUE_DEPTH {
            return Err(ValidationError::new(
                ErrorCode::ValueTooDeep,
                format!("values nest at most {MAX_VALUE_DEPTH} levels"),
            )
            .at(field()));
        }
        bytes += name.len() + encoded_len(value) + 4;
        if bytes > max_bytes {
            return Err(ValidationError::new(
                ErrorCode::TooLarge,
                format!("{what} take at most {max_bytes} bytes encoded"),
            )
            .at(pointer));
        }
    }
    Ok(())
}

fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn encoded_len(value: &Value) -> usize {
    match value {
        Value::Null => 4,
        Value::Bool(_) => 5,
        Value::Number(_) => 24,
        Value::String(s) => s.len() + 2,
        Value::Array(items) => 2 + items.iter().map(|v| encoded_len(v) + 1).sum::<usize>(),
        Value::Object(map) => {
            2 + map
                .iter()
                .map(|(k, v)| k.len() + 4 + encoded_len(v))
                .sum::<usize>()
        }
    }
}

/// Infers the JSON type of a CSV cell: integers and decimals become numbers,
/// `true`/`false` booleans, ISO dates stay strings (`YYYY-MM-DD` sorts and
/// compares correctly as text), an empty cell is absent (`None`), and
/// everything else is a string.
pub fn infer_csv_value(cell: &str) -> Option<Value> {
    let t = cell.trim();
    if t.is_empty() {
        return None;
    }
    if t.eq_ignore_ascii_case("true") {
        return Some(Value::Bool(true));
    }
    if t.eq_ignore_ascii_case("false") {
        return Some(Value::Bool(false));
    }
    if looks_numeric(t) {
        if let Ok(i) = t.parse::<i64>() {
            return Some(Value::Number(i.into()));
        }
        if let Some(n) = t.parse::<f64>().ok().and_then(Number::from_f64) {
            return Some(Value::Number(n));
        }
    }
    if is_date(t) {
        return Some(Value::String(t.to_owned()));
    }
    Some(Value::String(cell.to_owned()))
}

/// Only plain decimal notation counts as a number: "inf", "NaN", "1e5",
/// "0x10" and zip codes with leading zeros ("02134") stay strings.
fn looks_numeric(t: &str) -> bool {
    let digits = t.strip_prefix('-').unwrap_or(t);
    let (int, frac) = match digits.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (digits, None),
    };
    !int.is_empty()
        && int.bytes().all(|b| b.is_ascii_digit())
        && (int == "0" || !int.starts_with('0'))
        && frac.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn csv_cells_become_typed_json() {
        assert_eq!(infer_csv_value("42"), Some(json!(42)));
        assert_eq!(infer_csv_value("-3.5"), Some(json!(-3.5)));
        assert_eq!(infer_csv_value("TRUE"), Some(json!(true)));
        assert_eq!(infer_csv_value("2024-03-15"), Some(json!("2024-03-15")));
        assert_eq!(infer_csv_value("California"), Some(json!("California")));
        assert_eq!(infer_csv_value("02134"), Some(json!("02134")));
        assert_eq!(infer_csv_value("1e5"), Some(json!("1e5")));
        assert_eq!(infer_csv_value("NaN"), Some(json!("NaN")));
        assert_eq!(infer_csv_value("  "), None);
    }

    #[test]
    fn oversized_and_deep_maps_are_refused() {
        let mut many = Map::new();
        for i in 0..=MAX_ATTRIBUTES {
            many.insert(format!("a{i}"), json!(1));
        }
        assert_eq!(
            check(&many, "/attributes").map_err(|e| e.code.as_str()),
            Err("too_many_fields")
        );
        let deep = json!({"x": [[[[[1]]]]]});
        let err = check(deep.as_object().unwrap_or(&Map::new()), "/attributes").err();
        assert_eq!(err.and_then(|e| e.field), Some("/attributes/x".to_owned()));
        let big = json!({"x": "y".repeat(MAX_ATTRIBUTES_BYTES)});
        assert_eq!(
            check(big.as_object().unwrap_or(&Map::new()), "").map_err(|e| e.code.as_str()),
            Err("too_large")
        );
    }
}

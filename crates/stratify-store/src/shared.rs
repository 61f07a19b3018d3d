//! Row-to-model helpers both backends use.

use crate::model::{Attributes, MembershipRecord, MetricEvent, MetricSink};
use crate::{Result, StoreError};
use serde_json::{Map, Value};

/// `null` removes an attribute; anything else sets it.
pub(crate) fn merge_into(target: &mut Attributes, patch: &Attributes) {
    for (k, v) in patch {
        if v.is_null() {
            target.remove(k);
        } else {
            target.insert(k.clone(), v.clone());
        }
    }
}

/// A merged person's attributes: the visitor's, overlaid by the known
/// user's (the known user wins where both have one).
pub(crate) fn merged_attributes(visitor: Attributes, known: Attributes) -> Attributes {
    let mut merged = visitor;
    merged.extend(known);
    merged
}

/// Which way a merge goes once both ids' alias entries are read: `Err` is
/// the answer when no merge happens, `Ok` the user to merge into (the known
/// id, or the user it is itself an alias of).
pub(crate) fn merge_target(
    anonymous: &str,
    known: &str,
    anonymous_is_alias_of: Option<String>,
    known_is_alias_of: Option<String>,
) -> std::result::Result<String, crate::model::Identified> {
    use crate::model::Identified;
    if let Some(target) = anonymous_is_alias_of {
        let into = known_is_alias_of.as_deref().unwrap_or(known);
        return Err(if target == into {
            Identified::Already
        } else {
            Identified::AliasOfOther(target)
        });
    }
    match known_is_alias_of {
        Some(target) if target == anonymous => Err(Identified::KnownIsAlias),
        Some(target) => Ok(target),
        None => Ok(known.to_owned()),
    }
}

/// The attributes a create or replace stores: nulls dropped.
pub(crate) fn without_nulls(attributes: Attributes) -> Attributes {
    attributes
        .into_iter()
        .filter(|(_, v)| !v.is_null())
        .collect()
}

/// An event's stored properties: a JSON object, or nothing.
pub(crate) fn properties_object(
    seq: i64,
    value: Option<Value>,
) -> Result<Option<Map<String, Value>>> {
    match value {
        None => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(StoreError::Corrupt(format!(
            "event {seq} properties are not an object"
        ))),
    }
}

/// Folds a user's changes `(segment_id, entered, at)`, oldest first, into
/// stays (each entry paired with the exit that follows it), newest first.
pub(crate) fn stays(
    rows: impl IntoIterator<Item = Result<(String, bool, i64)>>,
    limit: u32,
) -> Result<Vec<MembershipRecord>> {
    let mut stays: Vec<MembershipRecord> = Vec::new();
    let mut open: std::collections::HashMap<String, usize> = Default::default();
    for row in rows {
        let (segment_id, entered, at) = row?;
        if entered {
            open.insert(segment_id.clone(), stays.len());
            stays.push(MembershipRecord {
                segment_id,
                entered_at: at,
                exited_at: None,
            });
        } else if let Some(i) = open.remove(&segment_id) {
            stays[i].exited_at = Some(at);
        }
    }
    stays.reverse();
    stays.truncate(limit as usize);
    Ok(stays)
}

/// Finds the position of `name` in `variants`, appending it when new.
pub(crate) fn variant_index(variants: &mut Vec<String>, name: &str) -> u16 {
    let index = match variants.iter().position(|v| v == name) {
        Some(i) => i,
        None => {
            variants.push(name.to_owned());
            variants.len() - 1
        }
    };
    u16::try_from(index).unwrap_or(u16::MAX)
}

/// Events sent to a metric sink at a time.
const SCAN_CHUNK: usize = 8192;

/// Hands a metric scan's events to its sink in chunks of [`SCAN_CHUNK`].
pub(crate) struct Chunks<'a> {
    sink: &'a MetricSink,
    chunk: Vec<MetricEvent>,
    sent: u64,
}

impl<'a> Chunks<'a> {
    pub(crate) fn new(sink: &'a MetricSink) -> Self {
        Self {
            sink,
            chunk: Vec::with_capacity(SCAN_CHUNK),
            sent: 0,
        }
    }

    pub(crate) fn push(&mut self, event: MetricEvent) {
        self.chunk.push(event);
        if self.chunk.len() == SCAN_CHUNK {
            self.flush();
        }
    }

    /// Sends what is left; returns how many events were sent in all.
    pub(crate) fn finish(mut self) -> u64 {
        self.flush();
        self.sent
    }

    fn flush(&mut self) {
        if !self.chunk.is_empty() {
            self.sent += self.chunk.len() as u64;
            (self.sink)(&self.chunk);
            self.chunk.clear();
        }
    }
}

/// Takes a lease that is new, expired, or the holder's own (both dialects;
/// numbered parameters: name, holder, now, until).
pub(crate) const HOLD_LEASE: &str =
    "INSERT INTO leases (name, holder, expires_at, cursor) VALUES ($1, $2, $4, 0) \
     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
     WHERE leases.holder = excluded.holder OR leases.expires_at < $3 RETURNING cursor";
/// Moves a lease's cursor for its holder (name, holder, cursor).
pub(crate) const ADVANCE_LEASE: &str =
    "UPDATE leases SET cursor = $3 WHERE name = $1 AND holder = $2";

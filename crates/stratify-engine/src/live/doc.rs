//! Compact named values for the live state: a user's attributes and an
//! event's properties as one boxed slice of (key, value) sorted by key, the
//! keys shared process-wide. A JSON object costs a tree node, a string per
//! key and spare capacity; this costs the entries.

use parking_lot::Mutex;
use serde_json::{Map, Value};
use std::collections::HashSet;
use std::sync::{Arc, LazyLock};
use stratify_core::codec::{DecodeError, Decoded, Decoder, Encoder};
use stratify_core::rules::Fields;

/// Most distinct keys shared; past it a new key is held by its documents
/// alone (a hostile stream of distinct keys cannot grow the table).
const MAX_SHARED_KEYS: usize = 65_536;

static KEYS: LazyLock<Mutex<HashSet<Arc<str>, foldhash::fast::RandomState>>> =
    LazyLock::new(Default::default);

fn key(k: &str) -> Arc<str> {
    let mut keys = KEYS.lock();
    if let Some(shared) = keys.get(k) {
        return shared.clone();
    }
    let new: Arc<str> = Arc::from(k);
    if keys.len() < MAX_SHARED_KEYS {
        keys.insert(new.clone());
    }
    new
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Doc(Box<[(Arc<str>, Value)]>);

impl Doc {
    pub fn from_map(map: Map<String, Value>) -> Self {
        let mut entries: Vec<(Arc<str>, Value)> =
            map.into_iter().map(|(k, v)| (key(&k), v)).collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Self(entries.into_boxed_slice())
    }

    /// Sets each key of `changes`; a null removes it.
    pub fn merge(&mut self, changes: Map<String, Value>) {
        let mut entries = std::mem::take(&mut self.0).into_vec();
        for (k, v) in changes {
            match entries.binary_search_by(|e| (*e.0).cmp(k.as_str())) {
                Ok(i) if v.is_null() => {
                    entries.remove(i);
                }
                Ok(i) => entries[i].1 = v,
                Err(_) if v.is_null() => {}
                Err(i) => entries.insert(i, (key(&k), v)),
            }
        }
        self.0 = entries.into_boxed_slice();
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Doc {
    pub fn encode<W: std::io::Write>(&self, e: &mut Encoder<W>) -> std::io::Result<()> {
        e.len(self.0.len())?;
        for (k, v) in self.0.iter() {
            e.str(k)?;
            e.value(v)?;
        }
        Ok(())
    }

    /// Reads a document written by [`Doc::encode`] (keys shared again).
    pub fn decode<R: std::io::Read>(d: &mut Decoder<R>) -> Decoded<Self> {
        let n = d.len(9)?;
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            let k = d.string()?;
            entries.push((key(&k), d.value()?));
        }
        if !entries.is_sorted_by(|a, b| a.0 < b.0) {
            return Err(DecodeError::Malformed("document keys"));
        }
        Ok(Self(entries.into_boxed_slice()))
    }
}

impl Fields for Doc {
    fn field(&self, name: &str) -> Option<&Value> {
        self.0
            .binary_search_by(|e| (*e.0).cmp(name))
            .ok()
            .map(|i| &self.0[i].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn reads_as_the_object_and_merges_as_a_patch() {
        let mut d = Doc::from_map(map(json!({"plan": "pro", "age": 30, "tags": ["a"]})));
        assert_eq!(d.field("plan"), Some(&json!("pro")));
        assert_eq!(d.field("tags"), Some(&json!(["a"])));
        assert_eq!(d.field("missing"), None);
        d.merge(map(
            json!({"plan": null, "city": "Pune", "age": 31, "gone": null}),
        ));
        assert_eq!(d.field("plan"), None);
        assert_eq!(d.field("city"), Some(&json!("Pune")));
        assert_eq!(d.field("age"), Some(&json!(31)));
        assert_eq!(d.len(), 3);
        // Keys are shared between documents.
        let other = Doc::from_map(map(json!({"city": "Delhi"})));
        let k = |d: &Doc| d.0.iter().find(|e| &*e.0 == "city").map(|e| e.0.clone());
        assert!(Arc::ptr_eq(&k(&d).expect("key"), &k(&other).expect("key")));
    }

    proptest! {
        /// A document built and patched answers every key as the JSON
        /// object built and patched the same way.
        #[test]
        fn a_doc_answers_as_the_object_it_stands_for(
            start in prop::collection::btree_map("[a-e]{1,2}", -5i64..5, 0..8),
            patches in prop::collection::vec(
                prop::collection::btree_map("[a-e]{1,2}", prop::option::of(-5i64..5), 0..5), 0..4),
        ) {
            let mut object: Map<String, Value> =
                start.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
            let mut doc = Doc::from_map(object.clone());
            for p in patches {
                let patch: Map<String, Value> =
                    p.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
                for (k, v) in &patch {
                    if v.is_null() { object.remove(k); } else { object.insert(k.clone(), v.clone()); }
                }
                doc.merge(patch);
            }
            prop_assert_eq!(doc.len(), object.len());
            for k in ["a", "b", "c", "d", "e", "ab", "ee", "zz"] {
                prop_assert_eq!(doc.field(k), object.get(k));
            }
        }
    }
}

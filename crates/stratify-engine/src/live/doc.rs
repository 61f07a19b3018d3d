//! Compact named values for the live state: a user's attributes and an
//! event's properties. A document is its *shape* (its sorted keys, one list
//! shared by every document with exactly those keys) and one pointer per
//! value, scalar values shared process-wide. A million users with the same
//! seven attributes then hold one key list and, mostly, shared values: the
//! eight-byte pointers are what each user costs, where a JSON object costs a
//! tree node, a string per key and a copy of every value.
//!
//! Both tables are bounded (a hostile stream of distinct keys or values
//! cannot grow them): when one is full, entries no document holds any more
//! are dropped, and if most are still held the table starts over; documents
//! keep their own pointers either way, so sharing is only ever lost, never
//! correctness.

use parking_lot::Mutex;
use serde_json::{Map, Value};
use std::borrow::Borrow;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, LazyLock};
use stratify_core::codec::{DecodeError, Decoded, Decoder, Encoder};
use stratify_core::rules::Fields;

/// Most distinct keys shared; past it a new key is held by its documents
/// alone.
const MAX_SHARED_KEYS: usize = 65_536;
/// Most shapes (key lists) in the shared table.
const MAX_SHAPES: usize = 65_536;
/// Most scalar values in the shared table.
const MAX_SHARED_VALUES: usize = 1 << 20;
/// Longest string value shared (longer ones are rarely repeated).
const MAX_SHARED_STRING: usize = 64;

type FastState = foldhash::fast::FixedState;

static KEYS: LazyLock<Mutex<HashSet<Arc<str>, FastState>>> = LazyLock::new(Default::default);

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

/// The sorted keys of a document.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct Shape(Box<[Arc<str>]>);

/// A shared shape, found by its keys.
#[derive(PartialEq, Eq, Hash)]
struct SharedShape(Arc<Shape>);

impl Borrow<[Arc<str>]> for SharedShape {
    fn borrow(&self) -> &[Arc<str>] {
        &self.0 .0
    }
}

static SHAPES: LazyLock<Mutex<HashSet<SharedShape, FastState>>> = LazyLock::new(Default::default);

fn shape(keys: Vec<Arc<str>>) -> Arc<Shape> {
    let mut shapes = SHAPES.lock();
    if let Some(shared) = shapes.get(keys.as_slice()) {
        return shared.0.clone();
    }
    let new = Arc::new(Shape(keys.into_boxed_slice()));
    if shapes.len() >= MAX_SHAPES {
        shapes.retain(|s| Arc::strong_count(&s.0) > 1);
        if shapes.len() >= MAX_SHAPES / 2 {
            shapes.clear();
        }
    }
    shapes.insert(SharedShape(new.clone()));
    new
}

/// Shared scalar values by a hash of their content; a collision probes the
/// next hash (the value decides equality).
struct ValueTable {
    by_hash: HashMap<u64, Arc<Value>, FastState>,
    capacity: usize,
}

impl ValueTable {
    fn new(capacity: usize) -> Self {
        Self {
            by_hash: HashMap::default(),
            capacity,
        }
    }

    fn share(&mut self, v: Value) -> Arc<Value> {
        let Some(mut hash) = value_hash(&v) else {
            return Arc::new(v);
        };
        loop {
            match self.by_hash.get(&hash) {
                Some(shared) if **shared == v => return shared.clone(),
                Some(_) => hash = hash.wrapping_add(1),
                None => break,
            }
        }
        let new = Arc::new(v);
        if self.by_hash.len() >= self.capacity {
            self.by_hash.retain(|_, v| Arc::strong_count(v) > 1);
            if self.by_hash.len() >= self.capacity / 2 {
                self.by_hash.clear();
            }
        }
        self.by_hash.insert(hash, new.clone());
        new
    }
}

static VALUES: LazyLock<Mutex<ValueTable>> =
    LazyLock::new(|| Mutex::new(ValueTable::new(MAX_SHARED_VALUES)));

/// The hash a shareable value is found by (`None`: not shared).
fn value_hash(v: &Value) -> Option<u64> {
    let mut h = FastState::default().build_hasher();
    match v {
        Value::Null => 0u8.hash(&mut h),
        Value::Bool(b) => (1u8, b).hash(&mut h),
        // Equal numbers have the same representation (JSON 1 and 1.0 are
        // different values), so the representation is what is hashed.
        Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => (2u8, u).hash(&mut h),
            (None, Some(i), _) => (3u8, i).hash(&mut h),
            (None, None, f) => (4u8, f.map(f64::to_bits)).hash(&mut h),
        },
        Value::String(s) if s.len() <= MAX_SHARED_STRING => (5u8, s.as_str()).hash(&mut h),
        _ => return None,
    }
    Some(h.finish())
}

fn value(v: Value) -> Arc<Value> {
    VALUES.lock().share(v)
}

/// Shares a document's values (one lock for all).
fn values(values: Vec<Value>) -> Box<[Arc<Value>]> {
    let mut table = VALUES.lock();
    values.into_iter().map(|v| table.share(v)).collect()
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Doc {
    /// `None` for no keys at all.
    shape: Option<Arc<Shape>>,
    /// One per key of the shape, in its order.
    values: Box<[Arc<Value>]>,
}

impl Doc {
    /// A document of sorted, distinct keys.
    fn from_sorted(entries: Vec<(Arc<str>, Value)>) -> Self {
        if entries.is_empty() {
            return Self::default();
        }
        let (keys, raw): (Vec<Arc<str>>, Vec<Value>) = entries.into_iter().unzip();
        Self {
            shape: Some(shape(keys)),
            values: values(raw),
        }
    }

    fn keys(&self) -> &[Arc<str>] {
        self.shape.as_ref().map_or(&[], |s| &s.0)
    }

    pub fn from_map(map: Map<String, Value>) -> Self {
        let mut entries: Vec<(Arc<str>, Value)> =
            map.into_iter().map(|(k, v)| (key(&k), v)).collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Self::from_sorted(entries)
    }

    /// Sets each key of `changes`; a null removes it.
    pub fn merge(&mut self, changes: Map<String, Value>) {
        let values = std::mem::take(&mut self.values).into_vec();
        let mut entries: Vec<(Arc<str>, Arc<Value>)> =
            self.keys().iter().cloned().zip(values).collect();
        for (k, v) in changes {
            match entries.binary_search_by(|e| (*e.0).cmp(k.as_str())) {
                Ok(i) if v.is_null() => {
                    entries.remove(i);
                }
                Ok(i) => entries[i].1 = value(v),
                Err(_) if v.is_null() => {}
                Err(i) => entries.insert(i, (key(&k), value(v))),
            }
        }
        if entries.is_empty() {
            *self = Self::default();
            return;
        }
        let (keys, values): (Vec<Arc<str>>, Vec<Arc<Value>>) = entries.into_iter().unzip();
        if self.keys() != keys.as_slice() {
            self.shape = Some(shape(keys));
        }
        self.values = values.into_boxed_slice();
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

impl Doc {
    pub fn encode<W: std::io::Write>(&self, e: &mut Encoder<W>) -> std::io::Result<()> {
        e.len(self.values.len())?;
        for (k, v) in self.keys().iter().zip(self.values.iter()) {
            e.str(k)?;
            e.value(v)?;
        }
        Ok(())
    }

    /// Reads a document written by [`Doc::encode`] (keys, shapes and values
    /// shared again). `last` is the shape of the document read before: most
    /// documents of a checkpoint have the same keys as the one before, which
    /// then are not looked up at all.
    pub fn decode<R: std::io::Read>(
        d: &mut Decoder<R>,
        last: &mut Option<Arc<Shape>>,
    ) -> Decoded<Self> {
        let n = d.len(9)?;
        if n == 0 {
            return Ok(Self::default());
        }
        let mut names = Vec::with_capacity(n);
        let mut raw = Vec::with_capacity(n);
        for _ in 0..n {
            names.push(d.string()?);
            raw.push(d.value()?);
        }
        if !names.is_sorted_by(|a, b| a < b) {
            return Err(DecodeError::Malformed("document keys"));
        }
        let same = last
            .as_ref()
            .is_some_and(|s| s.0.len() == n && s.0.iter().zip(&names).all(|(k, n)| **k == **n));
        if !same {
            *last = Some(shape(names.iter().map(|k| key(k)).collect()));
        }
        Ok(Self {
            shape: last.clone(),
            values: values(raw),
        })
    }
}

impl Fields for Doc {
    fn field(&self, name: &str) -> Option<&Value> {
        self.keys()
            .binary_search_by(|k| (**k).cmp(name))
            .ok()
            .map(|i| &*self.values[i])
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
        let k = |d: &Doc| d.keys().iter().find(|k| &***k == "city").cloned();
        assert!(Arc::ptr_eq(&k(&d).expect("key"), &k(&other).expect("key")));
        // So are shapes and scalar values: documents with the same keys hold
        // one key list, and equal values once.
        let a = Doc::from_map(map(json!({"city": "Pune", "age": 31, "tags": ["a"]})));
        let b = Doc::from_map(map(json!({"age": 31, "city": "Pune", "tags": ["a"]})));
        assert!(Arc::ptr_eq(
            a.shape.as_ref().expect("shape"),
            b.shape.as_ref().expect("shape")
        ));
        assert!(a
            .values
            .iter()
            .zip(b.values.iter())
            .take(2)
            .all(|(x, y)| Arc::ptr_eq(x, y)));
        assert_eq!(a, b);
        // 1 and 1.0 are different JSON values, and stay different shared.
        let int = Doc::from_map(map(json!({"n": 1})));
        let float = Doc::from_map(map(json!({"n": 1.0})));
        assert_eq!(int.field("n"), Some(&json!(1)));
        assert_eq!(float.field("n"), Some(&json!(1.0)));
        assert_ne!(int, float);
    }

    #[test]
    fn documents_read_back_as_written_and_consecutive_ones_share_a_shape() {
        let docs = [
            json!({"age": 30, "plan": "pro"}),
            json!({"age": 31, "plan": "free"}),
            json!({}),
            json!({"age": 1.5, "tags": ["a", {"b": null}]}),
            json!({"age": 32, "plan": "pro"}),
        ]
        .map(|v| Doc::from_map(map(v)));
        let mut e = Encoder::new(Vec::new());
        for doc in &docs {
            doc.encode(&mut e).expect("encode");
        }
        let bytes = e.finish().expect("finish");
        let mut d = Decoder::new(bytes.as_slice(), bytes.len() as u64).expect("decoder");
        let mut last = None;
        let back: Vec<Doc> = (0..docs.len())
            .map(|_| Doc::decode(&mut d, &mut last).expect("decode"))
            .collect();
        assert_eq!(back, docs);
        let shape = |d: &Doc| d.shape.clone().expect("shape");
        assert!(Arc::ptr_eq(&shape(&back[0]), &shape(&back[1])));
        assert!(
            Arc::ptr_eq(&shape(&back[0]), &shape(&back[4])),
            "shared process-wide"
        );
        assert!(!Arc::ptr_eq(&shape(&back[0]), &shape(&back[3])));
        // Unsorted keys are refused.
        let mut e = Encoder::new(Vec::new());
        e.len(2)
            .and_then(|_| e.str("b"))
            .and_then(|_| e.value(&json!(1)))
            .expect("write");
        e.str("a").and_then(|_| e.value(&json!(2))).expect("write");
        let bytes = e.finish().expect("finish");
        let mut d = Decoder::new(bytes.as_slice(), bytes.len() as u64).expect("decoder");
        assert!(Doc::decode(&mut d, &mut None).is_err());
    }

    #[test]
    fn the_value_table_stays_bounded_and_keeps_answering_equal_values() {
        let mut t = ValueTable::new(8);
        let held: Vec<Arc<Value>> = (0..3).map(|i| t.share(json!(i))).collect();
        for i in 0..100 {
            let v = t.share(json!(format!("v{i}")));
            assert_eq!(*v, json!(format!("v{i}")));
            assert!(t.by_hash.len() <= 8);
        }
        // Values still held by documents survived the sweeps...
        assert!(Arc::ptr_eq(&held[0], &t.share(json!(0))));
        // ...and a table full of held values starts over rather than grow.
        let many: Vec<Arc<Value>> = (0..20).map(|i| t.share(json!(i * 10))).collect();
        assert!(t.by_hash.len() <= 8);
        assert_eq!(*many[19], json!(190));
        // Objects and arrays, and long strings, are never shared.
        let a = t.share(json!(["x"]));
        assert!(!Arc::ptr_eq(&a, &t.share(json!(["x"]))));
        let long = "x".repeat(MAX_SHARED_STRING + 1);
        let l = t.share(json!(long));
        assert!(!Arc::ptr_eq(&l, &t.share(json!(long))));
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

//! Dense indexes of string ids without a second copy of each id: the table
//! holds only the indexes, and finds one by hashing the id its owner's list
//! holds at that index. A million users cost four bytes each here (plus the
//! table's spare slots), where a map from id to index holds every id again.

use foldhash::fast::RandomState;
use hashbrown::HashTable;
use std::hash::BuildHasher;

#[derive(Default, Clone)]
pub struct IdIndex {
    table: HashTable<u32>,
    hasher: RandomState,
}

impl std::fmt::Debug for IdIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdIndex")
            .field("len", &self.table.len())
            .finish()
    }
}

impl IdIndex {
    pub fn with_capacity(n: usize) -> Self {
        Self {
            table: HashTable::with_capacity(n),
            hasher: RandomState::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The index of `id`, where `ids[i]` is the id at index `i`.
    pub fn get<S: AsRef<str>>(&self, id: &str, ids: &[S]) -> Option<u32> {
        let hash = self.hasher.hash_one(id);
        self.table
            .find(hash, |&i| ids[i as usize].as_ref() == id)
            .copied()
    }

    /// Records that `ids[index]` is `id` (which `ids` must already hold);
    /// returns the index the id had before, replacing it.
    pub fn insert<S: AsRef<str>>(&mut self, id: &str, index: u32, ids: &[S]) -> Option<u32> {
        let hasher = &self.hasher;
        let hash = hasher.hash_one(id);
        match self.table.entry(
            hash,
            |&i| ids[i as usize].as_ref() == id,
            |&i| hasher.hash_one(ids[i as usize].as_ref()),
        ) {
            hashbrown::hash_table::Entry::Occupied(mut o) => {
                Some(std::mem::replace(o.get_mut(), index))
            }
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert(index);
                None
            }
        }
    }

    /// Forgets `id`; returns its index.
    pub fn remove<S: AsRef<str>>(&mut self, id: &str, ids: &[S]) -> Option<u32> {
        let hash = self.hasher.hash_one(id);
        self.table
            .find_entry(hash, |&i| ids[i as usize].as_ref() == id)
            .ok()
            .map(|o| o.remove().0)
    }

    /// Every index held, in no particular order.
    pub fn indexes(&self) -> impl Iterator<Item = u32> + '_ {
        self.table.iter().copied()
    }

    pub fn shrink_to_fit<S: AsRef<str>>(&mut self, ids: &[S]) {
        let hasher = &self.hasher;
        self.table
            .shrink_to_fit(|&i| hasher.hash_one(ids[i as usize].as_ref()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    proptest! {
        /// The index answers as a map from id to index would, through
        /// inserts, replacements and removals.
        #[test]
        fn answers_as_a_map(ops in prop::collection::vec((0u8..3, 0usize..40), 0..300)) {
            let mut ids: Vec<String> = Vec::new();
            let mut index = IdIndex::default();
            let mut model: HashMap<String, u32> = HashMap::new();
            for (op, k) in ops {
                let id = format!("u{k}");
                match op {
                    0 | 1 => {
                        ids.push(id.clone());
                        let i = ids.len() as u32 - 1;
                        prop_assert_eq!(index.insert(&id, i, &ids), model.insert(id.clone(), i));
                    }
                    _ => prop_assert_eq!(index.remove(&id, &ids), model.remove(&id)),
                }
                prop_assert_eq!(index.len(), model.len());
            }
            for k in 0..45 {
                let id = format!("u{k}");
                prop_assert_eq!(index.get(&id, &ids), model.get(&id).copied());
            }
            let mut got: Vec<u32> = index.indexes().collect();
            let mut want: Vec<u32> = model.values().copied().collect();
            got.sort_unstable();
            want.sort_unstable();
            prop_assert_eq!(got, want);
            index.shrink_to_fit(&ids);
            for (id, &i) in &model {
                prop_assert_eq!(index.get(id, &ids), Some(i));
            }
        }
    }
}

//! Sticky assignments, packed: an append-only log (`assignment_log`) of one
//! record per (user, exposure instant), never one row per (user,
//! experiment). A first serving that assigns thirty experiments writes one
//! record, not thirty rows and their index entries.
//!
//! A record is `(seq, user_id, uid, at, entries)`: the commit-ordered
//! number, the user, their number when written (`NULL` for a user without a
//! profile then), the instant, and the packed (experiment, variant, bucket
//! version) triples assigned at that instant, each
//!
//! ```text
//! u8 length, experiment id (UTF-8) · u8 length, variant (UTF-8) · u32 bucket version (big-endian)
//! ```
//!
//! Fixed-width big-endian numbers, so that PostgreSQL reads the same bytes in
//! SQL (`stratify_exposed`, which an experiment's event listing filters by).
//!
//! The rules are those of a row per (user, experiment) with an upsert:
//! - a user's assignment to an experiment is their entry with the highest
//!   bucket version ([`fold`]);
//! - the writer appends only entries that beat what the user has
//!   ([`fresh`]), so a (user, experiment, bucket version) is in one record;
//! - a read by experiment counts a user under a bucket version unless a
//!   later version of theirs is in the same read ([`ExposureReader`]);
//! - a merge rewrites both users' records as the known user's ([`merged`]).

use crate::model::{AssignmentRecord, Exposures};
use crate::shared::variant_index;
use crate::{Result, StoreError};
use std::collections::HashMap;
use stratify_core::time::Millis;

/// The writer's per-batch maps (keys are ids the server made or checked).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// One packed (experiment, variant, bucket version).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry<'a> {
    pub experiment: &'a str,
    pub variant: &'a str,
    pub bucket_version: u32,
}

/// Appends one entry to `out`; ids longer than 255 bytes are refused.
pub(crate) fn push(out: &mut Vec<u8>, e: Entry<'_>) -> Result<()> {
    for s in [e.experiment, e.variant] {
        let len = u8::try_from(s.len()).map_err(|_| {
            StoreError::Config(format!("an assignment id longer than 255 bytes: {s:.40}…"))
        })?;
        out.push(len);
        out.extend_from_slice(s.as_bytes());
    }
    out.extend_from_slice(&e.bucket_version.to_be_bytes());
    Ok(())
}

/// The entries of a packed blob, in order; a malformed blob is `Corrupt`.
pub(crate) fn entries(blob: &[u8]) -> Entries<'_> {
    Entries { rest: blob }
}

pub(crate) struct Entries<'a> {
    rest: &'a [u8],
}

impl<'a> Entries<'a> {
    fn text(&mut self) -> Option<&'a str> {
        let (&len, rest) = self.rest.split_first()?;
        let (text, rest) = rest.split_at_checked(usize::from(len))?;
        self.rest = rest;
        std::str::from_utf8(text).ok()
    }

    fn entry(&mut self) -> Option<Entry<'a>> {
        let experiment = self.text()?;
        let variant = self.text()?;
        let (version, rest) = self.rest.split_first_chunk::<4>()?;
        self.rest = rest;
        Some(Entry {
            experiment,
            variant,
            bucket_version: u32::from_be_bytes(*version),
        })
    }
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<Entry<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        Some(match self.entry() {
            Some(e) => Ok(e),
            None => {
                self.rest = &[];
                Err(StoreError::Corrupt("a malformed packed assignment".into()))
            }
        })
    }
}

/// A user's record as read back: (seq, at, entries).
pub(crate) type UserRecord = (i64, Millis, Vec<u8>);

/// A user's assignments from their records in `seq` order: per experiment,
/// the entry with the highest bucket version (the earlier among equals).
/// Sorted by experiment.
pub(crate) fn fold(user_id: &str, records: &[UserRecord]) -> Result<Vec<AssignmentRecord>> {
    let mut by_experiment: FastMap<&str, AssignmentRecord> = FastMap::default();
    for (_, at, blob) in records {
        for e in entries(blob) {
            let e = e?;
            let beats = by_experiment
                .get(e.experiment)
                .is_none_or(|held| e.bucket_version > held.bucket_version);
            if beats {
                by_experiment.insert(e.experiment, record(user_id, e, *at));
            }
        }
    }
    let mut out: Vec<AssignmentRecord> = by_experiment.into_values().collect();
    out.sort_unstable_by(|a, b| a.experiment_id.cmp(&b.experiment_id));
    Ok(out)
}

fn record(user_id: &str, e: Entry<'_>, at: Millis) -> AssignmentRecord {
    AssignmentRecord {
        user_id: user_id.to_owned(),
        experiment_id: e.experiment.to_owned(),
        variant: e.variant.to_owned(),
        bucket_version: e.bucket_version,
        assigned_at: at,
    }
}

/// Of one user's `new` assignments (in arrival order), those that beat what
/// they `hold` and every earlier one of the batch: a higher bucket version
/// than any for the same experiment.
pub(crate) fn fresh<'a>(
    hold: &[AssignmentRecord],
    new: impl IntoIterator<Item = &'a AssignmentRecord>,
) -> Vec<&'a AssignmentRecord> {
    let mut best: FastMap<&str, u32> = hold
        .iter()
        .map(|a| (a.experiment_id.as_str(), a.bucket_version))
        .collect();
    let mut out: Vec<&AssignmentRecord> = Vec::new();
    for a in new {
        let beats = best
            .get(a.experiment_id.as_str())
            .is_none_or(|&v| a.bucket_version > v);
        if beats {
            best.insert(&a.experiment_id, a.bucket_version);
            // A later, higher version in the same batch replaces the earlier.
            out.retain(|o| o.experiment_id != a.experiment_id);
            out.push(a);
        }
    }
    out
}

/// Records to append for `assignments` (one user's): one per instant, in
/// order of first appearance, as (at, packed entries).
pub(crate) fn pack(assignments: &[&AssignmentRecord]) -> Result<Vec<(Millis, Vec<u8>)>> {
    let mut out: Vec<(Millis, Vec<u8>)> = Vec::new();
    for a in assignments {
        let at = a.assigned_at;
        let i = match out.iter().position(|(t, _)| *t == at) {
            Some(i) => i,
            None => {
                out.push((at, Vec::with_capacity(32 * assignments.len())));
                out.len() - 1
            }
        };
        push(
            &mut out[i].1,
            Entry {
                experiment: &a.experiment_id,
                variant: &a.variant,
                bucket_version: a.bucket_version,
            },
        )?;
    }
    Ok(out)
}

/// Groups a batch by user, keeping each user's arrival order; users in order
/// of first appearance.
pub(crate) fn by_user(batch: &[AssignmentRecord]) -> Vec<(&str, Vec<&AssignmentRecord>)> {
    let mut index: FastMap<&str, usize> = FastMap::default();
    let mut out: Vec<(&str, Vec<&AssignmentRecord>)> = Vec::new();
    for a in batch {
        let i = *index.entry(&a.user_id).or_insert_with(|| {
            out.push((&a.user_id, Vec::new()));
            out.len() - 1
        });
        out[i].1.push(a);
    }
    out
}

/// A merged person's assignments, as the known user's, and how many of the
/// visitor's moved: the visitor's variant of each experiment the known user
/// was not in; where both were exposed under one bucket version, the known
/// user's variant from the earlier exposure.
pub(crate) fn merged(
    visitor: Vec<AssignmentRecord>,
    known: Vec<AssignmentRecord>,
    known_id: &str,
) -> (Vec<AssignmentRecord>, u64) {
    let mut out = known;
    let mut moved = 0;
    for v in visitor {
        match out.iter_mut().find(|k| k.experiment_id == v.experiment_id) {
            None => {
                moved += 1;
                out.push(AssignmentRecord {
                    user_id: known_id.to_owned(),
                    ..v
                });
            }
            Some(k) if k.bucket_version == v.bucket_version => {
                k.assigned_at = k.assigned_at.min(v.assigned_at);
            }
            Some(_) => {}
        }
    }
    out.sort_unstable_by(|a, b| a.experiment_id.cmp(&b.experiment_id));
    (out, moved)
}

/// Who a log row is, for telling a later version of theirs apart.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Who {
    Uid(i64),
    Id(String),
}

/// Reads one experiment's exposures under one bucket version out of log
/// records (any order), into [`Exposures`] columns.
pub(crate) struct ExposureReader<'a> {
    experiment: &'a str,
    bucket_version: u32,
    out: Exposures,
    /// Users with a later bucket version of the experiment in this read.
    later: Vec<Who>,
}

impl<'a> ExposureReader<'a> {
    pub(crate) fn new(experiment: &'a str, bucket_version: u32, after_seq: i64) -> Self {
        Self {
            experiment,
            bucket_version,
            out: Exposures {
                through_seq: after_seq,
                ..Exposures::default()
            },
            later: Vec::new(),
        }
    }

    /// One record: its number, the user's number (if they have a profile
    /// now), their id (needed only without a number), instant and entries.
    pub(crate) fn record(
        &mut self,
        seq: i64,
        uid: Option<i64>,
        user_id: Option<&str>,
        at: Millis,
        blob: &[u8],
    ) -> Result<()> {
        self.out.through_seq = self.out.through_seq.max(seq);
        for e in entries(blob) {
            let e = e?;
            if e.experiment != self.experiment {
                continue;
            }
            if e.bucket_version > self.bucket_version {
                self.later.push(who(uid, user_id)?);
            } else if e.bucket_version == self.bucket_version {
                if uid.is_none() {
                    let id = user_id.ok_or_else(|| {
                        StoreError::Corrupt("an assignment record without a user".into())
                    })?;
                    self.out
                        .no_profile
                        .push((self.out.uid.len() as u32, id.to_owned()));
                }
                let index = variant_index(&mut self.out.variants, e.variant);
                self.out.uid.push(uid);
                self.out.variant.push(index);
                self.out.assigned_at.push(at);
            }
            break;
        }
        Ok(())
    }

    /// The exposures, without users re-randomised later in the same read.
    pub(crate) fn finish(mut self) -> Exposures {
        if self.later.is_empty() {
            return self.out;
        }
        let later: std::collections::HashSet<Who> = self.later.into_iter().collect();
        let x = std::mem::take(&mut self.out);
        let mut ids: HashMap<u32, String> = x.no_profile.into_iter().collect();
        let mut out = Exposures {
            variants: x.variants,
            through_seq: x.through_seq,
            max_uid: x.max_uid,
            ..Exposures::default()
        };
        for (row, ((uid, variant), at)) in x
            .uid
            .into_iter()
            .zip(x.variant)
            .zip(x.assigned_at)
            .enumerate()
        {
            let id = ids.remove(&(row as u32));
            let key = match (uid, &id) {
                (Some(u), _) => Who::Uid(u),
                (None, Some(id)) => Who::Id(id.clone()),
                (None, None) => continue,
            };
            if later.contains(&key) {
                continue;
            }
            if let (None, Some(id)) = (uid, id) {
                out.no_profile.push((out.uid.len() as u32, id));
            }
            out.uid.push(uid);
            out.variant.push(variant);
            out.assigned_at.push(at);
        }
        out
    }
}

fn who(uid: Option<i64>, user_id: Option<&str>) -> Result<Who> {
    match (uid, user_id) {
        (Some(u), _) => Ok(Who::Uid(u)),
        (None, Some(id)) => Ok(Who::Id(id.to_owned())),
        (None, None) => Err(StoreError::Corrupt(
            "an assignment record without a user".into(),
        )),
    }
}

/// Whether a packed blob holds `experiment` under `bucket_version` (and
/// `variant`, when given): the SQL function `stratify_exposed`.
pub(crate) fn exposed(
    blob: &[u8],
    experiment: &str,
    bucket_version: u32,
    variant: Option<&str>,
) -> bool {
    entries(blob).any(|e| {
        e.is_ok_and(|e| {
            e.experiment == experiment
                && e.bucket_version == bucket_version
                && variant.is_none_or(|v| v == e.variant)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn a(user: &str, exp: &str, variant: &str, version: u32, at: Millis) -> AssignmentRecord {
        AssignmentRecord {
            user_id: user.into(),
            experiment_id: exp.into(),
            variant: variant.into(),
            bucket_version: version,
            assigned_at: at,
        }
    }

    proptest! {
        /// Any entries pack and read back; any other bytes are read or
        /// refused, never a panic.
        #[test]
        fn entries_read_back_and_garbage_is_refused(
            list in proptest::collection::vec(("[a-z0-9_-]{1,64}", "[a-zé]{0,20}", any::<u32>()), 0..40),
            garbage in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let mut blob = Vec::new();
            for (e, v, b) in &list {
                push(&mut blob, Entry { experiment: e, variant: v, bucket_version: *b }).unwrap();
            }
            let back: Vec<(String, String, u32)> = entries(&blob)
                .map(|e| e.map(|e| (e.experiment.to_owned(), e.variant.to_owned(), e.bucket_version)))
                .collect::<Result<_>>()
                .unwrap();
            prop_assert_eq!(back, list);
            let n = entries(&garbage).count();
            prop_assert!(n <= garbage.len());
        }
    }

    #[test]
    fn a_cut_blob_is_corrupt_and_a_long_id_is_refused() {
        let mut blob = Vec::new();
        push(
            &mut blob,
            Entry {
                experiment: "exp",
                variant: "b",
                bucket_version: 7,
            },
        )
        .unwrap();
        assert!(exposed(&blob, "exp", 7, Some("b")));
        assert!(!exposed(&blob, "exp", 7, Some("a")));
        assert!(!exposed(&blob, "exp", 6, None));
        for cut in 1..blob.len() {
            assert!(entries(&blob[..cut]).any(|e| e.is_err()), "cut at {cut}");
        }
        let long = "x".repeat(256);
        assert!(push(
            &mut Vec::new(),
            Entry {
                experiment: &long,
                variant: "a",
                bucket_version: 1
            }
        )
        .is_err());
    }

    #[test]
    fn the_rules_of_an_upsert_per_user_and_experiment() {
        let hold = vec![a("u", "x", "a", 2, 10)];
        let batch = [
            a("u", "x", "b", 2, 20),
            a("u", "y", "a", 1, 20),
            a("u", "y", "b", 3, 30),
            a("u", "x", "c", 3, 30),
        ];
        let got: Vec<_> = fresh(&hold, &batch).into_iter().cloned().collect();
        assert_eq!(
            got,
            vec![a("u", "y", "b", 3, 30), a("u", "x", "c", 3, 30)],
            "the same version never replaces"
        );
        let refs: Vec<&AssignmentRecord> = got.iter().collect();
        let packed = pack(&refs).unwrap();
        assert_eq!(packed.len(), 1, "one record per instant");
        let records = vec![
            (1, 10, pack(&[&hold[0]]).unwrap().remove(0).1),
            (2, 30, packed[0].1.clone()),
        ];
        assert_eq!(
            fold("u", &records).unwrap(),
            vec![a("u", "x", "c", 3, 30), a("u", "y", "b", 3, 30)]
        );

        let (m, moved) = merged(
            vec![
                a("v", "x", "b", 3, 5),
                a("v", "z", "a", 1, 5),
                a("v", "y", "a", 1, 1),
            ],
            vec![a("k", "x", "c", 3, 30), a("k", "y", "b", 3, 30)],
            "k",
        );
        assert_eq!(moved, 1);
        assert_eq!(
            m,
            vec![
                a("k", "x", "c", 3, 5),
                a("k", "y", "b", 3, 30),
                a("k", "z", "a", 1, 5)
            ]
        );
    }

    #[test]
    fn a_read_by_experiment_drops_users_re_randomised_in_it() {
        let blob = |list: &[(&str, &str, u32)]| {
            let mut b = Vec::new();
            for (e, v, n) in list {
                push(
                    &mut b,
                    Entry {
                        experiment: e,
                        variant: v,
                        bucket_version: *n,
                    },
                )
                .unwrap();
            }
            b
        };
        let mut r = ExposureReader::new("x", 1, -1);
        r.record(
            1,
            Some(1),
            None,
            100,
            &blob(&[("w", "a", 1), ("x", "a", 1)]),
        )
        .unwrap();
        r.record(2, None, Some("anon"), 110, &blob(&[("x", "b", 1)]))
            .unwrap();
        r.record(3, Some(3), None, 120, &blob(&[("x", "b", 1)]))
            .unwrap();
        r.record(4, Some(1), None, 130, &blob(&[("x", "b", 2)]))
            .unwrap();
        r.record(5, Some(9), None, 140, &blob(&[("y", "b", 1)]))
            .unwrap();
        let x = r.finish();
        assert_eq!(x.uid, vec![None, Some(3)]);
        assert_eq!(x.no_profile, vec![(0, "anon".to_string())]);
        assert_eq!(x.assigned_at, vec![110, 120]);
        assert_eq!(x.through_seq, 5);
        let names: Vec<&str> = x
            .variant
            .iter()
            .map(|&v| x.variants[usize::from(v)].as_str())
            .collect();
        assert_eq!(names, vec!["b", "b"]);
    }
}

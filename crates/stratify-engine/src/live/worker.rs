//! The live worker: one thread that owns the live [`State`], applies events,
//! attribute writes and segment changes as they are committed, fires
//! deadlines at their instants, runs background builds in slices, and
//! commits the changes it produces (with its watermark) before publishing
//! them. The first thing it does after a restart is resume from the
//! watermark: profiles up to it, deadlines re-derived, later events replayed.

use super::doc::Doc;
use super::state::{fan_out, LiveEvent, Outcome, State, BUILD_SLICE};
use super::{BuildStatus, Msg, Owns, Shared, Snapshot};
use crate::checkpoint::{self, Header, Refused};
use crate::segments::{Catalog, MemberChange};
use crate::{scan, Clock, EngineError};
use serde_json::Value;
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;
use stratify_core::time::Millis;
use stratify_store::{Cause, ChangeRecord, DerivedStamp, RawEvent, Store, Watermark};
use tokio::sync::{broadcast, mpsc, oneshot};

/// The checkpoint file's kind (see [`crate::checkpoint`]).
const KIND: &str = "live";

/// Most messages handled before deadlines, builds and a commit get a turn.
const MAX_MESSAGES_PER_TURN: usize = 4_096;
/// Longest sleep with nothing due (a guard against clock jumps).
const MAX_SLEEP_MS: i64 = 60_000;
/// Changes handed to the committer and not yet durable, past which the
/// worker waits (and, through the worker's lag, writers wait too): with the
/// change log committing ~150k changes/s, about 0.4 s of work.
const MAX_QUEUED_CHANGES: usize = 65_536;
/// Pending changes past which the worker hands them over mid-turn (keeps
/// latency low and the buffers small and reused).
const FLUSH_CHANGES: usize = 2_048;
/// Most changes committed in one transaction.
const MAX_CHANGES_PER_COMMIT: usize = 16_384;

/// What the worker hands to the committer after a turn.
pub struct CommitBatch {
    made: std::time::Instant,
    changes: Vec<ChangeRecord>,
    mark: Watermark,
    syncs: Vec<oneshot::Sender<()>>,
}

/// Commits batches in the order the worker made them (merging what has
/// queued up), then publishes the changes and answers the waiting syncs.
/// Ends when the worker is gone and everything it sent is durable.
pub async fn committer(
    store: Arc<dyn Store>,
    mut rx: mpsc::UnboundedReceiver<CommitBatch>,
    feed: broadcast::Sender<Arc<Vec<ChangeRecord>>>,
    shared: Arc<Shared>,
) {
    use std::sync::atomic::Ordering::{AcqRel, Relaxed};
    while let Some(first) = rx.recv().await {
        let made = first.made;
        let picked = std::time::Instant::now();
        let mut changes = first.changes;
        let mut mark = first.mark;
        let mut syncs = first.syncs;
        while changes.len() < MAX_CHANGES_PER_COMMIT {
            let Ok(next) = rx.try_recv() else { break };
            changes.extend(next.changes);
            mark = next.mark;
            syncs.extend(next.syncs);
        }
        let changes = Arc::new(changes);
        let mut delay = Duration::from_millis(100);
        // What the store returns is what was stored (a shared store numbers
        // the changes itself): that is what is published.
        let changes = loop {
            match store
                .apply_changes(changes.clone(), mark, shared.node.as_deref())
                .await
            {
                Ok(stored) => break stored,
                Err(e) => {
                    // Derived state: a restart replays from the last committed
                    // watermark, so nothing is lost; keep trying while we run.
                    tracing::error!(error = %e, "cannot commit membership changes; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        };
        tracing::debug!(
            changes = changes.len(),
            queued_ms = (picked - made).as_secs_f64() * 1000.0,
            commit_ms = picked.elapsed().as_secs_f64() * 1000.0,
            "live commit"
        );
        shared.view.apply(&changes);
        for c in changes.iter() {
            shared.freshness.touch(&c.user_id);
        }
        shared.freshness.published(mark.event_seq);
        let stats = &shared.stats;
        stats.changes.fetch_add(changes.len() as u64, Relaxed);
        stats.applied_seq.store(mark.event_seq, Relaxed);
        if let Some(last) = changes.last() {
            stats.last_change_seq.store(last.seq, Relaxed);
        }
        shared.queued.fetch_sub(changes.len(), AcqRel);
        if !changes.is_empty() {
            let _ = feed.send(changes);
        }
        for s in syncs {
            let _ = s.send(());
        }
    }
}

/// Evaluates due (instant, user, segment) triples, each at its instant.
fn evaluate_due(state: &State, due: &[(Millis, u32, u32)]) -> Vec<(Millis, Outcome)> {
    let mut out = Vec::with_capacity(due.len());
    let mut one = Vec::with_capacity(1);
    for &(t, u, s) in due {
        state.evaluate(u, &[s], t, &mut one);
        out.extend(one.drain(..).map(|o| (t, o)));
    }
    out
}

fn cause_event(event_id: Option<&str>, seq: i64) -> Cause {
    Cause::Event {
        seq,
        event_id: event_id.map(str::to_owned),
    }
}

struct Build {
    segment: u32,
    next: u32,
    cause: Cause,
}

pub struct Worker {
    pub state: State,
    /// The users this node owns when several share the store (their Kafka
    /// partitions); `None`: every user.
    owns: Option<Owns>,
    clock: Arc<dyn Clock>,
    shared: Arc<Shared>,
    committer: mpsc::UnboundedSender<CommitBatch>,
    pending: Vec<ChangeRecord>,
    next_seq: i64,
    mark: Watermark,
    committed: Watermark,
    builds: VecDeque<Build>,
    syncs: Vec<oneshot::Sender<()>>,
    threads: usize,
    scratch: Vec<Outcome>,
    /// Store uid → user index.
    by_uid: scan::ByUid,
}

impl Worker {
    /// Loads the state from the store. With `rebuild`, the watermark and the
    /// replay are ignored: profiles come from the whole log, and every
    /// (user, segment) is evaluated at the clock's now.
    #[allow(clippy::too_many_arguments)]
    pub async fn load(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        catalog: &Catalog,
        shared: Arc<Shared>,
        committer: mpsc::UnboundedSender<CommitBatch>,
        rebuild: bool,
        owns: Option<Owns>,
        checkpoint: Option<&Path>,
    ) -> Result<Self, EngineError> {
        if let (Some(dir), false, None) = (checkpoint, rebuild, &owns) {
            let restored = Self::restore(&store, &clock, catalog, &shared, &committer, dir).await?;
            if let Some(worker) = restored {
                return Ok(worker);
            }
        }
        let owned = |user: &str| owns.as_ref().is_none_or(|o| o(user));
        let mark = if rebuild {
            None
        } else {
            store.watermark(shared.node.as_deref()).await?
        };
        let mut state = State::default();
        let by_uid = scan::users(store.as_ref(), |user| {
            if !owned(&user.user_id) {
                return None;
            }
            let (u, _) = state.user(&user.user_id);
            state.profiles[u as usize].attributes = Doc::from_map(user.attributes);
            Some(u)
        })
        .await?;
        let mut names: HashMap<i64, u32> = HashMap::new();
        for (id, name) in store.event_names().await? {
            names.insert(id, state.name_id(&name));
        }
        // Segments, oldest first; static members as they are listed.
        let mut segments: Vec<_> = catalog.all().cloned().collect();
        segments.sort_by_key(|s| (s.record.created_at, s.record.id.clone()));
        let mut statics = Vec::new();
        for s in &segments {
            let i = state.put_segment(&s.record.id, s.rule.clone().map(Arc::new));
            if s.rule.is_none() {
                statics.push(i);
                for user in store.static_members(&s.record.id).await? {
                    if !owned(&user) {
                        continue;
                    }
                    let (u, _) = state.user(&user);
                    if let Some(seg) = state.segments[i as usize].as_mut() {
                        seg.set(u, true);
                    }
                }
            }
        }
        let mut replay: Vec<RawEvent> = Vec::new();
        let after_seq = scan::events(store.as_ref(), |e| {
            if mark.is_some_and(|m| e.seq > m.event_seq) {
                replay.push(e);
            } else if let (Some(&name), Some(u)) = (names.get(&e.name_id), by_uid.get(e.uid)) {
                state.add_event(u, LiveEvent::new(e.seq, e.timestamp, name, e.properties));
            }
        })
        .await?;
        // Events arrive in log order and each profile grew by doubling.
        for p in &mut state.profiles {
            p.events.shrink_to_fit();
        }
        // Current memberships as materialised; statics are compared below.
        let mut stored_static: HashSet<(u32, u32)> = HashSet::new();
        // Open memberships of users the store no longer has (merged into
        // another user by a node that stopped before recording the exits).
        let mut orphans: Vec<(String, String)> = Vec::new();
        for (segment, user) in store.open_memberships().await? {
            let (Some(&s), Some(u)) = (state.segment_index.get(&segment), state.index_of(&user))
            else {
                if state.segment_index.contains_key(&segment) && owned(&user) {
                    orphans.push((segment, user));
                }
                continue;
            };
            if statics.contains(&s) {
                stored_static.insert((s, u));
            } else if let Some(seg) = state.segments[s as usize].as_mut() {
                seg.set(u, true);
            }
        }
        let next_seq = store.last_change_seq().await? + 1;
        let now = clock.now();
        let start = mark.map_or(now, |m| m.at.min(now));
        let mut worker = Worker {
            state,
            owns,
            clock,
            shared,
            committer,
            pending: Vec::new(),
            next_seq,
            mark: Watermark {
                event_seq: mark.map_or(after_seq, |m| m.event_seq),
                at: start,
            },
            committed: mark.unwrap_or_default(),
            builds: VecDeque::new(),
            syncs: Vec::new(),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            scratch: Vec::new(),
            by_uid,
        };
        let refresh = Cause::Refresh;
        for (segment_id, user_id) in orphans {
            worker.pending.push(ChangeRecord {
                seq: worker.next_seq,
                segment_id,
                user_id,
                entered: false,
                at: start,
                cause: refresh.clone(),
            });
            worker.next_seq += 1;
        }
        // Static memberships the table does not show yet (or no longer).
        for &s in &statics {
            let mut changed = Vec::new();
            let users = worker.state.user_ids.len() as u32;
            for u in 0..users {
                let listed = worker.state.segments[s as usize]
                    .as_ref()
                    .is_some_and(|seg| seg.contains(u));
                if listed != stored_static.contains(&(s, u)) {
                    changed.push(Outcome {
                        user: u,
                        segment: s,
                        inside: listed,
                        next: None,
                    });
                }
            }
            worker.record(&changed, start, &refresh);
        }
        // Every dynamic (user, segment) at the watermark's instant: derives
        // the deadlines, and repairs any membership the table got wrong.
        let dynamic = worker.state.dynamic.clone();
        worker.evaluate_all(&dynamic, start, &refresh);
        worker.resume(replay, &names, "live state loaded");
        Ok(worker)
    }

    /// Shows every segment built as of the watermark, applies the events
    /// appended after it, fires what is due, fills the readers' view: the
    /// end of every load.
    fn resume(&mut self, replay: Vec<RawEvent>, names: &HashMap<i64, u32>, loaded: &str) {
        for id in self.state.segment_index.keys() {
            let mut status = BuildStatus::ready(self.state.user_ids.len() as u64, self.mark.at);
            status.size = self.state.segment(id).map_or(0, |s| s.size);
            self.shared.builds.write().insert(id.clone(), status);
        }
        let replayed = replay.len();
        for e in replay {
            let user = self.by_uid.get(e.uid);
            let name = names.get(&e.name_id).copied();
            if let (Some(u), Some(name)) = (user, name) {
                let at = e.received_at.max(self.mark.at);
                let id = self.state.user_ids[u as usize].clone();
                let user = self.resolve(e.uid, &id);
                self.apply_event(
                    user,
                    name,
                    e.seq,
                    e.timestamp,
                    e.properties,
                    e.event_id.as_deref(),
                    at,
                );
            }
        }
        let now = self.clock.now().max(self.mark.at);
        self.fire_due(now);
        self.fill_view();
        // Committed by the worker thread's first turn (it blocks on the store).
        tracing::info!(
            users = self.state.user_ids.len(),
            segments = self.state.segment_index.len(),
            deadlines = self.state.deadlines.len(),
            replayed,
            "{loaded}"
        );
        self.publish_stats();
    }

    /// The state saved at the last shutdown, when it matches the store
    /// exactly (see [`crate::checkpoint`]), with the events after it applied.
    async fn restore(
        store: &Arc<dyn Store>,
        clock: &Arc<dyn Clock>,
        catalog: &Catalog,
        shared: &Arc<Shared>,
        committer: &mpsc::UnboundedSender<CommitBatch>,
        dir: &Path,
    ) -> Result<Option<Self>, EngineError> {
        let (Some(stamp), Some(mark)) =
            (store.derived_stamp().await?, store.watermark(None).await?)
        else {
            return Ok(None);
        };
        let last_event = store.last_event_seq().await?;
        let change_seq = store.last_change_seq().await?;
        let rules: HashMap<String, Option<Arc<stratify_core::rules::Rule>>> = catalog
            .all()
            .map(|s| (s.record.id.clone(), s.rule.clone().map(Arc::new)))
            .collect();
        let path = checkpoint::path(dir, KIND);
        let read = tokio::task::spawn_blocking(move || {
            checkpoint::read(
                &path,
                |h| {
                    h.matches(KIND, &stamp, last_event)
                        && h.event_seq == mark.event_seq
                        && h.mark_at == Some(mark.at)
                        && h.change_seq == Some(change_seq)
                },
                |_, d| Ok((scan::ByUid::decode(d)?, State::decode(d, &rules)?)),
            )
        })
        .await
        .map_err(|e| EngineError::Store(stratify_store::StoreError::Task(e)))?;
        let (by_uid, state) = match read {
            Ok((_, loaded)) => loaded,
            Err(Refused::Absent) => return Ok(None),
            Err(e) => {
                tracing::warn!(reason = %e, "live state checkpoint not used; rebuilding");
                return Ok(None);
            }
        };
        let mut worker = Worker {
            state,
            owns: None,
            clock: clock.clone(),
            shared: shared.clone(),
            committer: committer.clone(),
            pending: Vec::new(),
            next_seq: change_seq + 1,
            mark,
            committed: mark,
            builds: VecDeque::new(),
            syncs: Vec::new(),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            scratch: Vec::new(),
            by_uid,
        };
        let mut names: HashMap<i64, u32> = HashMap::new();
        for (id, name) in store.event_names().await? {
            names.insert(id, worker.state.name_id(&name));
        }
        let mut replay = Vec::new();
        scan::events_after(store.as_ref(), mark.event_seq, |e| replay.push(e)).await?;
        worker.resume(replay, &names, "live state restored from its checkpoint");
        Ok(Some(worker))
    }

    /// Evaluates every user for `segments` at `now`, in slices, recording
    /// changes with `cause`.
    fn evaluate_all(&mut self, segments: &[u32], now: Millis, cause: &Cause) -> u64 {
        let users = self.state.user_ids.len() as u32;
        let mut changes = 0;
        let slice = (BUILD_SLICE as u32 * 4).max(1);
        let mut from = 0;
        while from < users {
            let to = from.saturating_add(slice).min(users);
            let outcomes = self
                .state
                .evaluate_range(from, to, segments, now, self.threads);
            let changed = self.state.apply(&outcomes);
            changes += changed.len() as u64;
            self.record(&changed, now, cause);
            from = to;
        }
        changes
    }

    fn record(&mut self, changed: &[Outcome], at: Millis, cause: &Cause) {
        for o in changed {
            let Some(seg) = self.state.segments[o.segment as usize].as_ref() else {
                continue;
            };
            // A user whose partition was just revoked: the new owner records it.
            if !self.owns(&self.state.user_ids[o.user as usize]) {
                continue;
            }
            self.pending.push(ChangeRecord {
                seq: self.next_seq,
                segment_id: seg.id.clone(),
                user_id: self.state.user_ids[o.user as usize].to_string(),
                entered: o.inside,
                at,
                cause: cause.clone(),
            });
            self.next_seq += 1;
        }
    }

    fn evaluate_user(&mut self, user: u32, segments: &[u32], now: Millis, cause: &Cause) {
        if segments.is_empty() {
            return;
        }
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        self.state.evaluate(user, segments, now, &mut out);
        let changed = self.state.apply(&out);
        self.record(&changed, now, cause);
        self.scratch = out;
    }

    fn owns(&self, user: &str) -> bool {
        self.owns.as_ref().is_none_or(|o| o(user))
    }

    /// The user's index (and whether the user is new to the live state),
    /// found by the store's uid without hashing the id when it is known.
    fn resolve(&mut self, uid: i64, user_id: &str) -> (u32, bool) {
        if let Some(u) = self.by_uid.get(uid) {
            let p = &self.state.profiles[u as usize];
            if p.alive && *self.state.user_ids[u as usize] == *user_id {
                return (u, false);
            }
        }
        let (u, new) = self.state.user(user_id);
        self.by_uid.set(uid, u);
        (u, new)
    }

    /// Applies one committed event at `now` (deadlines due by then first).
    #[allow(clippy::too_many_arguments)]
    fn apply_event(
        &mut self,
        (u, new): (u32, bool),
        name: u32,
        seq: i64,
        ts: Millis,
        properties: Option<serde_json::Map<String, Value>>,
        event_id: Option<&str>,
        now: Millis,
    ) {
        self.fire_due(now);
        self.state
            .add_event(u, LiveEvent::new(seq, ts, name, properties));
        let segments = if new {
            self.state.dynamic.clone()
        } else {
            self.state.readers_of_event(name)
        };
        self.evaluate_user(u, &segments, now, &cause_event(event_id, seq));
        self.mark.event_seq = self.mark.event_seq.max(seq);
        if self.pending.len() >= FLUSH_CHANGES {
            self.commit();
        }
    }

    /// Fires every deadline due by `until`, each evaluated at its own instant.
    fn fire_due(&mut self, until: Millis) {
        // Called before every event: the common case, nothing due, is one peek.
        if self.state.deadlines.next().is_none_or(|t| t > until) {
            self.mark.at = self.mark.at.max(until);
            return;
        }
        let time = Cause::Time;
        let mut due = Vec::new();
        loop {
            due.clear();
            while let Some(d) = self.state.deadlines.pop_due(until) {
                due.push(d);
            }
            if due.is_empty() {
                break;
            }
            let outcomes = if due.len() < 256 {
                evaluate_due(&self.state, &due)
            } else {
                self.evaluate_due_parallel(&due)
            };
            // In `due` order, which is by instant.
            for (at, o) in outcomes {
                let changed = self.state.apply(&[o]);
                self.record(&changed, at, &time);
            }
            if self.pending.len() >= FLUSH_CHANGES {
                self.commit();
            }
            self.shared
                .stats
                .fired
                .fetch_add(due.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        self.mark.at = self.mark.at.max(until);
    }

    fn evaluate_due_parallel(&self, due: &[(Millis, u32, u32)]) -> Vec<(Millis, Outcome)> {
        fan_out(due.len(), self.threads, |part| {
            evaluate_due(&self.state, &due[part])
        })
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::Events {
                events,
                appended,
                uids,
                received_at,
            } => {
                let mut order: Vec<(i64, usize)> = appended
                    .iter()
                    .enumerate()
                    .filter_map(|(i, a)| match a {
                        stratify_store::Appended::New(seq) => Some((*seq, i)),
                        stratify_store::Appended::Duplicate => None,
                    })
                    .collect();
                order.sort_unstable();
                let applied = order.len();
                let mut last_name: Option<(&str, u32)> = None;
                for (seq, i) in order {
                    let e = &events[i];
                    if !self.owns(e.user_id.as_str()) {
                        continue; // another node's user: its owner applies it
                    }
                    let name = match last_name {
                        Some((n, id)) if n == e.name.as_str() => id,
                        _ => {
                            let id = self.state.name_id(e.name.as_str());
                            last_name = Some((e.name.as_str(), id));
                            id
                        }
                    };
                    // At its arrival: deadlines due by then fire first, in
                    // order, however late the worker gets to it.
                    let now = received_at.max(self.mark.at);
                    let uid = uids.get(i).copied().unwrap_or(-1);
                    let user = self.resolve(uid, e.user_id.as_str());
                    self.apply_event(
                        user,
                        name,
                        seq,
                        e.timestamp,
                        e.properties.clone(),
                        e.event_id.as_ref().map(|x| x.as_str()),
                        now,
                    );
                }
                self.shared
                    .lag
                    .fetch_sub(applied, std::sync::atomic::Ordering::AcqRel);
            }
            Msg::Attributes {
                user,
                attributes,
                merge,
                at,
            } => {
                if !self.owns(&user) {
                    return;
                }
                let now = at.max(self.mark.at);
                self.fire_due(now);
                let (u, new) = self.state.user(&user);
                let p = &mut self.state.profiles[u as usize];
                if merge {
                    p.attributes.merge(attributes);
                } else {
                    p.attributes = Doc::from_map(attributes);
                }
                let segments = if new {
                    self.state.dynamic.clone()
                } else {
                    self.state.by_attributes.clone()
                };
                self.evaluate_user(u, &segments, now, &Cause::AttributeChange);
            }
            Msg::Identify {
                anonymous,
                known,
                profile,
                at,
            } => self.identify(&anonymous, &known, profile, at),
            Msg::UserDeleted(user) => {
                if let Some(u) = self.state.index_of(&user) {
                    self.state.forget(u);
                }
            }
            Msg::SegmentPut { id, rule } => {
                let now = self.now();
                let s = self.state.put_segment(&id, rule);
                let mut rebuild = vec![s];
                rebuild.extend(self.state.dependents(s));
                for s in rebuild {
                    if self.state.segments[s as usize]
                        .as_ref()
                        .is_some_and(|x| x.rule.is_some())
                    {
                        self.start_build(s, now, Cause::RuleChange);
                    }
                }
                if !self.state.dynamic.contains(&s) {
                    let mut status = BuildStatus::ready(self.state.user_ids.len() as u64, now);
                    status.size = self.state.segments[s as usize]
                        .as_ref()
                        .map_or(0, |x| x.size);
                    self.shared.builds.write().insert(id, status);
                }
            }
            Msg::StaticMembers { id, change, users } => {
                let now = self.now();
                self.change_static(&id, change, &users, now);
            }
            Msg::SegmentDeleted(id) => {
                if let Some(s) = self.state.remove_segment(&id) {
                    self.builds.retain(|b| b.segment != s);
                    self.state.deadlines.drop_segment(s);
                }
                self.shared.builds.write().remove(&id);
            }
            Msg::Tick => {}
            Msg::Sync(reply) => self.syncs.push(reply),
            Msg::Refresh(reply) => {
                let now = self.now();
                self.fire_due(now);
                let dynamic = self.state.dynamic.clone();
                let n = self.evaluate_all(&dynamic, now, &Cause::Refresh);
                let _ = reply.send(n);
            }
            Msg::Snapshot(reply) => {
                let _ = reply.send(self.snapshot());
            }
            Msg::Stop => {}
        }
    }

    fn now(&self) -> Millis {
        self.clock.now().max(self.mark.at)
    }

    /// Identity stitching (see [`Msg::Identify`]).
    fn identify(
        &mut self,
        anonymous: &str,
        known: &str,
        profile: Option<crate::identity::MergedProfile>,
        at: Millis,
    ) {
        let now = at.max(self.mark.at);
        self.fire_due(now);
        let cause = Cause::Identify;
        if let Some(a) = self.state.index_of(anonymous) {
            if self.owns(anonymous) {
                let exits: Vec<Outcome> = self
                    .state
                    .segments
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.as_ref().is_some_and(|s| s.contains(a)))
                    .map(|(s, _)| Outcome {
                        user: a,
                        segment: s as u32,
                        inside: false,
                        next: None,
                    })
                    .collect();
                let changed = self.state.apply(&exits);
                self.record(&changed, now, &cause);
            }
            self.state.forget(a);
        }
        let Some(crate::identity::MergedProfile {
            attributes,
            events,
            statics,
        }) = profile
        else {
            return;
        };
        if !self.owns(known) {
            return;
        }
        let (u, _) = self.state.user(known);
        self.state.profiles[u as usize].attributes = Doc::from_map(attributes);
        // The store's events are the person's whole history; any the worker
        // holds that the read missed (committed after it) are kept.
        for e in events {
            let name = self.state.name_id(&e.name);
            self.state
                .add_event(u, LiveEvent::new(e.seq, e.timestamp, name, e.properties));
        }
        let entered: Vec<Outcome> = statics
            .iter()
            .filter_map(|id| self.state.segment_index.get(id.as_str()).copied())
            .filter(|&s| !self.state.dynamic.contains(&s))
            .map(|segment| Outcome {
                user: u,
                segment,
                inside: true,
                next: None,
            })
            .collect();
        let changed = self.state.apply(&entered);
        self.record(&changed, now, &cause);
        let dynamic = self.state.dynamic.clone();
        self.evaluate_user(u, &dynamic, now, &cause);
    }

    fn change_static(&mut self, id: &str, change: MemberChange, users: &[String], now: Millis) {
        let Some(&s) = self.state.segment_index.get(id) else {
            return;
        };
        let mut targets: Vec<(u32, bool)> = Vec::new();
        let mut created = Vec::new();
        let listed: HashSet<&str> = users.iter().map(String::as_str).collect();
        if change == MemberChange::Replace {
            for u in 0..self.state.user_ids.len() as u32 {
                let is = self.state.segments[s as usize]
                    .as_ref()
                    .is_some_and(|x| x.contains(u));
                if is && !listed.contains(&*self.state.user_ids[u as usize]) {
                    targets.push((u, false));
                }
            }
        }
        for user in users {
            if !self.owns(user) {
                continue;
            }
            let (u, new) = self.state.user(user);
            if new {
                created.push(u);
            }
            targets.push((u, change != MemberChange::Remove));
        }
        let outcomes: Vec<Outcome> = targets
            .into_iter()
            .map(|(user, inside)| Outcome {
                user,
                segment: s,
                inside,
                next: None,
            })
            .collect();
        let changed = self.state.apply(&outcomes);
        let cause = Cause::RuleChange;
        self.record(&changed, now, &cause);
        let dependents = self.state.dependents(s);
        let dynamic = self.state.dynamic.clone();
        for o in &changed {
            if !created.contains(&o.user) {
                self.evaluate_user(o.user, &dependents, now, &cause);
            }
        }
        for u in created {
            self.evaluate_user(u, &dynamic, now, &cause);
        }
    }

    fn start_build(&mut self, segment: u32, now: Millis, cause: Cause) {
        self.builds.retain(|b| b.segment != segment);
        self.builds.push_back(Build {
            segment,
            next: 0,
            cause,
        });
        if let Some(seg) = self.state.segments[segment as usize].as_ref() {
            self.shared.builds.write().insert(
                seg.id.clone(),
                BuildStatus {
                    state: "building",
                    evaluated: 0,
                    total: self.state.user_ids.len() as u64,
                    size: seg.size,
                    started_at: now,
                    finished_at: None,
                },
            );
        }
    }

    fn build_step(&mut self, now: Millis) {
        let Some(b) = self.builds.front() else { return };
        let (segment, from, cause) = (b.segment, b.next, b.cause.clone());
        let users = self.state.user_ids.len() as u32;
        let to = from.saturating_add(BUILD_SLICE as u32).min(users);
        let outcomes = self
            .state
            .evaluate_range(from, to, &[segment], now, self.threads);
        let changed = self.state.apply(&outcomes);
        self.record(&changed, now, &cause);
        let done = to >= users;
        if let Some(b) = self.builds.front_mut() {
            b.next = to;
        }
        if done {
            self.builds.pop_front();
        }
        if let Some(seg) = self.state.segments[segment as usize].as_ref() {
            if let Some(st) = self.shared.builds.write().get_mut(&seg.id) {
                st.evaluated = u64::from(to);
                st.total = u64::from(users);
                if done {
                    st.state = "ready";
                    st.finished_at = Some(now);
                }
            }
        }
    }

    /// Hands pending changes and the watermark to the committer (which
    /// commits batches in order, then publishes them), without waiting.
    fn commit(&mut self) {
        if self.pending.is_empty() && self.mark == self.committed && self.syncs.is_empty() {
            return;
        }
        // Back-pressure: never run far ahead of what is durable.
        while self
            .shared
            .queued
            .load(std::sync::atomic::Ordering::Acquire)
            > MAX_QUEUED_CHANGES
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        let batch = CommitBatch {
            made: std::time::Instant::now(),
            changes: std::mem::replace(&mut self.pending, Vec::with_capacity(FLUSH_CHANGES)),
            mark: self.mark,
            syncs: std::mem::take(&mut self.syncs),
        };
        self.committed = self.mark;
        self.shared
            .queued
            .fetch_add(batch.changes.len(), std::sync::atomic::Ordering::AcqRel);
        if self.committer.send(batch).is_err() {
            tracing::error!("the live committer has stopped; changes are not being saved");
        }
        self.publish_stats();
    }

    fn publish_stats(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let stats = &self.shared.stats;
        stats.users.store(self.state.user_ids.len() as u64, Relaxed);
        stats
            .deadlines
            .store(self.state.deadlines.len() as u64, Relaxed);
        stats
            .truncated_users
            .store(self.state.truncated_users, Relaxed);
        stats.watermark_at.store(self.mark.at, Relaxed);
        let mut builds = self.shared.builds.write();
        for seg in self.state.segments.iter().flatten() {
            if let Some(b) = builds.get_mut(&seg.id) {
                b.size = seg.size;
            }
        }
    }

    /// Fills the readers' view with every current membership (on load; the
    /// committer keeps it current from then on).
    fn fill_view(&self) {
        let view = &self.shared.view;
        for seg in self.state.segments.iter().flatten() {
            let slot = view.slot(&seg.id);
            for (w, &word) in seg.members.iter().enumerate() {
                let mut bits = word;
                while bits != 0 {
                    let u = w as u32 * 64 + bits.trailing_zeros();
                    bits &= bits - 1;
                    if let Some(id) = self.state.user_ids.get(u as usize) {
                        view.set(id, slot, true);
                    }
                }
            }
        }
    }

    fn snapshot(&self) -> Snapshot {
        let mut snap = Snapshot::default();
        for seg in self.state.segments.iter().flatten() {
            let members = (0..self.state.user_ids.len() as u32)
                .filter(|u| seg.contains(*u))
                .map(|u| self.state.user_ids[u as usize].to_string())
                .collect();
            snap.members.insert(seg.id.clone(), members);
        }
        for ((u, s), t) in self.state.deadlines.iter() {
            if let Some(seg) = self.state.segments.get(s as usize).and_then(|x| x.as_ref()) {
                snap.deadlines.insert(
                    (seg.id.clone(), self.state.user_ids[u as usize].to_string()),
                    t,
                );
            }
        }
        snap
    }

    /// The loop: wait for a message or the next deadline, handle what came,
    /// fire what is due, take a slice of a build, commit.
    pub fn run(mut self, rx: Receiver<Msg>) -> Stopped {
        self.commit();
        let mut stop = false;
        while !stop {
            let wait = if self.builds.is_empty() {
                match self.state.deadlines.next() {
                    Some(t) => (t - self.clock.now()).clamp(0, MAX_SLEEP_MS),
                    None => MAX_SLEEP_MS,
                }
            } else {
                0
            };
            let first = match rx.recv_timeout(Duration::from_millis(wait as u64)) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut handled = 0;
            let started = std::time::Instant::now();
            let mut next = first;
            while let Some(msg) = next {
                if matches!(msg, Msg::Stop) {
                    stop = true;
                }
                self.handle(msg);
                handled += 1;
                next = if handled < MAX_MESSAGES_PER_TURN {
                    rx.try_recv().ok()
                } else {
                    None
                };
            }
            let t0 = std::time::Instant::now();
            let now = self.now();
            self.fire_due(now);
            self.build_step(now);
            let t1 = std::time::Instant::now();
            let pending = self.pending.len();
            self.commit();
            tracing::debug!(
                handled,
                pending,
                handle_ms = (t0 - started).as_secs_f64() * 1000.0,
                turn_ms = (t1 - t0).as_secs_f64() * 1000.0,
                commit_ms = t1.elapsed().as_secs_f64() * 1000.0,
                "live turn"
            );
        }
        self.commit();
        tracing::debug!("live worker stopped");
        // Everything else (the committer's sender first) is dropped here.
        Stopped {
            savable: self.builds.is_empty() && self.pending.is_empty() && self.owns.is_none(),
            state: self.state,
            by_uid: self.by_uid,
            mark: self.mark,
            last_change_seq: self.next_seq - 1,
        }
    }
}

/// What a stopped worker leaves: its state, to save for the next start.
pub struct Stopped {
    state: State,
    by_uid: scan::ByUid,
    mark: Watermark,
    last_change_seq: i64,
    /// No build was under way and every change was handed over.
    savable: bool,
}

impl Stopped {
    /// Saves the state in `dir` for the next start. Not while a build was
    /// under way: the next start rebuilds then.
    pub fn save(&self, dir: &Path, stamp: &DerivedStamp, now: Millis) {
        if !self.savable {
            tracing::info!("live state not saved: a segment build was under way");
            return;
        }
        let mut header = Header::new(KIND, stamp, self.mark.event_seq, now);
        header.mark_at = Some(self.mark.at);
        header.change_seq = Some(self.last_change_seq);
        let started = std::time::Instant::now();
        match checkpoint::write(&checkpoint::path(dir, KIND), &header, |e| {
            self.by_uid.encode(e)?;
            self.state.encode(e)
        }) {
            Ok(bytes) => tracing::info!(
                bytes,
                ms = started.elapsed().as_millis() as u64,
                "live state saved"
            ),
            Err(e) => tracing::warn!(error = %e, "live state not saved"),
        }
    }
}

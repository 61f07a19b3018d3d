//! The one fan-out for derived state.
//!
//! Everything the engine keeps in memory besides configuration is derived
//! from the store: the columnar population index, the live engine (profiles,
//! deadlines) and the membership view it keeps for readers, the freshness
//! stamps that validate cached answers, the serving cache and sticky-state
//! cache, and the metric columns results read. [`Views`] owns all of them.
//!
//! A write path never updates a view itself: once its fact is durable in the
//! store it tells the fan-out ([`Derive`]) which fact happened, one method
//! per kind of fact, and the fan-out updates every view that depends on it.
//! HTTP, import, the Kafka member, cluster following, refresh and rebuild
//! all go through the same methods, so the paths cannot disagree, and a new
//! view is added here, in one place.
//!
//! Events are the one fact told in two steps, because of where each step
//! must run: [`Derive::commit_hook`] runs on the store's writer in commit
//! (sequence) order, as the live engine requires, and
//! [`Derive::events_appended`] runs on the caller once the write returns,
//! where the population index is fed without holding up the writer.

use crate::experiments::assign::Serving;
use crate::freshness::Freshness;
use crate::identity::{Aliases, UserMerged};
use crate::live::{Live, Msg, Owns};
use crate::population::SharedIndex;
use crate::results::{Columns, Tallies};
use crate::segments::{Catalog, MemberChange};
use crate::EngineError;
use std::collections::HashMap;
use std::sync::Arc;
use stratify_core::event::NewEvent;
use stratify_core::rules::Rule;
use stratify_core::time::Millis;
use stratify_store::{Appended, Attributes, ChangeRecord, CommitHook};

/// A configuration another node changed, as this node reloads it.
pub struct Reload<'a> {
    pub before: &'a Catalog,
    pub after: &'a Catalog,
    /// The current members of every static segment in `after`.
    pub static_members: HashMap<String, Vec<String>>,
    pub at: Millis,
}

/// The facts derived state follows. Each is told after it is durable.
#[async_trait::async_trait]
pub trait Derive: Send + Sync {
    /// A user's attributes were written: replaced, or laid over the stored
    /// ones (`merge`).
    fn user_written(&self, user: &str, attributes: &Attributes, merge: bool, at: Millis);
    /// A user and everything about them was erased.
    fn user_erased(&self, user: &str);
    /// An anonymous visitor was merged into a known user (identity
    /// stitching); the visitor's id is an alias from now on.
    fn user_merged(&self, merged: &UserMerged);
    /// The hook the store calls on its writer, in commit order, once an
    /// event batch is durable (see the module docs).
    fn commit_hook(&self, events: Arc<Vec<NewEvent>>) -> CommitHook;
    /// An event batch was appended (`appended` in input order).
    fn events_appended(&self, events: &[NewEvent], appended: &[Appended]);
    /// A segment was created, or its rule changed (`None`: a static segment).
    fn segment_put(&self, id: &str, rule: Option<Arc<Rule>>, at: Millis);
    /// A segment was deleted.
    fn segment_removed(&self, id: &str);
    /// A static segment's members changed.
    fn static_members_changed(&self, id: &str, change: MemberChange, users: &[String]);
    /// Memberships of users another node owns changed (the shared change log).
    fn memberships_followed(&self, changes: &[ChangeRecord]);
    /// This node now owns exactly the users `owns` accepts (a rebalance):
    /// their live state is rebuilt from the log.
    async fn ownership_changed(&self, catalog: &Catalog, owns: Owns) -> Result<(), EngineError>;

    /// The configuration was reloaded (another node changed it): every
    /// segment that is new, changed or gone is told as its own fact, and
    /// static members are replaced (they may change with no new version).
    fn config_reloaded(&self, reload: Reload<'_>) {
        for seg in reload.after.all() {
            let id = &seg.record.id;
            let changed = reload
                .before
                .get(id)
                .is_none_or(|old| old.record.version != seg.record.version);
            if changed {
                self.segment_put(id, seg.rule.clone().map(Arc::new), reload.at);
            }
            if let Some(users) = reload.static_members.get(id) {
                self.static_members_changed(id, MemberChange::Replace, users);
            }
        }
        for seg in reload.before.all() {
            if reload.after.get(&seg.record.id).is_none() {
                self.segment_removed(&seg.record.id);
            }
        }
    }
}

/// The derived views of one node.
pub struct Views {
    /// Population queries' columnar index; `None` on a shared store
    /// (PostgreSQL), whose own answer is the current one.
    pub(crate) population: Option<SharedIndex>,
    pub(crate) live: Arc<Live>,
    pub(crate) freshness: Arc<Freshness>,
    pub(crate) serving: Arc<Serving>,
    pub(crate) results_columns: Columns,
    /// Results kept per experiment as exposures and events arrive.
    pub(crate) results_tallies: Tallies,
    /// Ids merged into other users, and whom they resolve to.
    pub(crate) aliases: Arc<Aliases>,
}

#[async_trait::async_trait]
impl Derive for Views {
    fn user_written(&self, user: &str, attributes: &Attributes, merge: bool, at: Millis) {
        if let Some(index) = &self.population {
            let mut index = index.write();
            if merge {
                index.merge_attributes(user, attributes);
            } else {
                index.set_attributes(user, attributes);
            }
        }
        self.live.send(Msg::Attributes {
            user: user.to_owned(),
            attributes: attributes.clone(),
            merge,
            at,
        });
        self.freshness.touch(user);
    }

    fn user_erased(&self, user: &str) {
        self.aliases.erased(user);
        // Cached metric events must not outlive an erased user (a copy
        // being refreshed across the erasure is not kept either).
        self.results_columns.clear();
        self.results_tallies.clear();
        if let Some(index) = &self.population {
            index.write().remove_user(user);
        }
        self.serving.forget(user);
        self.live.view().remove_user(user);
        self.freshness.touch(user);
        self.live.send(Msg::UserDeleted(user.to_owned()));
    }

    fn user_merged(&self, m: &UserMerged) {
        self.aliases.merged(&m.anonymous, &m.known);
        if let Some(index) = &self.population {
            let mut index = index.write();
            index.merge_user(&m.anonymous, &m.known);
            if let Some(p) = &m.profile {
                index.set_attributes(&m.known, &p.attributes);
            }
        }
        match &m.merge {
            // The visitor's events, copied into metric columns under the
            // visitor's uid, are the person's now.
            Some(merge) if merge.duplicates_dropped == 0 => {
                if let Some(from) = merge.anonymous_uid.filter(|&u| u != merge.known_uid) {
                    self.results_columns.remap(from, merge.known_uid);
                }
            }
            // Events left the log (duplicates), or another node merged
            // (the uids are not known here): the copies are read again.
            _ => self.results_columns.clear(),
        }
        // Exposures and events moved to the person: tallies start again.
        self.results_tallies.clear();
        self.serving.forget(&m.anonymous);
        self.serving.forget(&m.known);
        self.live.view().remove_user(&m.anonymous);
        self.live.send(Msg::Identify {
            anonymous: m.anonymous.clone(),
            known: m.known.clone(),
            profile: m.profile.clone(),
            at: m.at,
        });
        self.freshness.touch(&m.anonymous);
        self.freshness.touch(&m.known);
    }

    fn commit_hook(&self, events: Arc<Vec<NewEvent>>) -> CommitHook {
        self.live.commit_hook(events)
    }

    fn events_appended(&self, events: &[NewEvent], appended: &[Appended]) {
        let Some(index) = &self.population else {
            return;
        };
        // The index wants each user's events in log order.
        let mut new: Vec<(i64, &NewEvent)> = events
            .iter()
            .zip(appended)
            .filter_map(|(e, a)| match a {
                Appended::New(seq) => Some((*seq, e)),
                Appended::Duplicate => None,
            })
            .collect();
        if new.is_empty() {
            return;
        }
        new.sort_unstable_by_key(|(seq, _)| *seq);
        index.write().add_events(new.into_iter().map(|(_, e)| {
            (
                e.user_id.as_str(),
                e.name.as_str(),
                e.timestamp,
                e.properties.as_ref(),
            )
        }));
    }

    fn segment_put(&self, id: &str, rule: Option<Arc<Rule>>, at: Millis) {
        self.live.put_segment(id, rule, at);
    }

    fn segment_removed(&self, id: &str) {
        if let Some(index) = &self.population {
            index.write().drop_static(id);
        }
        self.live.send(Msg::SegmentDeleted(id.to_owned()));
    }

    fn static_members_changed(&self, id: &str, change: MemberChange, users: &[String]) {
        if let Some(index) = &self.population {
            let mut index = index.write();
            match change {
                MemberChange::Add => index.add_static_members(id, users),
                MemberChange::Remove => index.remove_static_members(id, users),
                MemberChange::Replace => index.set_static_members(id, users),
            }
        }
        self.live.send(Msg::StaticMembers {
            id: id.to_owned(),
            change,
            users: users.to_vec(),
        });
    }

    fn memberships_followed(&self, changes: &[ChangeRecord]) {
        self.live.follow(changes);
        // Cached answers of these users read the memberships that moved.
        for c in changes {
            self.freshness.touch(&c.user_id);
        }
    }

    async fn ownership_changed(&self, catalog: &Catalog, owns: Owns) -> Result<(), EngineError> {
        self.live.reown(catalog, owns).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::FileKind;
    use crate::segments::SegmentInput;
    use crate::{Engine, ManualClock};
    use parking_lot::Mutex;
    use serde_json::json;
    use std::collections::BTreeMap;
    use stratify_core::ids::UserId;
    use stratify_store::sqlite::SqliteStore;
    use stratify_store::{Source, Users, WriteMode};

    const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z

    /// Records each fact told (its kind and subject), then hands it on.
    struct Recorder {
        inner: Arc<Views>,
        facts: Arc<Mutex<Vec<(&'static str, String)>>>,
    }

    impl Recorder {
        fn note(&self, kind: &'static str, subject: &str) {
            self.facts.lock().push((kind, subject.to_owned()));
        }
    }

    #[async_trait::async_trait]
    impl Derive for Recorder {
        fn user_written(&self, user: &str, attributes: &Attributes, merge: bool, at: Millis) {
            self.note("user_written", user);
            self.inner.user_written(user, attributes, merge, at);
        }
        fn user_erased(&self, user: &str) {
            self.note("user_erased", user);
            self.inner.user_erased(user);
        }
        fn user_merged(&self, merged: &UserMerged) {
            self.note("user_merged", &merged.anonymous);
            self.inner.user_merged(merged);
        }
        fn commit_hook(&self, events: Arc<Vec<NewEvent>>) -> CommitHook {
            self.note("commit_hook", &events.len().to_string());
            self.inner.commit_hook(events)
        }
        fn events_appended(&self, events: &[NewEvent], appended: &[Appended]) {
            self.note("events_appended", &events.len().to_string());
            self.inner.events_appended(events, appended);
        }
        fn segment_put(&self, id: &str, rule: Option<Arc<Rule>>, at: Millis) {
            self.note("segment_put", id);
            self.inner.segment_put(id, rule, at);
        }
        fn segment_removed(&self, id: &str) {
            self.note("segment_removed", id);
            self.inner.segment_removed(id);
        }
        fn static_members_changed(&self, id: &str, change: MemberChange, users: &[String]) {
            self.note("static_members_changed", id);
            self.inner.static_members_changed(id, change, users);
        }
        fn memberships_followed(&self, changes: &[ChangeRecord]) {
            self.note("memberships_followed", &changes.len().to_string());
            self.inner.memberships_followed(changes);
        }
        async fn ownership_changed(
            &self,
            catalog: &Catalog,
            owns: Owns,
        ) -> Result<(), EngineError> {
            self.note("ownership_changed", "");
            self.inner.ownership_changed(catalog, owns).await
        }
    }

    type Facts = Arc<Mutex<Vec<(&'static str, String)>>>;

    async fn recorded(dir: &std::path::Path) -> (Engine, Arc<SqliteStore>, Facts) {
        let store = Arc::new(SqliteStore::open(dir).expect("open"));
        let facts: Facts = Arc::default();
        let recorder = facts.clone();
        let engine = Engine::open(
            store.clone(),
            Arc::new(ManualClock::new(T0)),
            None,
            false,
            crate::EngineConfig::default(),
            move |views| {
                Arc::new(Recorder {
                    inner: views,
                    facts: recorder,
                })
            },
        )
        .await
        .expect("engine");
        (engine, store, facts)
    }

    async fn segment(e: &Engine, name: &str, rules: serde_json::Value) -> String {
        let input = SegmentInput {
            name: name.into(),
            rules: Some(rules),
            ..Default::default()
        };
        e.segments
            .create_segment(input, "test")
            .await
            .expect("segment")
            .record
            .id
            .clone()
    }

    fn user(id: &str) -> UserId {
        UserId::parse(id).expect("user id")
    }

    #[tokio::test]
    async fn a_local_erasure_and_a_remote_one_tell_the_same_facts() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (engine, store, facts) = recorded(dir.path()).await;
        let ordered = segment(
            &engine,
            "ordered",
            json!({"event": "order_placed", "op": "gte", "value": 1}),
        )
        .await;
        for id in ["local", "remote"] {
            let attrs = json!({"plan": "vip"})
                .as_object()
                .cloned()
                .unwrap_or_default();
            engine
                .users
                .write_user(user(id), attrs, WriteMode::Create)
                .await
                .expect("user");
            let event = json!({"user_id": id, "name": "order_placed", "timestamp": T0 - 1000,
                               "properties": {"amount": 5, "city": "Pune"}});
            engine
                .ingest
                .ingest_values(vec![Ok(event)], Source::Http)
                .await
                .expect("ingest");
        }
        engine.live().sync().await;
        assert!(engine
            .views
            .live
            .view()
            .contains("remote", engine.views.live.view().slot(&ordered)));
        let take = |f: &Facts| std::mem::take(&mut *f.lock());
        take(&facts);

        engine
            .users
            .delete_user(&user("local"))
            .await
            .expect("erase here");
        let local = take(&facts);
        // Another node erased `remote` in the shared store and told its owner.
        assert!(store
            .delete_user(&user("remote"), 0)
            .await
            .expect("erase there"));
        engine
            .cluster
            .refresh_user("remote")
            .await
            .expect("refresh");
        let remote = take(&facts);

        assert_eq!(local, vec![("user_erased", "local".to_owned())]);
        assert_eq!(remote, vec![("user_erased", "remote".to_owned())]);
        engine.live().sync().await;
        let view = engine.views.live.view();
        let index = engine
            .views
            .population
            .as_ref()
            .expect("an index on SQLite")
            .read();
        for id in ["local", "remote"] {
            assert!(
                !view.contains(id, view.slot(&ordered)),
                "{id} is still a member"
            );
            assert!(index.index_of(id).is_none(), "{id} is still indexed");
        }
    }

    /// Every membership and deadline, and every segment's population, by
    /// segment name (ids differ between engines).
    async fn derived_state(
        e: &Engine,
    ) -> (
        BTreeMap<String, Vec<String>>,
        Vec<(String, String, Millis)>,
        BTreeMap<String, Vec<String>>,
    ) {
        e.live().sync().await;
        let snapshot = e.live().snapshot().await;
        let name = |id: &str| e.segments.segment(id).expect("segment").record.name.clone();
        let members = snapshot
            .members
            .iter()
            .map(|(id, users)| (name(id), users.iter().cloned().collect()))
            .collect();
        let deadlines = snapshot
            .deadlines
            .iter()
            .map(|((id, user), at)| (name(id), user.clone(), *at))
            .collect();
        let mut populations = BTreeMap::new();
        for s in e.segments.list_segments() {
            let page = e
                .segments
                .segment_members(&s.record.id, 1000, None, None)
                .await
                .expect("members");
            populations.insert(s.record.name.clone(), page.user_ids);
        }
        (members, deadlines, populations)
    }

    #[tokio::test]
    async fn import_and_http_ingest_of_the_same_events_leave_identical_derived_state() {
        let rules = [
            (
                "two orders",
                json!({"event": "order_placed", "op": "gte", "value": 2}),
            ),
            (
                "recent login",
                json!({"event": "LOGIN", "within": "2d", "op": "gte", "value": 1}),
            ),
            (
                "big spender",
                json!({"field": "ltv", "op": "gte", "value": 50}),
            ),
            ("vip", json!({"field": "plan", "op": "eq", "value": "vip"})),
        ];
        let users = [("u1", "vip"), ("u2", "free"), ("u3", "vip")];
        let events: Vec<(String, &str, &str, i64, Option<i64>)> = (0..30)
            .map(|i| {
                let user = users[i % 3].0;
                let name = if i % 4 == 0 { "LOGIN" } else { "order_placed" };
                let amount = (name == "order_placed").then_some(7 * i as i64);
                (
                    format!("e{i}"),
                    user,
                    name,
                    T0 - (i as i64) * 3_600_000,
                    amount,
                )
            })
            .collect();

        let dir_a = tempfile::tempdir().expect("temp dir");
        let (imported, _, _) = recorded(dir_a.path()).await;
        let dir_b = tempfile::tempdir().expect("temp dir");
        let (sent, _, _) = recorded(dir_b.path()).await;
        for e in [&imported, &sent] {
            for (name, rule) in &rules {
                segment(e, name, rule.clone()).await;
            }
        }

        let mut users_csv = String::from("user_id,plan\n");
        let mut events_csv = String::from("event_id,user_id,event_name,timestamp,amount,city\n");
        for (id, plan) in users {
            users_csv += &format!("{id},{plan}\n");
            let attrs = json!({"plan": plan})
                .as_object()
                .cloned()
                .unwrap_or_default();
            sent.users
                .write_user(user(id), attrs, WriteMode::Create)
                .await
                .expect("user");
        }
        let mut items = Vec::new();
        for (event_id, user, name, ts, amount) in &events {
            let (amount_cell, city_cell) = match amount {
                Some(a) => (a.to_string(), "Pune".to_owned()),
                None => (String::new(), String::new()),
            };
            events_csv += &format!("{event_id},{user},{name},{ts},{amount_cell},{city_cell}\n");
            let mut event =
                json!({"event_id": event_id, "user_id": user, "name": name, "timestamp": ts});
            if let Some(a) = amount {
                event["properties"] = json!({"amount": a, "city": "Pune"});
            }
            items.push(Ok(event));
        }
        imported
            .ingest
            .import(
                FileKind::Users,
                std::io::Cursor::new(users_csv.into_bytes()),
                |_| {},
            )
            .await
            .expect("import users");
        let report = imported
            .ingest
            .import(
                FileKind::EventsCsv,
                std::io::Cursor::new(events_csv.into_bytes()),
                |_| {},
            )
            .await
            .expect("import events");
        assert_eq!((report.written, report.bad_rows), (30, 0), "{report:?}");
        let out = sent
            .ingest
            .ingest_values(items, Source::Http)
            .await
            .expect("ingest");
        assert_eq!(out.accepted, 30);

        let a = derived_state(&imported).await;
        let b = derived_state(&sent).await;
        assert!(
            a.0.values().any(|m| !m.is_empty()),
            "nothing to compare: {a:?}"
        );
        assert!(!a.1.is_empty(), "no deadline to compare: {a:?}");
        assert_eq!(a, b);
    }
}

//! The storage test suite, written against the `Store` trait. Every backend
//! runs it (SQLite and PostgreSQL); a few tests are about PostgreSQL alone
//! (several nodes writing at once).

use serde_json::json;
use stratify_core::event::NewEvent;
use stratify_core::ids::UserId;
use stratify_core::schema::EventTypeSchema;
use stratify_store::postgres::PgStore;
use stratify_store::sqlite::SqliteStore;
use stratify_store::*;

const NOW: i64 = 1_780_000_000_000;

fn event(v: serde_json::Value) -> NewEvent {
    NewEvent::from_json(v, NOW).unwrap_or_else(|e| panic!("test event invalid: {e}"))
}

fn batch(events: Vec<NewEvent>) -> EventBatch {
    let received = events.len() as u64;
    EventBatch {
        events: events.into(),
        report: IngestReport {
            source: Source::Http,
            received,
            rejected: 0,
            forwarded: 0,
            last_error: None,
            now: NOW,
        },
        on_commit: None,
    }
}

fn uid(s: &str) -> UserId {
    UserId::parse(s).unwrap_or_else(|e| panic!("{e}"))
}

async fn with_backends<F, Fut>(test: F)
where
    F: Fn(Box<dyn Store>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path()).expect("open sqlite");
    test(Box::new(store)).await;
    let url = stratify_store::testing::fresh_postgres().await;
    let store = PgStore::connect(&url).await.expect("open postgres");
    test(Box::new(store)).await;
}

#[tokio::test]
async fn events_with_the_same_event_id_are_appended_once() {
    with_backends(|s| async move {
        let first = s
            .append_events(batch(vec![event(
                json!({"event_id": "e1", "user_id": "u1", "name": "LOGIN"}),
            )]))
            .await;
        assert!(matches!(first.as_deref(), Ok([Appended::New(_)])));
        let again = s
            .append_events(batch(vec![
                event(json!({"event_id": "e1", "user_id": "u1", "name": "LOGIN"})),
                event(json!({"user_id": "u1", "name": "LOGIN"})),
                event(json!({"user_id": "u1", "name": "LOGIN"})),
            ]))
            .await
            .expect("append");
        assert_eq!(again[0], Appended::Duplicate);
        assert!(matches!(again[1], Appended::New(_)) && matches!(again[2], Appended::New(_)));
        assert_eq!(
            s.counts().await.expect("counts"),
            Counts {
                users: 1,
                events: 3
            }
        );
        let status = s.ingest_status().await.expect("status");
        assert_eq!(
            (status[0].received, status[0].accepted, status[0].duplicates),
            (4, 3, 1)
        );
        // Events handed to another node are counted as forwarded, with or
        // without events appended in the same batch.
        let mut with_forwarded = batch(vec![event(json!({"user_id": "u1", "name": "LOGIN"}))]);
        with_forwarded.report.received = 3;
        with_forwarded.report.forwarded = 2;
        s.append_events(with_forwarded).await.expect("append");
        s.record_ingest(IngestReport {
            source: Source::Http,
            received: 5,
            rejected: 0,
            forwarded: 5,
            last_error: None,
            now: NOW,
        })
        .await
        .expect("record");
        let status = s.ingest_status().await.expect("status");
        assert_eq!(
            (status[0].received, status[0].accepted, status[0].forwarded),
            (12, 4, 7)
        );
    })
    .await;
}

#[tokio::test]
async fn a_dedupe_key_collision_with_a_different_event_id_keeps_both_events() {
    with_backends(|s| async move {
        let a = event(json!({"event_id": "a", "user_id": "u", "name": "n"}));
        let mut b = event(json!({"event_id": "b", "user_id": "u", "name": "n"}));
        b.dedupe_key = a.dedupe_key; // forge a collision
        let out = s.append_events(batch(vec![a, b])).await.expect("append");
        assert!(out.iter().all(|o| matches!(o, Appended::New(_))), "{out:?}");
        let events = s
            .query_events(EventQuery {
                limit: 10,
                ..Default::default()
            })
            .await
            .expect("query");
        let ids: Vec<_> = events.iter().filter_map(|e| e.event_id.clone()).collect();
        assert_eq!(ids, ["a", "b"]);
    })
    .await;
}

#[tokio::test]
async fn user_write_modes_create_replace_and_merge() {
    with_backends(|s| async move {
        let attrs = |v: serde_json::Value| v.as_object().cloned().unwrap_or_default();
        let u = s
            .write_user(
                uid("u"),
                attrs(json!({"age": 30, "city": "Pune"})),
                WriteMode::Create,
                NOW,
            )
            .await;
        assert_eq!(
            u.map(|u| u.attributes).ok(),
            Some(attrs(json!({"age": 30, "city": "Pune"})))
        );
        let dup = s
            .write_user(uid("u"), attrs(json!({})), WriteMode::Create, NOW)
            .await;
        assert!(matches!(dup, Err(StoreError::Conflict(_))));
        let merged = s
            .write_user(
                uid("u"),
                attrs(json!({"age": 31, "city": null, "vip": true})),
                WriteMode::Merge,
                NOW + 5,
            )
            .await;
        let merged = merged.expect("merge");
        assert_eq!(merged.attributes, attrs(json!({"age": 31, "vip": true})));
        assert_eq!((merged.created_at, merged.updated_at), (NOW, NOW + 5));
        let replaced = s
            .write_user(
                uid("u"),
                attrs(json!({"plan": "free"})),
                WriteMode::Replace,
                NOW,
            )
            .await;
        assert_eq!(
            replaced.map(|u| u.attributes).ok(),
            Some(attrs(json!({"plan": "free"})))
        );
        let missing = s
            .write_user(uid("nobody"), attrs(json!({})), WriteMode::Merge, NOW)
            .await;
        assert!(matches!(missing, Err(StoreError::NotFound(_))));
    })
    .await;
}

#[tokio::test]
async fn deleting_a_user_erases_their_events_but_not_others() {
    with_backends(|s| async move {
        s.append_events(batch(vec![
            event(json!({"user_id": "gone", "name": "LOGIN"})),
            event(json!({"user_id": "stays", "name": "LOGIN"})),
        ]))
        .await
        .expect("append");
        assert!(s.delete_user(&uid("gone"), NOW).await.expect("delete"));
        assert!(!s
            .delete_user(&uid("gone"), NOW)
            .await
            .expect("delete twice"));
        assert_eq!(s.get_user(&uid("gone")).await.expect("get"), None);
        let left = s
            .query_events(EventQuery {
                limit: 10,
                ..Default::default()
            })
            .await
            .expect("query");
        assert_eq!(
            left.iter().map(|e| e.user_id.as_str()).collect::<Vec<_>>(),
            ["stays"]
        );
        // A new event recreates the user with a fresh identity.
        s.append_events(batch(vec![event(
            json!({"user_id": "gone", "name": "LOGIN"}),
        )]))
        .await
        .expect("append");
        assert_eq!(
            s.counts().await.expect("counts"),
            Counts {
                users: 2,
                events: 2
            }
        );
    })
    .await;
}

#[tokio::test]
async fn event_queries_filter_and_page_by_sequence() {
    with_backends(|s| async move {
        let events = (0..25)
            .map(|i| event(json!({"user_id": format!("u{}", i % 3), "name": if i % 2 == 0 {"A"} else {"B"}, "timestamp": 1000 * i})))
            .collect();
        s.append_events(batch(events)).await.expect("append");
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let page = s
                .query_events(EventQuery { user_id: Some("u0".into()), after_seq: after, limit: 3, ..Default::default() })
                .await
                .expect("page");
            if page.is_empty() {
                break;
            }
            after = page.last().map(|e| e.seq);
            seen.extend(page.into_iter().map(|e| e.timestamp));
        }
        assert_eq!(seen, (0..25).filter(|i| i % 3 == 0).map(|i| 1000 * i).collect::<Vec<i64>>());
        // Newest first, paged backwards by the same cursor.
        let mut back = Vec::new();
        let mut before = None;
        loop {
            let page = s
                .query_events(EventQuery { user_id: Some("u0".into()), after_seq: before, newest_first: true, limit: 4, ..Default::default() })
                .await
                .expect("page");
            if page.is_empty() {
                break;
            }
            before = page.last().map(|e| e.seq);
            back.extend(page.into_iter().map(|e| e.timestamp));
        }
        assert_eq!(back, seen.iter().rev().copied().collect::<Vec<i64>>());
        let window = s
            .query_events(EventQuery { name: Some("A".into()), from: Some(4000), to: Some(10_000), limit: 100, ..Default::default() })
            .await
            .expect("window");
        let mut ts: Vec<_> = window.iter().map(|e| e.timestamp).collect();
        ts.sort_unstable();
        assert_eq!(ts, [4000, 6000, 8000]);
    })
    .await;
}

#[tokio::test]
async fn an_experiment_s_events_are_its_users_from_their_exposure_on() {
    with_backends(|s| async move {
        s.append_events(batch(vec![
            event(json!({"user_id": "u1", "name": "A", "timestamp": 1000})),
            event(json!({"user_id": "u1", "name": "A", "timestamp": 3000})),
            event(json!({"user_id": "u2", "name": "A", "timestamp": 4000})),
            event(json!({"user_id": "u3", "name": "A", "timestamp": 5000})),
        ]))
        .await
        .expect("append");
        let exposed = |user: &str, exp: &str, variant: &str, version: u32, at: i64| AssignmentRecord {
            user_id: user.into(),
            experiment_id: exp.into(),
            variant: variant.into(),
            bucket_version: version,
            assigned_at: at,
        };
        s.save_assignments(std::sync::Arc::new(vec![
            exposed("u1", "other", "a", 1, 0),
            exposed("u1", "x", "a", 1, 2000),
            exposed("u2", "x", "b", 1, 2000),
            exposed("u3", "x", "b", 2, 2000),
        ]))
        .await
        .expect("assign");
        let s = &*s;
        let times = |experiment: &'static str, version: u32, variant: Option<&'static str>| async move {
            let filter = ExperimentFilter {
                experiment_id: experiment.into(),
                bucket_version: version,
                variant: variant.map(Into::into),
            };
            let mut ts: Vec<i64> = s
                .query_events(EventQuery { experiment: Some(filter), limit: 100, ..Default::default() })
                .await
                .expect("query")
                .iter()
                .map(|e| e.timestamp)
                .collect();
            ts.sort_unstable();
            ts
        };
        assert_eq!(times("x", 1, None).await, [3000, 4000], "from the exposure on, one bucket version");
        assert_eq!(times("x", 1, Some("b")).await, [4000]);
        assert_eq!(times("x", 2, Some("b")).await, [5000]);
        assert_eq!(times("x", 3, None).await, Vec::<i64>::new());
        assert_eq!(times("other", 1, Some("a")).await, [1000, 3000]);
        assert_eq!(times("nope", 1, None).await, Vec::<i64>::new());
    })
    .await;
}

#[tokio::test]
async fn user_events_come_oldest_first_up_to_an_instant() {
    with_backends(|s| async move {
        s.append_events(batch(vec![
            event(json!({"user_id": "u", "name": "order_placed", "timestamp": 2000, "properties": {"amount": 100.5, "city": "Pune"}})),
            event(json!({"user_id": "u", "name": "order_placed", "timestamp": 1000, "properties": {"amount": 50, "city": "Delhi"}})),
            event(json!({"user_id": "u", "name": "LOGIN", "timestamp": 3000})),
            event(json!({"user_id": "other", "name": "LOGIN", "timestamp": 1500})),
        ]))
        .await
        .expect("append");
        let events = s.user_events(&uid("u"), 2000, 100).await.expect("events");
        let seen: Vec<(i64, &str)> = events.iter().map(|e| (e.timestamp, e.name.as_str())).collect();
        assert_eq!(seen, [(1000, "order_placed"), (2000, "order_placed")]);
        assert_eq!(events[1].properties.as_ref().and_then(|p| p.get("city")), Some(&json!("Pune")));
        assert!(s.user_events(&uid("nobody"), 9999, 100).await.expect("none").is_empty());
    })
    .await;
}

#[tokio::test]
async fn event_types_and_attribute_schema_round_trip() {
    with_backends(|s| async move {
        let schema: EventTypeSchema =
            serde_json::from_value(json!({"name": "order_placed", "properties": {"amount": {"type": "number", "required": true}}}))
                .expect("schema");
        let rec = s.put_event_type(schema.clone(), NOW).await.expect("put");
        let again = s.put_event_type(schema.clone(), NOW + 10).await.expect("put again");
        assert_eq!((rec.created_at, again.created_at, again.updated_at), (NOW, NOW, NOW + 10));
        assert_eq!(s.list_event_types().await.expect("list").into_iter().map(|r| r.schema).collect::<Vec<_>>(), [schema]);
        assert!(s.delete_event_type("order_placed").await.expect("delete"));
        assert!(s.list_event_types().await.expect("list").is_empty());
        let attr = serde_json::from_value(json!({"attributes": {"age": {"type": "number"}}})).expect("attr schema");
        s.put_attribute_schema(attr, NOW).await.expect("put attr");
        assert_eq!(s.attribute_schema().await.expect("attr").attributes.len(), 1);
    })
    .await;
}

#[tokio::test]
async fn api_keys_are_created_listed_and_revoked_once() {
    with_backends(|s| async move {
        let key = ApiKeyRecord {
            id: "k1".into(),
            name: "ci".into(),
            role: "viewer".into(),
            key_hash: vec![1; 32],
            created_at: NOW,
            revoked_at: None,
        };
        s.create_api_key(key.clone()).await.expect("create");
        assert!(matches!(
            s.create_api_key(key.clone()).await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(s.list_api_keys().await.expect("list"), [key]);
        assert!(s.revoke_api_key("k1", NOW + 1).await.expect("revoke"));
        assert!(!s.revoke_api_key("k1", NOW + 2).await.expect("revoke again"));
        assert_eq!(
            s.list_api_keys().await.expect("list")[0].revoked_at,
            Some(NOW + 1)
        );
    })
    .await;
}

#[tokio::test]
async fn concurrent_writers_are_group_committed_and_all_durable() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let store = std::sync::Arc::new(SqliteStore::open(dir.path()).expect("open"));
        let mut tasks = Vec::new();
        for t in 0..16 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..50 {
                    let e = event(json!({"event_id": format!("{t}-{i}"), "user_id": format!("u{t}"), "name": "X"}));
                    store.append_events(batch(vec![e])).await.expect("append");
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        std::sync::Arc::try_unwrap(store)
            .ok()
            .expect("sole owner")
            .close();
    }
    let reopened = SqliteStore::open(dir.path()).expect("reopen");
    assert_eq!(
        reopened.counts().await.expect("counts"),
        Counts {
            users: 16,
            events: 800
        }
    );
}

#[tokio::test]
async fn merge_users_reports_only_real_changes() {
    with_backends(|s| async move {
        let rows = |age: i64| {
            vec![(
                uid("a"),
                json!({"age": age}).as_object().cloned().unwrap_or_default(),
            )]
        };
        assert_eq!(
            s.merge_users(std::sync::Arc::new(rows(30)), NOW)
                .await
                .expect("first"),
            1
        );
        assert_eq!(
            s.merge_users(std::sync::Arc::new(rows(30)), NOW)
                .await
                .expect("same"),
            0
        );
        assert_eq!(
            s.merge_users(std::sync::Arc::new(rows(31)), NOW)
                .await
                .expect("changed"),
            1
        );
    })
    .await;
}

#[tokio::test]
async fn a_batch_is_appended_in_user_then_time_order_and_answers_in_input_order() {
    with_backends(|s| async move {
        let out = s
            .append_events(batch(vec![
                event(json!({"user_id": "b", "name": "X", "timestamp": 2})),
                event(json!({"user_id": "a", "name": "X", "timestamp": 9})),
                event(json!({"user_id": "b", "name": "X", "timestamp": 1})),
            ]))
            .await
            .expect("append");
        let seqs: Vec<i64> = out
            .iter()
            .map(|a| match a {
                Appended::New(seq) => *seq,
                Appended::Duplicate => -1,
            })
            .collect();
        let events = s
            .query_events(EventQuery {
                limit: 10,
                ..Default::default()
            })
            .await
            .expect("query");
        let logged: Vec<(String, i64)> = events
            .iter()
            .map(|e| (e.user_id.clone(), e.timestamp))
            .collect();
        // Each user's events are contiguous and oldest first (which user
        // comes first is the backend's interning order).
        let (a, b1, b2) = (
            ("a".to_owned(), 9),
            ("b".to_owned(), 1),
            ("b".to_owned(), 2),
        );
        assert!(
            logged == [b1.clone(), b2.clone(), a.clone()] || logged == [a, b1, b2],
            "{logged:?}"
        );
        // The answer is in input order.
        let input = [("b", 2), ("a", 9), ("b", 1)];
        for (seq, (user, ts)) in seqs.iter().zip(input) {
            let e = events.iter().find(|e| e.seq == *seq).expect("appended");
            assert_eq!((e.user_id.as_str(), e.timestamp), (user, ts));
        }
    })
    .await;
}

#[tokio::test]
async fn event_ids_are_idempotency_keys_per_user() {
    with_backends(|s| async move {
        let out = s
            .append_events(batch(vec![
                event(json!({"event_id": "e", "user_id": "u1", "name": "X"})),
                event(json!({"event_id": "e", "user_id": "u2", "name": "X"})),
                event(json!({"event_id": "e", "user_id": "u1", "name": "X"})),
            ]))
            .await
            .expect("append");
        assert!(
            matches!(
                out[..],
                [Appended::New(_), Appended::New(_), Appended::Duplicate]
            ),
            "{out:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn commit_hooks_run_in_sequence_order_after_the_commit() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = std::sync::Arc::new(SqliteStore::open(dir.path()).expect("open"));
    let seen = std::sync::Arc::new(parking_lot::Mutex::new(Vec::<i64>::new()));
    let mut tasks = Vec::new();
    for t in 0..8 {
        let (store, seen) = (store.clone(), seen.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                let mut b = batch(vec![event(
                    json!({"event_id": format!("{t}-{i}"), "user_id": format!("u{t}"), "name": "X"}),
                )]);
                let seen = seen.clone();
                b.on_commit = Some(CommitHook(std::sync::Arc::new(move |a: &[Appended], _uids: &[i64]| {
                    for x in a {
                        if let Appended::New(seq) = x {
                            seen.lock().push(*seq);
                        }
                    }
                })));
                store.append_events(b).await.expect("append");
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let seen = seen.lock().clone();
    assert_eq!(seen.len(), 200);
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "hooks out of order");
}

fn change(seq: i64, segment: &str, user: &str, entered: bool, at: i64) -> ChangeRecord {
    ChangeRecord {
        seq,
        segment_id: segment.into(),
        user_id: user.into(),
        entered,
        at,
        cause: Cause::Time,
    }
}

/// Issue 19: nodes sharing a store each keep their own watermark; once a
/// node of a cluster commits, the single-node watermark is gone (a node
/// started alone later rebuilds from the log instead of resuming from a
/// point the cluster moved past).
#[tokio::test]
async fn each_node_keeps_its_own_watermark() {
    with_backends(|s| async move {
        let mark = |event_seq, at| Watermark { event_seq, at };
        s.apply_changes(vec![].into(), mark(5, NOW), None)
            .await
            .expect("alone");
        assert_eq!(s.watermark(None).await.expect("w"), Some(mark(5, NOW)));
        s.apply_changes(
            vec![change(1, "s", "a", true, NOW)].into(),
            mark(9, NOW + 1),
            Some("a"),
        )
        .await
        .expect("node a");
        s.apply_changes(vec![].into(), mark(7, NOW + 2), Some("b"))
            .await
            .expect("node b");
        s.apply_changes(vec![].into(), mark(8, NOW + 3), Some("b"))
            .await
            .expect("node b again");
        assert_eq!(
            s.watermark(Some("a")).await.expect("w"),
            Some(mark(9, NOW + 1))
        );
        assert_eq!(
            s.watermark(Some("b")).await.expect("w"),
            Some(mark(8, NOW + 3))
        );
        assert_eq!(s.watermark(Some("c")).await.expect("w"), None);
        assert_eq!(
            s.watermark(None).await.expect("w"),
            None,
            "the single-node mark is gone"
        );
    })
    .await;
}

#[tokio::test]
async fn changes_open_and_close_memberships_with_the_watermark() {
    with_backends(|s| async move {
        assert_eq!(s.watermark(None).await.expect("mark"), None);
        assert_eq!(s.last_change_seq().await.expect("seq"), 0);
        let hour = 3_600_000;
        let mark = Watermark {
            event_seq: 7,
            at: NOW,
        };
        s.apply_changes(
            vec![
                change(1, "s1", "u1", true, NOW),
                change(2, "s2", "u1", true, NOW + 1),
                change(3, "s1", "u2", true, NOW + hour),
            ]
            .into(),
            mark,
            None,
        )
        .await
        .expect("apply");
        s.apply_changes(
            vec![change(4, "s1", "u1", false, NOW + 2 * hour)].into(),
            mark,
            None,
        )
        .await
        .expect("apply");
        assert_eq!(s.watermark(None).await.expect("mark"), Some(mark));
        assert_eq!(s.last_change_seq().await.expect("seq"), 4);
        let mut open = s.open_memberships().await.expect("open");
        open.sort();
        assert_eq!(
            open,
            vec![("s1".into(), "u2".into()), ("s2".into(), "u1".into())]
        );
        let history = s.user_memberships("u1", 10).await.expect("history");
        assert_eq!(history.len(), 2);
        assert_eq!(history[0].segment_id, "s2", "newest first");
        assert_eq!(history[1].exited_at, Some(NOW + 2 * hour));
        let s1: Vec<i64> = s
            .changes(Some(vec!["s1".into()]), 0, 10)
            .await
            .expect("changes")
            .iter()
            .map(|c| c.seq)
            .collect();
        assert_eq!(s1, vec![1, 3, 4]);
        let after: Vec<i64> = s
            .changes(None, 2, 1)
            .await
            .expect("changes")
            .iter()
            .map(|c| c.seq)
            .collect();
        assert_eq!(after, vec![3]);
        let buckets = s.change_buckets("s1", hour).await.expect("buckets");
        let counts: Vec<(u64, u64)> = buckets.iter().map(|b| (b.entered, b.exited)).collect();
        assert_eq!(counts, vec![(1, 0), (1, 0), (0, 1)]);
        assert!(buckets.iter().all(|b| b.start % hour == 0));
        // Erasing a user erases their memberships and changes too.
        s.append_events(batch(vec![event(json!({"user_id": "u1", "name": "X"}))]))
            .await
            .expect("append");
        assert!(s.delete_user(&uid("u1"), NOW).await.expect("delete"));
        assert!(s.user_memberships("u1", 10).await.expect("h").is_empty());
        assert_eq!(s.changes(None, 0, 10).await.expect("c").len(), 1);
    })
    .await;
}

#[tokio::test]
async fn webhooks_keep_their_delivery_progress() {
    with_backends(|s| async move {
        let hook = WebhookRecord {
            id: "w1".into(),
            url: "http://127.0.0.1:9/hook".into(),
            segment_ids: Some(vec!["s1".into()]),
            secret: "shh".into(),
            created_at: NOW,
            delivered_seq: 3,
            failures: 0,
            last_error: None,
            last_attempt_at: None,
        };
        s.create_webhook(hook.clone()).await.expect("create");
        assert_eq!(s.webhooks().await.expect("list"), vec![hook.clone()]);
        s.record_delivery("w1", 9, 2, Some("503".into()), NOW + 5)
            .await
            .expect("record");
        // The cursor never moves back.
        s.record_delivery("w1", 4, 0, None, NOW + 6)
            .await
            .expect("record");
        let got = &s.webhooks().await.expect("list")[0];
        assert_eq!((got.delivered_seq, got.failures), (9, 0));
        assert!(s.delete_webhook("w1").await.expect("delete"));
        assert!(!s.delete_webhook("w1").await.expect("delete"));
    })
    .await;
}

#[tokio::test]
async fn experiments_have_unique_keys_and_compare_and_set_transitions() {
    with_backends(|s| async move {
        let e = ExperimentRecord {
            id: "exp_1".into(),
            key: "pizza-tile".into(),
            name: "Pizza tile".into(),
            status: "draft".into(),
            definition: json!({"variants": []}),
            version: 1,
            created_at: NOW,
            updated_at: NOW,
            created_by: Some("k".into()),
            updated_by: Some("k".into()),
        };
        s.create_experiment(e.clone()).await.expect("create");
        let mut again = e.clone();
        again.id = "exp_2".into();
        assert!(matches!(
            s.create_experiment(again).await,
            Err(StoreError::Conflict(_))
        ));
        assert!(s
            .transition_experiment("exp_1", "draft", "running", NOW + 1, Some("k".into()))
            .await
            .expect("start"));
        // A stale transition (from a status it is no longer in) does nothing.
        assert!(!s
            .transition_experiment("exp_1", "draft", "running", NOW + 2, None)
            .await
            .expect("stale"));
        let mut changed = e.clone();
        changed.version = 2;
        changed.definition = json!({"variants": [1]});
        s.update_experiment(changed).await.expect("update");
        let all = s.experiments().await.expect("list");
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].status.as_str(), all[0].version), ("running", 2));
        assert_eq!(all[0].definition, json!({"variants": [1]}));
        let t = s
            .experiment_transitions("exp_1")
            .await
            .expect("transitions");
        assert_eq!(t.len(), 1);
        assert_eq!(
            (t[0].from.as_str(), t[0].to.as_str(), t[0].at),
            ("draft", "running", NOW + 1)
        );
        let mut missing = e;
        missing.id = "nope".into();
        assert!(matches!(
            s.update_experiment(missing).await,
            Err(StoreError::NotFound(_))
        ));
    })
    .await;
}

fn assignment(user: &str, variant: &str, version: u32, at: i64) -> AssignmentRecord {
    AssignmentRecord {
        user_id: user.into(),
        experiment_id: "exp_1".into(),
        variant: variant.into(),
        bucket_version: version,
        assigned_at: at,
    }
}

#[tokio::test]
async fn assignments_stick_until_a_higher_bucket_version_replaces_them() {
    with_backends(|s| async move {
        s.save_assignments(std::sync::Arc::new(vec![
            assignment("u1", "a", 1, NOW),
            assignment("u2", "b", 1, NOW + 1),
        ]))
        .await
        .expect("save");
        // The same version again (a racing first exposure) changes nothing.
        s.save_assignments(std::sync::Arc::new(vec![assignment("u1", "b", 1, NOW + 5)]))
            .await
            .expect("save again");
        let (u1, _) = s.serving_state("u1").await.expect("read");
        assert_eq!(u1, vec![assignment("u1", "a", 1, NOW)]);
        // Re-randomised: version 2 replaces; an older version never comes back.
        s.save_assignments(std::sync::Arc::new(vec![assignment("u1", "b", 2, NOW + 9)]))
            .await
            .expect("rerandomise");
        s.save_assignments(std::sync::Arc::new(vec![assignment(
            "u1",
            "a",
            1,
            NOW + 10,
        )]))
        .await
        .expect("stale");
        assert_eq!(
            s.serving_state("u1").await.expect("read").0,
            vec![assignment("u1", "b", 2, NOW + 9)]
        );
        let v1 = s
            .experiment_exposures("exp_1", 1, 0, i64::MAX)
            .await
            .expect("by experiment");
        let variants: Vec<&str> = v1
            .variant
            .iter()
            .map(|&i| v1.variants[usize::from(i)].as_str())
            .collect();
        assert_eq!((variants, v1.assigned_at), (vec!["b"], vec![NOW + 1]));
        // Erasing a user erases their assignments and banners.
        s.append_events(batch(vec![event(
            json!({"user_id": "u2", "name": "LOGIN"}),
        )]))
        .await
        .expect("append");
        s.save_banner_mixture(BannerMixtureRecord {
            user_id: "u2".into(),
            mixture: json!({"banners": [1, 2, 3]}),
            assigned_at: NOW,
            expires_at: NOW + 86_400_000,
        })
        .await
        .expect("mixture");
        assert_eq!(
            s.serving_state("u2")
                .await
                .expect("read")
                .1
                .map(|m| m.mixture),
            Some(json!({"banners": [1, 2, 3]}))
        );
        s.save_banner_mixture(BannerMixtureRecord {
            user_id: "u9".into(),
            mixture: json!({"banners": [4]}),
            assigned_at: NOW,
            expires_at: NOW + 1,
        })
        .await
        .expect("mixture only");
        let served = || async {
            let ids = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
            let sink = ids.clone();
            s.served_user_ids(std::sync::Arc::new(move |id: &str| {
                sink.lock().push(id.to_owned())
            }))
            .await
            .expect("served");
            let mut ids = ids.lock().clone();
            ids.sort();
            ids.dedup();
            ids
        };
        assert_eq!(
            served().await,
            ["u1", "u2", "u9"],
            "users with assignments or a mixture"
        );
        assert!(s.delete_user(&uid("u2"), NOW).await.expect("delete"));
        assert_eq!(s.serving_state("u2").await.expect("read"), (vec![], None));
        assert_eq!(served().await, ["u1", "u9"]);
    })
    .await;
}

#[tokio::test]
async fn exposures_and_metric_scans_read_what_results_need() {
    with_backends(|s| async move {
        // u1 and u2 have events (so profiles); u3 was only served.
        s.append_events(batch(vec![
            event(json!({"user_id": "u1", "name": "buy", "timestamp": NOW + 5, "properties": {"amount": 12.5}})),
            event(json!({"user_id": "u1", "name": "buy", "timestamp": NOW + 6, "properties": {"amount": "n/a"}})),
            event(json!({"user_id": "u2", "name": "buy", "timestamp": NOW + 7, "properties": {"amount": 3}})),
            event(json!({"user_id": "u2", "name": "view", "timestamp": NOW + 8})),
            event(json!({"user_id": "u2", "name": "buy", "timestamp": NOW + 100})),
        ]))
        .await
        .expect("append");
        s.save_assignments(std::sync::Arc::new(vec![
            assignment("u1", "a", 1, NOW),
            assignment("u2", "b", 1, NOW + 1),
            assignment("u3", "a", 1, NOW + 2),
            assignment("u4", "b", 2, NOW + 3),
        ]))
        .await
        .expect("assign");
        let x = s.experiment_exposures("exp_1", 1, NOW, NOW + 1).await.expect("exposures");
        assert_eq!(x.assigned_at, vec![NOW, NOW + 1], "from and to are inclusive");
        let all = s.experiment_exposures("exp_1", 1, i64::MIN, i64::MAX).await.expect("all");
        assert_eq!(all.uid.len(), 3, "only bucket version 1");
        assert_eq!(all.uid.iter().filter(|u| u.is_none()).count(), 1, "u3 has no profile");
        let names: Vec<&str> = all.variant.iter().map(|&v| all.variants[v as usize].as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(sorted, vec!["a", "a", "b"]);

        // Read by assignment number: everyone, then only what was written
        // (or re-randomised) since, whatever its exposure time.
        let first = s.exposures_since("exp_1", 1, -1).await.expect("since");
        assert_eq!(first.uid.len(), 3, "only bucket version 1");
        assert!(first.through_seq > 0);
        let orphan = first.uid.iter().position(Option::is_none).expect("u3") as u32;
        assert_eq!(first.no_profile, vec![(orphan, "u3".to_string())], "the id of the user without a profile");
        assert_eq!(first.max_uid, first.uid.iter().flatten().copied().max().unwrap());
        let after: Vec<String> = s.user_ids_after(0, 10).await.expect("ids").into_iter().map(|(_, id)| id).collect();
        assert_eq!(after, vec!["u1".to_string(), "u2".into()]);
        assert!(s.user_ids_after(first.max_uid, 10).await.expect("ids").is_empty());
        let none = s.exposures_since("exp_1", 1, first.through_seq).await.expect("since");
        assert_eq!((none.uid.len(), none.through_seq), (0, first.through_seq), "nothing new");
        s.save_assignments(std::sync::Arc::new(vec![
            assignment("u5", "b", 1, NOW - 50),
            assignment("u1", "b", 1, NOW + 9), // already assigned: no change
            assignment("u4", "a", 3, NOW + 9), // another version
        ]))
        .await
        .expect("assign");
        let next = s.exposures_since("exp_1", 1, first.through_seq).await.expect("since");
        assert_eq!(next.assigned_at, vec![NOW - 50], "only the new exposure, though earlier");
        assert_eq!(next.variants, vec!["b".to_string()]);
        assert!(next.through_seq > first.through_seq);
        let v3 = s.exposures_since("exp_1", 3, next.through_seq - 3).await.expect("since");
        assert_eq!(v3.assigned_at, vec![NOW + 9], "a re-randomised row is numbered anew");
        assert_eq!(s.exposures_since("exp_1", 1, -1).await.expect("since").uid.len(), 4);

        let seen = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
        let sink_seen = seen.clone();
        let sink: MetricSink = std::sync::Arc::new(move |events: &[MetricEvent]| {
            sink_seen.lock().extend_from_slice(events)
        });
        let scan = MetricScan {
            event: "buy".into(),
            property: Some("amount".into()),
            since: NOW,
            until: NOW + 50,
            after_seq: 0,
        };
        let n = s.scan_metric_events(scan.clone(), sink.clone()).await.expect("scan");
        assert_eq!(n.events, 3, "the buy at NOW+100 is after until; view is another name");
        assert_eq!(n.through_seq, 5);
        assert_eq!(s.last_event_seq().await.expect("last"), 5);
        let again = MetricScan { after_seq: 3, ..scan.clone() };
        assert_eq!(s.scan_metric_events(again, sink.clone()).await.expect("scan").events, 0, "seq 4, 5 are not buys in range");
        let mut got: Vec<(i64, Option<f64>)> = seen.lock().iter().map(|e| (e.ts, e.value)).collect();
        got.sort_by_key(|g| g.0);
        assert_eq!(got, vec![(NOW + 5, Some(12.5)), (NOW + 6, None), (NOW + 7, Some(3.0))]);
        // A boolean is not a number, on either backend (SQLite's
        // json_extract would read `true` as 1).
        s.append_events(batch(vec![event(
            json!({"user_id": "u1", "name": "buy", "timestamp": NOW + 9, "properties": {"amount": true}}),
        )]))
        .await
        .expect("append");
        seen.lock().clear();
        let later = MetricScan { after_seq: 5, ..scan.clone() };
        assert_eq!(s.scan_metric_events(later, sink.clone()).await.expect("scan").events, 1);
        assert_eq!(seen.lock()[0].value, None, "true is not a metric value");
        let unknown = MetricScan { event: "never".into(), ..scan };
        assert_eq!(s.scan_metric_events(unknown, sink).await.expect("scan").events, 0);

        s.create_metric(MetricRecord { key: "m".into(), definition: json!({"k": 1}), created_at: NOW, updated_at: NOW })
            .await
            .expect("create");
        let dup = s
            .create_metric(MetricRecord { key: "m".into(), definition: json!({}), created_at: NOW, updated_at: NOW })
            .await;
        assert!(matches!(dup, Err(StoreError::Conflict(_))));
        assert_eq!(s.metrics().await.expect("list")[0].definition, json!({"k": 1}));
        assert!(s.delete_metric("m").await.expect("delete"));
        assert!(!s.delete_metric("m").await.expect("delete again"));
    })
    .await;
}

#[tokio::test]
async fn a_lease_has_one_holder_until_it_expires_and_keeps_its_cursor() {
    with_backends(|s| async move {
        let hold = |who: &'static str, now: i64| {
            let s = &s;
            async move {
                s.hold_lease("relay", who, now, now + 5_000)
                    .await
                    .expect("lease")
            }
        };
        assert_eq!(hold("a", NOW).await, Some(0), "a new lease starts at 0");
        assert_eq!(hold("b", NOW + 1_000).await, None, "held by a");
        assert!(s.advance_lease("relay", "a", 42).await.expect("advance"));
        assert!(!s.advance_lease("relay", "b", 7).await.expect("advance"));
        assert_eq!(
            hold("a", NOW + 4_000).await,
            Some(42),
            "renewed by its holder"
        );
        assert_eq!(
            hold("b", NOW + 8_000).await,
            None,
            "renewed until NOW + 9 s"
        );
        // Expired: another node takes it over, with the cursor.
        assert_eq!(hold("b", NOW + 9_001).await, Some(42));
        assert!(!s.advance_lease("relay", "a", 50).await.expect("advance"));
        assert_eq!(hold("a", NOW + 9_002).await, None);
        assert_eq!(
            s.hold_lease("other", "a", NOW, NOW + 1)
                .await
                .expect("lease"),
            Some(0)
        );
    })
    .await;
}

/// Issue 19, "events skipped for good": two nodes append at once; one
/// append has taken its sequence number but commits a second later. A
/// metric scan that runs as soon as the other append returns, and then
/// goes on incrementally from where it stopped, reads every event once
/// (it used to move past the lower number before it committed, and never
/// read it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_scan_by_sequence_never_skips_an_append_that_commits_late() {
    let url = stratify_store::testing::fresh_postgres().await;
    let (node1, node2) = (
        std::sync::Arc::new(PgStore::connect(&url).await.expect("node 1")),
        std::sync::Arc::new(PgStore::connect(&url).await.expect("node 2")),
    );
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    // The event at NOW + 42 holds its transaction open for a second after
    // its row (and number) exist.
    client
        .batch_execute(
            "CREATE FUNCTION slow_commit() RETURNS trigger AS $$ BEGIN \
               IF NEW.ts = 1780000000042 THEN PERFORM pg_sleep(1.0); END IF; RETURN NEW; \
             END $$ LANGUAGE plpgsql; \
             CREATE TRIGGER slow_commit AFTER INSERT ON events FOR EACH ROW EXECUTE FUNCTION slow_commit();",
        )
        .await
        .expect("trigger");
    let buy = |user: &str, at: i64| {
        batch(vec![event(
            json!({"user_id": user, "name": "buy", "timestamp": at, "properties": {"amount": 1}}),
        )])
    };
    node1.append_events(buy("u0", NOW)).await.expect("first");
    let slow = {
        let node2 = node2.clone();
        let b = buy("u2", NOW + 42);
        tokio::spawn(async move { node2.append_events(b).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    node1
        .append_events(buy("u1", NOW + 43))
        .await
        .expect("fast");
    let seen = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
    let sink_seen = seen.clone();
    let sink: MetricSink = std::sync::Arc::new(move |events: &[MetricEvent]| {
        sink_seen.lock().extend(events.iter().map(|e| e.ts))
    });
    let scan = MetricScan {
        event: "buy".into(),
        property: Some("amount".into()),
        since: NOW,
        until: NOW + 100,
        after_seq: 0,
    };
    let first = node1
        .scan_metric_events(scan.clone(), sink.clone())
        .await
        .expect("scan");
    slow.await.expect("task").expect("slow append");
    let after = MetricScan {
        after_seq: first.through_seq,
        ..scan
    };
    node1
        .scan_metric_events(after, sink)
        .await
        .expect("scan again");
    let mut got = seen.lock().clone();
    got.sort_unstable();
    assert_eq!(got, vec![NOW, NOW + 42, NOW + 43], "every event read once");
}

#[tokio::test]
async fn dashboard_sessions_end_when_they_expire_are_deleted_or_crowded_out() {
    with_backends(|s| async move {
        let session = |n: u8, expires_at: i64| SessionRecord {
            token_hash: vec![n; 32],
            key_id: format!("key{n}"),
            csrf: format!("csrf{n}"),
            expires_at,
        };
        s.create_session(session(1, NOW + 10), NOW, 3)
            .await
            .expect("create");
        s.create_session(session(2, NOW + 20), NOW, 3)
            .await
            .expect("create");
        assert_eq!(
            s.session(vec![1; 32], NOW).await.expect("read"),
            Some(session(1, NOW + 10))
        );
        assert_eq!(
            s.session(vec![1; 32], NOW + 10).await.expect("read"),
            None,
            "ended"
        );
        assert_eq!(s.session(vec![9; 32], NOW).await.expect("read"), None);
        s.delete_session(vec![2; 32]).await.expect("delete");
        assert_eq!(s.session(vec![2; 32], NOW).await.expect("read"), None);
        // At most 3 live: the fourth crowds out the one that ends first.
        for n in 3..=5 {
            s.create_session(session(n, NOW + 100 + i64::from(n)), NOW, 3)
                .await
                .expect("create");
        }
        s.create_session(session(6, NOW + 200), NOW, 3)
            .await
            .expect("create");
        assert_eq!(
            s.session(vec![1; 32], NOW).await.expect("read"),
            None,
            "the oldest went"
        );
        for n in 4..=6 {
            assert!(
                s.session(vec![n; 32], NOW).await.expect("read").is_some(),
                "{n}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn erasures_are_logged_in_order_for_other_nodes_and_kept_an_hour() {
    with_backends(|s| async move {
        s.append_events(batch(vec![
            event(json!({"user_id": "e1", "name": "LOGIN"})),
            event(json!({"user_id": "e2", "name": "LOGIN"})),
        ]))
        .await
        .expect("append");
        assert_eq!(s.last_erasure_seq().await.expect("last"), 0);
        assert!(s.delete_user(&uid("e1"), NOW).await.expect("erase"));
        assert!(!s.delete_user(&uid("e1"), NOW).await.expect("erase again"));
        let first = s.erasures_after(0, 10).await.expect("erasures");
        assert_eq!(
            first.iter().map(|g| g.user_id.as_str()).collect::<Vec<_>>(),
            vec!["e1"]
        );
        assert_eq!(first[0].merged_into, None);
        assert_eq!(s.last_erasure_seq().await.expect("last"), first[0].seq);
        // An hour later the first is forgotten; the new one follows it.
        let later = NOW + ERASURE_MEMORY_MS + 1;
        assert!(s.delete_user(&uid("e2"), later).await.expect("erase"));
        let all = s.erasures_after(0, 10).await.expect("erasures");
        assert_eq!(all.len(), 1, "{all:?}");
        assert_eq!(all[0].user_id, "e2");
        assert!(all[0].seq > first[0].seq);
        assert!(s
            .erasures_after(all[0].seq, 10)
            .await
            .expect("none")
            .is_empty());
    })
    .await;
}

#[tokio::test]
async fn the_audit_log_pages_newest_first_and_filters_by_target() {
    with_backends(|s| async move {
        for i in 0..5i64 {
            let target = if i % 2 == 0 { "seg_a" } else { "exp_b" };
            s.append_audit(AuditRecord {
                seq: 0,
                at: NOW + i,
                key_id: format!("key{i}"),
                action: "PATCH /v1/segments/{id}".into(),
                target_kind: if i % 2 == 0 {
                    "segments"
                } else {
                    "experiments"
                }
                .into(),
                target_id: Some(target.into()),
                changes: json!({"request": {"name": format!("n{i}")}}),
            })
            .await
            .expect("append");
        }
        let all = s.audit_entries(None, None, 10).await.expect("read");
        let ats: Vec<i64> = all.iter().map(|e| e.at - NOW).collect();
        assert_eq!(ats, [4, 3, 2, 1, 0]);
        assert_eq!(all[0].changes, json!({"request": {"name": "n4"}}));
        assert_eq!(all[0].key_id, "key4");
        let page = s
            .audit_entries(None, Some(all[1].seq), 2)
            .await
            .expect("read");
        assert_eq!(page.iter().map(|e| e.at - NOW).collect::<Vec<_>>(), [2, 1]);
        let by_id = s
            .audit_entries(Some("seg_a".into()), None, 10)
            .await
            .expect("read");
        assert_eq!(by_id.len(), 3);
        let by_kind = s
            .audit_entries(Some("experiments".into()), None, 10)
            .await
            .expect("read");
        assert_eq!(
            by_kind.iter().map(|e| e.at - NOW).collect::<Vec<_>>(),
            [3, 1]
        );
    })
    .await;
}

fn exposure(user: &str, experiment: &str, variant: &str, at: i64) -> AssignmentRecord {
    AssignmentRecord {
        user_id: user.into(),
        experiment_id: experiment.into(),
        variant: variant.into(),
        bucket_version: 1,
        assigned_at: at,
    }
}

fn merged(answer: Identified) -> Merge {
    match answer {
        Identified::Merged(m) => *m,
        other => panic!("not merged: {other:?}"),
    }
}

#[tokio::test]
async fn identify_moves_a_visitor_into_the_known_user_once() {
    with_backends(|s| async move {
        s.write_user(uid("anon"), json!({"city": "Oslo", "plan": "free"}).as_object().cloned().unwrap_or_default(), WriteMode::Create, NOW - 5)
            .await
            .expect("anon attributes");
        s.append_events(batch(vec![
            event(json!({"user_id": "anon", "name": "VIEW", "event_id": "v1", "timestamp": "2026-05-01T00:00:00Z"})),
            event(json!({"user_id": "anon", "name": "VIEW", "event_id": "same", "timestamp": "2026-05-01T00:00:01Z"})),
            event(json!({"user_id": "anon", "name": "VIEW", "timestamp": "2026-05-01T00:00:02Z"})),
            event(json!({"user_id": "known", "name": "VIEW", "event_id": "same", "timestamp": "2026-05-01T00:00:03Z"})),
        ]))
        .await
        .expect("append");
        s.write_user(uid("known"), json!({"plan": "pro"}).as_object().cloned().unwrap_or_default(), WriteMode::Replace, NOW)
            .await
            .expect("known attributes");
        s.save_assignments(std::sync::Arc::new(vec![
            exposure("anon", "x1", "b", NOW - 100),
            exposure("anon", "x2", "a", NOW - 100),
            exposure("known", "x2", "b", NOW - 50),
        ]))
        .await
        .expect("assign");
        let m = merged(s.identify(&uid("anon"), &uid("known"), NOW).await.expect("identify"));
        assert_eq!(m.events_moved, 2);
        assert_eq!(m.duplicates_dropped, 1, "the event sent under both ids is kept once");
        assert_eq!(m.assignments_moved, 1);
        assert!(m.anonymous_uid.is_some() && m.anonymous_uid != Some(m.known_uid));
        assert_eq!(m.user.user_id, "known");
        assert_eq!(m.user.attributes.get("plan"), Some(&json!("pro")), "the known user wins");
        assert_eq!(m.user.attributes.get("city"), Some(&json!("Oslo")));
        assert_eq!(m.user.created_at, NOW - 5, "first seen as the visitor");
        assert!(s.get_user(&uid("anon")).await.expect("read").is_none());
        let events = s.user_events(&uid("known"), i64::MAX, 100).await.expect("events");
        assert_eq!(events.len(), 3, "{events:?}");
        let (mine, banners) = s.serving_state("known").await.expect("state");
        assert!(banners.is_none());
        let mut mine: Vec<_> = mine
            .into_iter()
            .map(|a| (a.experiment_id, a.variant, a.assigned_at))
            .collect();
        mine.sort();
        assert_eq!(
            mine,
            vec![
                ("x1".to_owned(), "b".to_owned(), NOW - 100),
                ("x2".to_owned(), "b".to_owned(), NOW - 100),
            ],
            "the visitor's variant moves; the known user's wins, from the earlier exposure"
        );
        assert!(s.serving_state("anon").await.expect("state").0.is_empty());
        assert_eq!(
            s.resolve_aliases(vec!["anon".into(), "known".into()]).await.expect("resolve"),
            vec![("anon".to_owned(), "known".to_owned())]
        );
        // A retry is answered, not repeated; another user cannot take the alias.
        assert_eq!(s.identify(&uid("anon"), &uid("known"), NOW).await.expect("again"), Identified::Already);
        assert_eq!(
            s.identify(&uid("anon"), &uid("other"), NOW).await.expect("other"),
            Identified::AliasOfOther("known".into())
        );
        assert_eq!(s.identify(&uid("known"), &uid("anon"), NOW).await.expect("back"), Identified::KnownIsAlias);
        // Writes on the alias are refused at the store: the caller resolves.
        let refused = s
            .append_events(batch(vec![event(json!({"user_id": "anon", "name": "VIEW"}))]))
            .await;
        assert!(
            matches!(&refused, Err(StoreError::UsersMoved(m)) if m == &vec![("anon".to_owned(), Some("known".to_owned()))]),
            "{refused:?}"
        );
        // The merge is logged for the other nodes.
        let gone = s.erasures_after(0, 10).await.expect("log");
        assert_eq!(gone.len(), 1);
        assert_eq!((gone[0].user_id.as_str(), gone[0].merged_into.as_deref()), ("anon", Some("known")));
        // A second device merges into the same person; the person merges
        // into an account they signed up with later: the aliases follow.
        s.append_events(batch(vec![event(json!({"user_id": "phone", "name": "VIEW"}))]))
            .await
            .expect("append");
        merged(s.identify(&uid("phone"), &uid("known"), NOW).await.expect("phone"));
        let m = merged(s.identify(&uid("known"), &uid("account"), NOW).await.expect("account"));
        assert_eq!(m.known_uid, m.anonymous_uid.expect("uid"), "a new known id renames the row");
        assert_eq!(m.aliases_moved, vec!["anon".to_owned(), "phone".to_owned()]);
        assert_eq!(m.events_moved, 4);
        let mut aliases = s.aliases().await.expect("aliases");
        aliases.sort();
        assert_eq!(
            aliases,
            vec![
                ("anon".to_owned(), "account".to_owned()),
                ("known".to_owned(), "account".to_owned()),
                ("phone".to_owned(), "account".to_owned()),
            ]
        );
        // Identifying with an alias merges into its user.
        merged(s.identify(&uid("tablet"), &uid("phone"), NOW).await.expect("tablet"));
        assert_eq!(
            s.resolve_aliases(vec!["tablet".into()]).await.expect("resolve"),
            vec![("tablet".to_owned(), "account".to_owned())]
        );
        // Erasing the person erases every alias, each logged.
        assert!(s.delete_user(&uid("account"), NOW).await.expect("erase"));
        assert!(s.aliases().await.expect("aliases").is_empty());
        let erased: Vec<String> = s
            .erasures_after(0, 100)
            .await
            .expect("log")
            .into_iter()
            .filter(|g| g.merged_into.is_none())
            .map(|g| g.user_id)
            .collect();
        assert_eq!(erased, vec!["account", "anon", "known", "phone", "tablet"]);
    })
    .await;
}

/// Every write to what derived state reads besides appended events moves
/// the embedded store's derived stamp; appending events of known users does
/// not. A shared store keeps none.
#[tokio::test]
async fn the_derived_stamp_moves_with_every_write_derived_state_reads() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = SqliteStore::open(dir.path()).expect("open sqlite");
    let stamp = || async {
        s.derived_stamp()
            .await
            .expect("stamp")
            .expect("sqlite keeps one")
    };
    let attrs = |v: serde_json::Value| v.as_object().cloned().unwrap_or_default();
    let mut last = stamp().await;
    assert_eq!(last.store_id.len(), 32);
    let mut moved = |what: &str, now: DerivedStamp, expected: bool| {
        assert_eq!(now.store_id, last.store_id, "{what}");
        assert_eq!(
            now.generation != last.generation,
            expected,
            "{what}: {last:?} → {now:?}"
        );
        last = now;
    };
    s.append_events(batch(vec![event(json!({"user_id": "a", "name": "LOGIN"}))]))
        .await
        .expect("append");
    moved("an event of a new user", stamp().await, true);
    s.append_events(batch(vec![event(json!({"user_id": "a", "name": "LOGIN"}))]))
        .await
        .expect("append");
    moved("an event of a known user", stamp().await, false);
    s.write_user(
        uid("a"),
        attrs(json!({"plan": "pro"})),
        WriteMode::Merge,
        NOW,
    )
    .await
    .expect("write");
    moved("attributes", stamp().await, true);
    let segment = SegmentRecord {
        id: "s".into(),
        name: "s".into(),
        description: None,
        kind: "static".into(),
        rules: None,
        version: 1,
        created_at: NOW,
        updated_at: NOW,
        created_by: None,
        updated_by: None,
    };
    s.create_segment(segment.clone(), vec![])
        .await
        .expect("segment");
    moved("a segment", stamp().await, true);
    s.add_members("s", vec![uid("a")], NOW)
        .await
        .expect("members");
    moved("static members", stamp().await, true);
    s.update_segment(SegmentRecord {
        version: 2,
        ..segment
    })
    .await
    .expect("update");
    moved("a segment's new version", stamp().await, true);
    s.write_user(uid("b"), attrs(json!({})), WriteMode::Create, NOW)
        .await
        .expect("b");
    moved("a new user", stamp().await, true);
    s.identify(&uid("b"), &uid("a"), NOW)
        .await
        .expect("identify");
    moved("a merge", stamp().await, true);
    s.delete_user(&uid("a"), NOW).await.expect("delete");
    moved("an erasure", stamp().await, true);
    drop(s);
    let again = SqliteStore::open(dir.path()).expect("reopen");
    let reopened = again.derived_stamp().await.expect("stamp").expect("kept");
    assert_eq!(reopened, last, "the stamp is stored, not per process");
    let other = tempfile::tempdir().expect("temp dir");
    let other = SqliteStore::open(other.path()).expect("open");
    let fresh = other.derived_stamp().await.expect("stamp").expect("kept");
    assert_ne!(fresh.store_id, last.store_id, "each store is named apart");
    let url = stratify_store::testing::fresh_postgres().await;
    let pg = PgStore::connect(&url).await.expect("open postgres");
    assert_eq!(pg.derived_stamp().await.expect("stamp"), None);
}

// Bulk appends on the embedded store (`stratify import`): the event log's
// indexes are dropped while one runs and built at its end; nothing is stored
// twice meanwhile, and a store left midway builds them when it next opens.

/// The SQL of the event log's indexes, by name (absent ones left out).
fn event_indexes(dir: &std::path::Path) -> Vec<(String, String)> {
    let conn = rusqlite::Connection::open(dir.join("stratify.db")).expect("open");
    let mut stmt = conn
        .prepare(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events' \
             AND sql IS NOT NULL ORDER BY name",
        )
        .expect("prepare");
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query");
    rows.collect::<Result<_, _>>().expect("rows")
}

fn new_count(appended: &[Appended]) -> usize {
    appended
        .iter()
        .filter(|a| matches!(a, Appended::New(_)))
        .count()
}

#[tokio::test]
async fn a_bulk_append_stores_each_event_once_and_builds_the_indexes_it_dropped() {
    let fresh = tempfile::tempdir().expect("temp dir");
    SqliteStore::open(fresh.path()).expect("open").close();
    let migrated = event_indexes(fresh.path());
    assert_eq!(migrated.len(), 2, "{migrated:?}");

    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path()).expect("open");
    let before = store
        .append_events(batch(vec![event(
            json!({"event_id": "e1", "user_id": "u1", "name": "LOGIN"}),
        )]))
        .await
        .expect("append");
    assert_eq!(new_count(&before), 1);

    assert!(store.begin_bulk_append().await.expect("begin"));
    assert!(event_indexes(dir.path()).is_empty(), "indexes dropped");

    // A row keyed by its content (an import row without an id), twice.
    let mut row = event(json!({"user_id": "u2", "name": "SEARCH", "timestamp": NOW - 5}));
    row.dedupe_key = Some(42);
    // An event whose id hashes like e1's (a 64-bit collision): another event.
    let mut collided = event(json!({"event_id": "not-e1", "user_id": "u1", "name": "LOGIN"}));
    collided.dedupe_key = Some(stratify_core::hash::event_id_key("e1"));
    let appended = store
        .append_events(batch(vec![
            event(json!({"event_id": "e1", "user_id": "u1", "name": "LOGIN"})),
            event(json!({"event_id": "e2", "user_id": "u1", "name": "LOGIN"})),
            event(json!({"event_id": "e2", "user_id": "u1", "name": "LOGIN"})),
            row.clone(),
            row.clone(),
            collided,
            event(json!({"user_id": "u3", "name": "LOGIN"})),
        ]))
        .await
        .expect("bulk append");
    assert_eq!(appended[0], Appended::Duplicate, "e1 was stored before");
    assert!(matches!(appended[1], Appended::New(_)));
    assert_eq!(appended[2], Appended::Duplicate, "e2 twice in one batch");
    assert!(matches!(appended[3], Appended::New(_)));
    assert_eq!(appended[4], Appended::Duplicate, "the same row twice");
    assert!(
        matches!(appended[5], Appended::New(_)),
        "a collision is kept"
    );
    assert!(
        matches!(appended[6], Appended::New(_)),
        "no key: always new"
    );
    // A later batch of the same bulk append still sees every key.
    let again = store
        .append_events(batch(vec![
            row.clone(),
            event(json!({"event_id": "e2", "user_id": "u1", "name": "LOGIN"})),
        ]))
        .await
        .expect("bulk append");
    assert_eq!(again, vec![Appended::Duplicate, Appended::Duplicate]);
    let u1 = UserId::parse("u1").expect("id");
    let events = store.user_events(&u1, i64::MAX, 100).await.expect("read");
    assert_eq!(events.len(), 3, "read by user while the indexes are gone");

    store.end_bulk_append().await.expect("end");
    assert_eq!(event_indexes(dir.path()), migrated, "built as migrated");
    // The unique index now decides, with the same answers.
    let after = store
        .append_events(batch(vec![
            row,
            event(json!({"event_id": "e2", "user_id": "u1", "name": "LOGIN"})),
            event(json!({"event_id": "e3", "user_id": "u1", "name": "LOGIN"})),
        ]))
        .await
        .expect("append");
    assert_eq!(new_count(&after), 1);
    assert_eq!(
        store.counts().await.expect("counts"),
        Counts {
            users: 3,
            events: 6
        }
    );
    let status = store.ingest_status().await.expect("status");
    let http = status
        .iter()
        .find(|s| s.source == Source::Http)
        .expect("status");
    assert_eq!((http.accepted, http.duplicates), (6, 7));
    // Ending twice is harmless.
    store.end_bulk_append().await.expect("end again");
    store.close();
}

#[tokio::test]
async fn a_store_left_in_a_bulk_append_builds_its_indexes_when_it_opens() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path()).expect("open");
    assert!(store.begin_bulk_append().await.expect("begin"));
    store
        .append_events(batch(vec![
            event(json!({"event_id": "e1", "user_id": "u1", "name": "LOGIN"})),
            event(json!({"event_id": "e2", "user_id": "u1", "name": "LOGIN"})),
        ]))
        .await
        .expect("append");
    // As a process killed midway leaves it: committed, indexes dropped.
    store.close();
    assert!(event_indexes(dir.path()).is_empty());
    let store = SqliteStore::open(dir.path()).expect("reopen");
    assert_eq!(event_indexes(dir.path()).len(), 2);
    let again = store
        .append_events(batch(vec![event(
            json!({"event_id": "e1", "user_id": "u1", "name": "LOGIN"}),
        )]))
        .await
        .expect("append");
    assert_eq!(again, vec![Appended::Duplicate]);
    store.close();
}

#[tokio::test]
async fn a_bulk_append_is_declined_while_another_holder_has_the_store_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = SqliteStore::open(dir.path()).expect("open");
    let second = SqliteStore::open(dir.path()).expect("open twice: both shared");
    assert!(!first.begin_bulk_append().await.expect("begin"));
    assert_eq!(event_indexes(dir.path()).len(), 2, "nothing dropped");
    second.close();
    assert!(first.begin_bulk_append().await.expect("begin alone"));
    // While it runs, nobody else opens the store (they would append
    // without the unique index).
    let refused = SqliteStore::open(dir.path());
    assert!(
        matches!(refused, Err(StoreError::Open { .. })),
        "opened during a bulk append"
    );
    first.end_bulk_append().await.expect("end");
    let third = SqliteStore::open(dir.path()).expect("open after the bulk append");
    third.close();
    first.close();
}

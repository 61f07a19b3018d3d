//! Bulk appends on the embedded store (`stratify import`): the event log's
//! indexes are dropped while it runs and built at the end; nothing is stored
//! twice meanwhile, and a store left midway builds them when it next opens.

use serde_json::json;
use stratify_core::event::NewEvent;
use stratify_core::ids::UserId;
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
            source: Source::Import,
            received,
            rejected: 0,
            forwarded: 0,
            last_error: None,
            now: NOW,
        },
        on_commit: None,
    }
}

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
    let import = status
        .iter()
        .find(|s| s.source == Source::Import)
        .expect("import status");
    assert_eq!((import.accepted, import.duplicates), (6, 7));
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

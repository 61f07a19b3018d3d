//! The live engine against a real store and a movable clock: memberships
//! follow events at once and time exactly, changes are logged in order, a
//! restart resumes from the watermark, and a rebuild from the log alone
//! equals the live state.

use serde_json::{json, Value};
use std::sync::Arc;
use stratify_engine::segments::SegmentInput;
use stratify_engine::{Clock, Engine, ManualClock};
use stratify_store::sqlite::SqliteStore;
use stratify_store::ChangeLog;
use stratify_store::{ChangeRecord, Source};

const T0: i64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
const MIN: i64 = 60_000;
const DAY: i64 = 86_400_000;

struct World {
    _dir: tempfile::TempDir,
    store: Arc<SqliteStore>,
    clock: Arc<ManualClock>,
    engine: Engine,
}

async fn world() -> World {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(SqliteStore::open(dir.path()).expect("open"));
    let clock = Arc::new(ManualClock::new(T0));
    let engine = Engine::start(store.clone(), clock.clone(), None)
        .await
        .expect("engine");
    World {
        _dir: dir,
        store,
        clock,
        engine,
    }
}

async fn segment(e: &Engine, name: &str, rules: Value) -> String {
    let s = e
        .segments
        .create_segment(
            SegmentInput {
                name: name.into(),
                rules: Some(rules),
                ..Default::default()
            },
            "test",
        )
        .await
        .expect("segment");
    s.record.id.clone()
}

async fn order(e: &Engine, user: &str, id: &str, ts: i64) {
    let out = e
        .ingest
        .ingest_values(
            vec![Ok(
                json!({"event_id": id, "user_id": user, "name": "order_placed",
                "timestamp": ts, "properties": {"amount": 20, "city": "Pune"}}),
            )],
            Source::Http,
        )
        .await
        .expect("ingest");
    assert_eq!(out.accepted, 1, "{out:?}");
}

async fn changes(w: &World) -> Vec<ChangeRecord> {
    w.engine.live().sync().await;
    w.store.changes(None, 0, 10_000).await.expect("changes")
}

async fn members(w: &World, segment: &str) -> Vec<String> {
    w.engine.live().sync().await;
    let mut m: Vec<String> = w
        .store
        .open_memberships()
        .await
        .expect("open")
        .into_iter()
        .filter(|(s, _)| s == segment)
        .map(|(_, u)| u)
        .collect();
    m.sort();
    m
}

/// Moves the clock to `at` and waits for the engine to catch up.
async fn at(w: &World, t: i64) {
    w.clock.set(t);
    w.engine.live().sync().await;
}

#[tokio::test]
async fn food_delivery_power_user_and_dormancy_follow_orders_and_the_clock_exactly() {
    let w = world().await;
    let power = segment(
        &w.engine,
        "power_user",
        json!({"field": "order_count_last_23_days", "op": "gte", "value": 25}),
    )
    .await;
    let dormant = segment(
        &w.engine,
        "dormant_user",
        json!({"field": "seconds_since_last_order", "op": "gte", "value": 14 * 86_400}),
    )
    .await;
    // 25 orders a minute apart; the 25th makes a power user at once.
    at(&w, T0 + 24 * MIN).await;
    for i in 0..24 {
        order(&w.engine, "u1", &format!("o{i}"), T0 + i * MIN).await;
    }
    assert!(members(&w, &power).await.is_empty());
    order(&w.engine, "u1", "o24", T0 + 24 * MIN).await;
    assert_eq!(members(&w, &power).await, vec!["u1"]);
    let c = changes(&w).await;
    assert_eq!(c.len(), 1);
    assert_eq!(
        (c[0].entered, c[0].at, &c[0].cause.to_json()["event_id"]),
        (true, T0 + 24 * MIN, &json!("o24"))
    );
    // One more order on day 10.
    at(&w, T0 + 10 * DAY).await;
    order(&w.engine, "u1", "o25", T0 + 10 * DAY).await;
    // The first order leaves the window at T0 + 23d (26 → 25: still in);
    // the second at T0 + 23d + 1 min (→ 24: out), to the millisecond.
    at(&w, T0 + 23 * DAY + MIN - 1).await;
    assert_eq!(members(&w, &power).await, vec!["u1"]);
    at(&w, T0 + 23 * DAY + MIN).await;
    assert!(members(&w, &power).await.is_empty());
    // Dormant exactly 14 days after the last order (day 10 → day 24).
    at(&w, T0 + 24 * DAY - 1).await;
    assert!(members(&w, &dormant).await.is_empty());
    at(&w, T0 + 24 * DAY).await;
    assert_eq!(members(&w, &dormant).await, vec!["u1"]);
    // A new order moves them back at once.
    at(&w, T0 + 25 * DAY).await;
    order(&w.engine, "u1", "o26", T0 + 25 * DAY).await;
    assert!(members(&w, &dormant).await.is_empty());

    let c = changes(&w).await;
    let seen: Vec<(String, bool, i64, Value)> = c
        .iter()
        .map(|c| {
            let name = if c.segment_id == power {
                "power"
            } else {
                "dormant"
            };
            (name.to_owned(), c.entered, c.at, c.cause.to_json())
        })
        .collect();
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert_eq!(
        seen[1],
        ("power".into(), false, T0 + 23 * DAY + MIN, json!("time"))
    );
    assert_eq!(
        seen[2],
        ("dormant".into(), true, T0 + 24 * DAY, json!("time"))
    );
    assert_eq!(
        (
            seen[3].0.as_str(),
            seen[3].1,
            seen[3].2,
            &seen[3].3["event_id"]
        ),
        ("dormant", false, T0 + 25 * DAY, &json!("o26"))
    );
    assert!(
        c.windows(2).all(|p| p[1].seq == p[0].seq + 1),
        "seq grows by one"
    );
    let history = w.store.user_memberships("u1", 10).await.expect("history");
    assert_eq!(history.len(), 2);
    assert_eq!(
        (
            history[0].segment_id.as_str(),
            history[0].entered_at,
            history[0].exited_at
        ),
        (dormant.as_str(), T0 + 24 * DAY, Some(T0 + 25 * DAY))
    );
}

#[tokio::test]
async fn a_rebuild_from_the_log_alone_equals_the_live_state() {
    let w = world().await;
    let rules = [
        json!({"event": "LOGIN", "within": "2d", "op": "gte", "value": 2}),
        json!({"field": "seconds_since_last_order", "op": "gte", "value": 3 * 86_400}),
        json!({"operator": "AND", "conditions": [
            {"field": "plan", "op": "eq", "value": "pro"},
            {"not": {"event": "LOGIN", "within": "1d", "op": "gte", "value": 1}}]}),
        json!({"field": "ltv", "op": "gt", "value": 50}),
    ];
    let mut ids = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        ids.push(segment(&w.engine, &format!("s{i}"), r.clone()).await);
    }
    let mut rng = 7u64;
    let mut next = |n: u64| {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (rng >> 33) % n
    };
    for step in 0..120 {
        w.clock.advance((next(6) as i64) * 3_600_000 + 1);
        let now = w.clock.now();
        let user = format!("u{}", next(12));
        match next(9) {
            8 => {
                // Erasures: the store may hand a later user the same uid.
                let uid = stratify_core::ids::UserId::parse(&user).expect("id");
                let _ = w.engine.users.delete_user(&uid).await;
            }
            0 => {
                order(
                    &w.engine,
                    &user,
                    &format!("o{step}"),
                    now - next(3) as i64 * DAY,
                )
                .await
            }
            1 => {
                let plan = if next(2) == 0 { "pro" } else { "free" };
                let uid = stratify_core::ids::UserId::parse(&user).expect("id");
                let mut attrs = serde_json::Map::new();
                attrs.insert("plan".into(), json!(plan));
                w.engine
                    .users
                    .write_user(uid, attrs, stratify_store::WriteMode::Replace)
                    .await
                    .expect("user");
            }
            2..=5 => {
                w.engine
                    .ingest
                    .ingest_values(
                        vec![Ok(
                            json!({"user_id": user, "name": "LOGIN", "timestamp": now}),
                        )],
                        Source::Http,
                    )
                    .await
                    .expect("login");
            }
            _ => order(&w.engine, &format!("n{step}"), &format!("o{step}"), now).await,
        }
    }
    w.clock.advance(3_600_000);
    w.engine.live().sync().await;
    let live = w.engine.live().snapshot().await;
    assert!(live.members.values().any(|m| !m.is_empty()), "a dull test");
    assert!(!live.deadlines.is_empty());
    let before = w.store.last_change_seq().await.expect("seq");
    let rebuilt = Engine::start_rebuilt(w.store.clone(), w.clock.clone())
        .await
        .expect("rebuild");
    assert_eq!(rebuilt.live().snapshot().await, live);
    assert_eq!(
        w.store.last_change_seq().await.expect("seq"),
        before,
        "nothing to repair"
    );

    // And a restart resumes: a deadline that passed while down fires at its instant.
    w.engine.shutdown().await;
    rebuilt.shutdown().await;
    let (&first, _) = live
        .deadlines
        .iter()
        .map(|(k, t)| (t, k))
        .min()
        .expect("a deadline");
    w.clock.set(first + DAY);
    let restarted = Engine::start(w.store.clone(), w.clock.clone(), None)
        .await
        .expect("restart");
    restarted.live().sync().await;
    let after = w.store.changes(None, before, 1000).await.expect("changes");
    assert!(!after.is_empty());
    assert_eq!(
        after[0].at, first,
        "fired at its own instant, not at restart"
    );
    assert_eq!(after[0].cause, stratify_store::Cause::Time);
}

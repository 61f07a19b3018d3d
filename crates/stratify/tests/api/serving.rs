//! Serving over HTTP: the seed's demo scenario and its three use cases
//! (loaded by the real `stratify demo` command), sticky assignments,
//! re-randomisation, targeting changes, the per-user cache, eligibility,
//! schedules and the lifecycle.

use crate::helpers::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use stratify_core::bucketing;

const DAY: i64 = 86_400_000;
const BIN: &str = env!("CARGO_BIN_EXE_stratify");

async fn experiments_of(app: &TestApp, user: &str) -> Value {
    let (s, b) = app.get(&format!("/v1/users/{user}/experiments")).await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b
}

/// experiment key → variant key
fn variants(answer: &Value) -> HashMap<String, String> {
    answer["experiments"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["key"].as_str().unwrap_or_default().to_owned(),
                e["variant"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// The variant GrowthBook's SDKs give `user` (weights in percent, coverage 1).
fn growthbook(seed: &str, user: &str, keys: &[&str], weights: &[f64]) -> String {
    let w: Vec<f64> = weights.iter().map(|w| w / 100.0).collect();
    let ranges = bucketing::bucket_ranges(w.len(), 1.0, Some(&w));
    let n = bucketing::hash(seed, user, 2).expect("hash");
    let i = bucketing::choose_variation(n, &ranges).expect("in a range");
    keys[i].to_owned()
}

fn banner_set(answer: &Value) -> Vec<i64> {
    let mut b: Vec<i64> = answer["banner_mixture"]["banners"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_i64)
        .collect();
    b.sort_unstable();
    b
}

fn sources(answer: &Value) -> HashSet<String> {
    answer["banner_mixture"]["source_experiments"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["key"].as_str().map(str::to_owned))
        .collect()
}

async fn load_demo(app: &TestApp) {
    let url = format!("http://{}", app.addr);
    let out = tokio::process::Command::new(BIN)
        .args(["demo", "--url", &url, "--key", ADMIN])
        .output()
        .await
        .expect("run stratify demo");
    assert!(
        out.status.success(),
        "stratify demo failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("13 segments, 18 experiments, 5 users"),
        "{text}"
    );
    // Segment builds over the users are asynchronous: wait for them.
    app.engine.live().sync().await;
}

#[tokio::test]
async fn the_demo_scenario_and_its_three_use_cases() {
    let app = spawn_app().await;
    load_demo(&app).await;
    let (_, segs) = app.get("/v1/segments").await;
    assert_eq!(segs["segments"].as_array().map(Vec::len), Some(13));
    let (_, exps) = app.get("/v1/experiments").await;
    let all = exps["experiments"].as_array().cloned().unwrap_or_default();
    assert_eq!(all.len(), 18);
    assert_eq!(all.iter().filter(|e| e["status"] == "running").count(), 17);
    // Applying it again adds nothing.
    let out = tokio::process::Command::new(BIN)
        .args([
            "demo",
            "--url",
            &format!("http://{}", app.addr),
            "--key",
            ADMIN,
        ])
        .output()
        .await
        .expect("run again");
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 segments, 0 experiments, 0 users"));

    // Use case 1: the pizza tile for power users (>= 25 orders in 23 days).
    let sarah = experiments_of(&app, "user_sarah_power_hsr").await;
    let v = variants(&sarah);
    let expected = growthbook(
        "pizza_category_visibility",
        "user_sarah_power_hsr",
        &["control", "show_pizza_tile"],
        &[20.0, 80.0],
    );
    assert_eq!(
        v.get("pizza_category_visibility"),
        Some(&expected),
        "{sarah}"
    );
    assert!(v.contains_key("power_user_premium_features"));
    assert!(v.contains_key("high_value_loyalty_rewards"));
    assert!(!v.contains_key("dormant_user_discount"));
    assert!(!v.contains_key("festive_banners"), "a draft serves nobody");
    let lisa = experiments_of(&app, "user_lisa_new").await;
    assert!(!variants(&lisa).contains_key("pizza_category_visibility"));

    // Use case 2: tiered banners.
    assert_eq!(banner_set(&lisa), vec![1, 2, 3], "{lisa}");
    assert_eq!(
        sources(&lisa),
        HashSet::from(["new_user_onboarding_banners".to_owned()])
    );
    let mike = experiments_of(&app, "user_mike_regular").await;
    assert_eq!(banner_set(&mike), vec![2, 4, 7], "{mike}");
    let priya = experiments_of(&app, "user_priya_hsr_regular").await;
    let drawn = banner_set(&priya);
    assert_eq!(drawn.len(), 3, "{priya}");
    assert!(drawn.iter().all(|b| [2, 4, 5, 7, 8].contains(b)), "{priya}");
    assert_eq!(
        sources(&priya),
        HashSet::from([
            "regular_user_discovery_banners".to_owned(),
            "hsr_layout_banners".to_owned()
        ])
    );
    let mixture = &priya["banner_mixture"];
    assert_eq!(mixture["ttl_seconds"], 86_400);
    // Kept: the same draw from the cache, and on the debug endpoint.
    let again = experiments_of(&app, "user_priya_hsr_regular").await;
    assert_eq!(again["source"], "cache");
    assert_eq!(again["banner_mixture"], priya["banner_mixture"]);
    let (_, debug) = app
        .get("/v1/users/user_priya_hsr_regular/banner_mixture")
        .await;
    assert_eq!(debug["banner_mixture"]["banners"], mixture["banners"]);

    // Use case 3: dormant win-back.
    let john = experiments_of(&app, "user_john_at_risk_vip").await;
    let v = variants(&john);
    assert_eq!(
        v.get("dormant_user_discount"),
        Some(&growthbook(
            "dormant_user_discount",
            "user_john_at_risk_vip",
            &["control", "show_100_rupees_discount"],
            &[20.0, 80.0]
        )),
        "{john}"
    );
    assert!(v.contains_key("dormant_user_content_strategy"));
    assert!(v.contains_key("at_risk_vip_winback"));
    // Sarah's last order was 0.1 d + 1 h before T0: she becomes dormant 14
    // days after it, to the millisecond, and the next call shows it.
    let last = T0 - DAY / 10 - 3_600_000;
    app.clock.set(last + 14 * DAY - 1);
    app.engine.live().sync().await;
    assert!(
        !variants(&experiments_of(&app, "user_sarah_power_hsr").await)
            .contains_key("dormant_user_discount")
    );
    app.clock.set(last + 14 * DAY);
    app.engine.live().sync().await;
    let sarah = experiments_of(&app, "user_sarah_power_hsr").await;
    assert_eq!(
        sarah["source"], "db",
        "a membership change invalidates the cache"
    );
    let v = variants(&sarah);
    assert!(v.contains_key("dormant_user_discount"), "{sarah}");
    assert!(
        !v.contains_key("pizza_category_visibility"),
        "no longer a power user, and the experiment does not keep leavers"
    );
    // John orders: the very next call (no waiting in the test) has him out
    // of the dormant experiments, while the VIP win-back keeps him
    // (keep_on_exit).
    let (s, b) = app
        .post(
            "/v1/orders",
            json!({"user_id": "user_john_at_risk_vip", "amount": 640, "city": "Whitefield"}),
        )
        .await;
    assert!(s.is_success(), "{b}");
    let john = experiments_of(&app, "user_john_at_risk_vip").await;
    let v = variants(&john);
    assert!(!v.contains_key("dormant_user_discount"), "{john}");
    assert!(!v.contains_key("dormant_user_content_strategy"));
    assert!(v.contains_key("at_risk_vip_winback"), "{john}");
}

async fn eligible(app: &TestApp, user: &str, id: &str) -> Option<String> {
    let (s, b) = app
        .post(
            "/v1/experiments/check-eligibility",
            json!({"user_id": user, "experiment_ids": [id]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b["eligible_experiment_ids"][id]["variant"]
        .as_str()
        .map(str::to_owned)
}

async fn patch(app: &TestApp, id: &str, body: Value) {
    let (s, b) = app
        .json(Method::PATCH, &format!("/v1/experiments/{id}"), Some(body))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
}

#[tokio::test]
async fn assignments_stick_until_rerandomised_and_exposures_are_logged_once() {
    let app = spawn_app().await;
    let id = running_experiment(
        &app,
        json!({"key": "ab", "name": "AB", "variants": [
            {"key": "a", "weight": 50, "is_control": true}, {"key": "b", "weight": 50}]}),
    )
    .await;
    let users: Vec<String> = (0..200).map(|i| format!("u{i}")).collect();
    let mut first = HashMap::new();
    for u in &users {
        let v = eligible(&app, u, &id).await.expect("everyone is targeted");
        assert_eq!(v, growthbook("ab", u, &["a", "b"], &[50.0, 50.0]));
        first.insert(u.clone(), v);
    }
    assert!(first.values().any(|v| v == "a") && first.values().any(|v| v == "b"));
    // Weights and coverage change: stuck users do not move; new users
    // follow the new weights.
    patch(
        &app,
        &id,
        json!({"variants": [{"key": "a", "weight": 0, "is_control": true}, {"key": "b", "weight": 100}], "coverage": 0.3}),
    )
    .await;
    for u in &users {
        assert_eq!(
            eligible(&app, u, &id).await.as_ref(),
            first.get(u),
            "{u} moved"
        );
    }
    let newcomers: Vec<Option<String>> = futures_util::future::join_all(
        (0..100).map(|i| eligible(&app, Box::leak(format!("new{i}").into_boxed_str()), &id)),
    )
    .await;
    assert!(newcomers.iter().flatten().all(|v| v == "b"));
    assert!(
        newcomers.iter().any(Option::is_none),
        "coverage 0.3 leaves some out"
    );
    // Exposures: one row per user and experiment, with the first instant.
    app.clock.advance(5_000);
    eligible(&app, "u0", &id).await;
    app.engine.serving.flush_assignments().await;
    let rows = app
        .engine
        .store()
        .experiment_exposures(&id, 1, 0, i64::MAX)
        .await
        .expect("exposures");
    let exposed = users.len() + newcomers.iter().flatten().count();
    assert_eq!(rows.assigned_at.len(), exposed);
    let (u0, _) = app.engine.store().serving_state("u0").await.expect("u0");
    let u0: Vec<_> = u0.iter().filter(|r| r.experiment_id == id).collect();
    assert_eq!(u0.len(), 1);
    assert_eq!(u0[0].assigned_at, T0);
    // Re-randomised: version 2, a new seed, everyone bucketed afresh.
    let (s, e) = app
        .post(&format!("/v1/experiments/{id}/rerandomize"), json!(null))
        .await;
    assert_eq!(s, StatusCode::OK, "{e}");
    assert_eq!(e["bucket_version"], 2);
    assert_eq!(e["seed"], "ab-v2");
    patch(
        &app,
        &id,
        json!({"variants": [{"key": "a", "weight": 50, "is_control": true}, {"key": "b", "weight": 50}], "coverage": 1.0}),
    )
    .await;
    let mut moved = 0;
    for u in &users {
        let v = eligible(&app, u, &id).await.expect("in");
        assert_eq!(v, growthbook("ab-v2", u, &["a", "b"], &[50.0, 50.0]));
        moved += usize::from(Some(&v) != first.get(u));
    }
    assert!(moved > 50, "re-randomisation moves about half: {moved}");
    app.engine.serving.flush_assignments().await;
    let v2 = app
        .engine
        .store()
        .experiment_exposures(&id, 2, 0, i64::MAX)
        .await
        .expect("v2");
    assert_eq!(
        v2.assigned_at.len(),
        users.len(),
        "the 200 re-exposed under version 2"
    );
}

#[tokio::test]
async fn targeting_follows_memberships_and_the_leaver_setting() {
    let app = spawn_app().await;
    let (s, seg) = app
        .post(
            "/v1/segments",
            json!({"name": "beta", "user_ids": ["alice", "bob"]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{seg}");
    let seg = seg["id"].as_str().expect("id").to_owned();
    let body = |key: &str, keep: bool| {
        json!({"key": key, "name": key, "segment_ids": [seg], "keep_on_exit": keep,
               "variants": [{"key": "on", "weight": 100}]})
    };
    let strict = running_experiment(&app, body("strict", false)).await;
    let keep = running_experiment(&app, body("keep", true)).await;
    let before = variants(&experiments_of(&app, "alice").await);
    assert_eq!(before.len(), 2);
    assert!(variants(&experiments_of(&app, "carol").await).is_empty());
    // Alice leaves the segment: out of `strict`, still in `keep`.
    let (s, b) = app
        .json(
            Method::DELETE,
            &format!("/v1/segments/{seg}/members"),
            Some(json!({"user_ids": ["alice"]})),
        )
        .await;
    assert!(s.is_success(), "{b}");
    app.engine.live().sync().await;
    let after = experiments_of(&app, "alice").await;
    assert_eq!(after["source"], "db");
    assert_eq!(
        variants(&after).keys().cloned().collect::<HashSet<_>>(),
        HashSet::from(["keep".to_owned()])
    );
    // Detach the segment (seed form), and attach it back (ours).
    let (s, b) = app
        .json(
            Method::DELETE,
            "/v1/segments/unassign-experiment",
            Some(json!({"experiment_id": strict, "segment_id": seg})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let (_, e) = app.get(&format!("/v1/experiments/{strict}")).await;
    assert_eq!(e["segment_ids"], json!([]));
    assert!(variants(&experiments_of(&app, "carol").await).contains_key("strict"));
    let (s, e) = app
        .post(
            &format!("/v1/experiments/{strict}/segments"),
            json!({"segment_id": seg}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{e}");
    assert_eq!(e["segment_ids"], json!([seg]));
    let (s, e) = app
        .json(
            Method::DELETE,
            &format!("/v1/experiments/{strict}/segments/nope"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&e), "segment_not_attached");
    let (s, e) = app
        .post(
            &format!("/v1/experiments/{strict}/segments"),
            json!({"segment_id": "seg_nope"}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{e}");
    assert_eq!(error_code(&e), "segment_not_found");
    let (s, e) = app
        .post(
            &format!("/v1/experiments/{strict}/segments"),
            json!({"segment": seg}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    let (s, e) = app
        .post(
            &format!("/v1/experiments/{strict}/rerandomize"),
            json!({"seed": 5}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    let (s, e) = app
        .post(&format!("/v1/experiments/{strict}/explode"), json!(null))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{e}");
    // Pausing stops serving; resuming gives the same variant back.
    app.post(&format!("/v1/experiments/{keep}/pause"), json!(null))
        .await;
    assert!(!variants(&experiments_of(&app, "bob").await).contains_key("keep"));
    app.post(&format!("/v1/experiments/{keep}/resume"), json!(null))
        .await;
    assert_eq!(
        variants(&experiments_of(&app, "bob").await).get("keep"),
        Some(&"on".to_owned())
    );
}

#[tokio::test]
async fn the_cache_is_invalidated_by_changes_and_schedules_and_cleared_on_demand() {
    let app = spawn_app().await;
    let id = running_experiment(
        &app,
        json!({"key": "sched", "name": "Scheduled", "end_at": "2026-01-01T01:00:00Z",
               "variants": [{"key": "on", "weight": 100, "payload": {"banners": [1, 2, 3, 4]}}]}),
    )
    .await;
    let first = experiments_of(&app, "dana").await;
    assert_eq!(first["source"], "db");
    assert_eq!(first["experiments"][0]["experiment_id"], json!(id));
    assert_eq!(
        first["experiments"][0]["payload"]["banners"],
        json!([1, 2, 3, 4])
    );
    assert_eq!(banner_set(&first).len(), 3);
    let second = experiments_of(&app, "dana").await;
    assert_eq!(second["source"], "cache");
    assert_eq!(second["experiments"], first["experiments"]);
    // An event of the user invalidates (inline rules may read it).
    app.post("/v1/events", json!({"user_id": "dana", "name": "LOGIN"}))
        .await;
    assert_eq!(experiments_of(&app, "dana").await["source"], "db");
    assert_eq!(experiments_of(&app, "dana").await["source"], "cache");
    // Clearing the cache recomputes and draws the banners again.
    let (s, _) = app.json(Method::DELETE, "/v1/users/dana/cache", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let cleared = experiments_of(&app, "dana").await;
    assert_eq!(cleared["source"], "db");
    assert_eq!(banner_set(&cleared).len(), 3);
    // Any experiment change invalidates.
    patch(&app, &id, json!({"name": "Scheduled (renamed)"})).await;
    let renamed = experiments_of(&app, "dana").await;
    assert_eq!(renamed["source"], "db");
    assert_eq!(renamed["experiments"][0]["name"], "Scheduled (renamed)");
    // The TTL: five minutes.
    app.clock.advance(5 * 60_000);
    assert_eq!(experiments_of(&app, "dana").await["source"], "db");
    // The end of the schedule: nothing served from that instant.
    app.clock.set(T0 + 3_600_000 - 1);
    assert_eq!(variants(&experiments_of(&app, "dana").await).len(), 1);
    app.clock.set(T0 + 3_600_000);
    let ended = experiments_of(&app, "dana").await;
    assert!(variants(&ended).is_empty(), "{ended}");
    assert_eq!(ended["banner_mixture"], Value::Null);
}

#[tokio::test]
async fn eligibility_and_serving_inputs_are_checked() {
    let app = spawn_app().await;
    let id = running_experiment(
        &app,
        json!({"key": "plan", "name": "Premium only", "rules": {"plan": "premium"},
               "hash_attribute": "device_id",
               "variants": [{"key": "x", "weight": 50}, {"key": "y", "weight": 50}]}),
    )
    .await;
    app.post(
        "/v1/users",
        json!({"user_id": "p1", "attributes": {"plan": "premium", "device_id": "d-77"}}),
    )
    .await;
    app.post(
        "/v1/users",
        json!({"user_id": "p2", "attributes": {"plan": "premium"}}),
    )
    .await;
    app.post(
        "/v1/users",
        json!({"user_id": "f1", "attributes": {"plan": "free", "device_id": "d-1"}}),
    )
    .await;
    let (s, b) = app
        .post(
            "/v1/experiments/check-eligibility",
            json!({"user_id": "p1", "experiment_ids": [id]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let expected = growthbook("plan", "d-77", &["x", "y"], &[50.0, 50.0]);
    assert_eq!(
        b["eligible_experiment_ids"][&id]["variant"],
        json!(expected)
    );
    assert_eq!(
        b["eligible_experiment_ids"][&id]["variant_id"],
        json!(if expected == "x" { 0 } else { 1 })
    );
    // No hash attribute, or outside the rule: not in it.
    assert_eq!(eligible(&app, "p2", &id).await, None);
    assert_eq!(eligible(&app, "f1", &id).await, None);
    for (body, code, field) in [
        (
            json!({"user_id": "p1", "experiment_ids": ["exp_nope"]}),
            "experiment_not_found",
            "/experiment_ids/0",
        ),
        (
            json!({"user_id": "", "experiment_ids": []}),
            "invalid_user_id",
            "/user_id",
        ),
        (
            json!({"user_id": "p1", "experiment_ids": [], "extra": 1}),
            "unknown_field",
            "",
        ),
    ] {
        let (s, b) = app.post("/v1/experiments/check-eligibility", body).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
        if !field.is_empty() {
            assert_eq!(error_code(&b), code, "{b}");
            assert_eq!(b["error"]["field"], field);
        }
    }
    let (s, b) = app
        .get(&format!("/v1/users/{}/experiments", "x".repeat(300)))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
    let (s, _) = app
        .post("/v1/experiments/check-eligibility", json!("{"))
        .await;
    assert!(s.is_client_error());
}

/// The answer is assembled from pre-rendered variants; it must be exactly
/// the documented shape, cached or not, and follow an experiment's changes.
#[tokio::test]
async fn the_served_answer_has_the_documented_shape_cached_or_not() {
    let app = spawn_app().await;
    let id = running_experiment(
        &app,
        json!({"key": "shape", "name": "Shape \"quoted\"", "variants": [
            {"key": "a", "name": "Arm A", "weight": 100, "is_control": true, "payload": {"x": [1, "é"]}},
            {"key": "b", "weight": 0}
        ]}),
    )
    .await;
    let expected = |name: &str, source: &str| {
        json!({
            "user_id": "u\"1",
            "source": source,
            "experiments": [{
                "experiment_id": id, "key": "shape", "name": name, "variant": "a",
                "variant_name": "Arm A", "is_control": true, "payload": {"x": [1, "é"]}
            }],
            "banner_mixture": null
        })
    };
    let path = "/v1/users/u%221/experiments";
    assert_eq!(
        experiments_of(&app, "u%221").await,
        expected("Shape \"quoted\"", "db")
    );
    let (s, cached) = app.get(path).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(cached, expected("Shape \"quoted\"", "cache"));
    // A new version of the experiment renders anew.
    let (s, e) = app
        .json(
            Method::PATCH,
            &format!("/v1/experiments/{id}"),
            Some(json!({"name": "Renamed"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{e}");
    assert_eq!(
        experiments_of(&app, "u%221").await,
        expected("Renamed", "db")
    );
}

#[tokio::test]
async fn a_banner_mixture_is_kept_across_a_restart_and_drawn_again_when_its_banners_change() {
    let app = spawn_app().await;
    let a = running_experiment(
        &app,
        json!({"key": "a", "name": "A",
               "variants": [{"key": "on", "weight": 100, "payload": {"banners": [1, 2, 3]}}]}),
    )
    .await;
    running_experiment(
        &app,
        json!({"key": "b", "name": "B",
               "variants": [{"key": "on", "weight": 100, "payload": {"banners": [{"id": 4}, 5]}}]}),
    )
    .await;
    let mut before = Vec::new();
    for user in ["ann", "ben", "cy"] {
        let answer = experiments_of(&app, user).await;
        assert_eq!(
            answer["banner_mixture"]["banners"].as_array().map(Vec::len),
            Some(3)
        );
        before.push(answer["banner_mixture"].clone());
    }
    app.engine.shutdown().await;
    let again = spawn_app_in(app.dir, Default::default(), Default::default()).await;
    again.clock.set(T0 + 60_000);
    for (user, mixture) in ["ann", "ben", "cy"].into_iter().zip(&before) {
        let answer = experiments_of(&again, user).await;
        assert_eq!(answer["source"], "db");
        assert_eq!(
            &answer["banner_mixture"], mixture,
            "{user} keeps their draw"
        );
    }
    // Other banners in A: a new draw, from the new pool.
    let (s, out) = again
        .json(
            Method::PATCH,
            &format!("/v1/experiments/{a}"),
            Some(json!({"variants": [{"key": "on", "weight": 100, "payload": {"banners": [1, 2, 9]}}]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{out}");
    let answer = experiments_of(&again, "ann").await;
    let mixture = &answer["banner_mixture"];
    assert_ne!(
        mixture["assigned_at"], before[0]["assigned_at"],
        "{mixture}"
    );
    let pool = [json!(1), json!(2), json!(9), json!({"id": 4}), json!(5)];
    let drawn = mixture["banners"].as_array().cloned().unwrap_or_default();
    assert!(
        drawn.len() == 3 && drawn.iter().all(|b| pool.contains(b)),
        "{mixture}"
    );
    let a_source = mixture["source_experiments"]
        .as_array()
        .and_then(|l| l.iter().find(|s| s["key"] == "a"))
        .cloned();
    assert_eq!(
        a_source.map(|s| s["banners"].clone()),
        Some(json!([1, 2, 9]))
    );
}

/// `stratify_exposures_total` for `experiment`: variant → count.
async fn exposure_counter(app: &TestApp, experiment: &str) -> HashMap<String, u64> {
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let prefix = format!("stratify_exposures_total{{experiment=\"{experiment}\",variant=\"");
    text.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (variant, count) = rest.split_once("\"} ")?;
            Some((variant.to_owned(), count.parse().ok()?))
        })
        .collect()
}

#[tokio::test]
async fn first_exposures_are_counted_per_variant_as_they_happen() {
    let app = spawn_app().await;
    let id = running_experiment(
        &app,
        json!({"key": "expo", "name": "Exposures",
               "variants": [{"key": "a", "weight": 50}, {"key": "b", "weight": 50}]}),
    )
    .await;
    assert!(exposure_counter(&app, "expo").await.is_empty());
    // Serves user-0..user-39; counts the variants they get into `tally`.
    async fn serve_all(app: &TestApp, tally: &mut HashMap<String, u64>) {
        for i in 0..40 {
            let answer = experiments_of(app, &format!("user-{i}")).await;
            for v in variants(&answer).into_values() {
                *tally.entry(v).or_default() += 1;
            }
        }
    }
    let mut served: HashMap<String, u64> = HashMap::new();
    serve_all(&app, &mut served).await;
    assert_eq!(served.values().sum::<u64>(), 40);
    assert_eq!(served.len(), 2, "{served:?}");
    assert_eq!(exposure_counter(&app, "expo").await, served);
    // Repeats (cached or not) expose nobody again.
    app.clock.advance(10 * 60_000);
    serve_all(&app, &mut HashMap::new()).await;
    assert_eq!(exposure_counter(&app, "expo").await, served);
    // Re-randomised: everyone is exposed again under the new version.
    let (s, out) = app
        .post(&format!("/v1/experiments/{id}/rerandomize"), json!(null))
        .await;
    assert_eq!(s, StatusCode::OK, "{out}");
    let mut again = served.clone();
    serve_all(&app, &mut again).await;
    assert_eq!(again.values().sum::<u64>(), 80);
    assert_eq!(exposure_counter(&app, "expo").await, again);
}

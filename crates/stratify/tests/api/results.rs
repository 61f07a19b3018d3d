//! Results end to end: simulated exposures and conversions with known true
//! rates, through the real server, checked against the simulation's own
//! counts and against the calculator.

use crate::helpers::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::HashMap;

const HOUR: i64 = 3_600_000;
const DAY: i64 = 24 * HOUR;

/// Serves every user once (their first exposure, now); returns each user's variant.
async fn expose(app: &TestApp, experiment_key: &str, users: &[String]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for chunk in users.chunks(64) {
        let answers = futures_util::future::join_all(
            chunk
                .iter()
                .map(|u| async move { app.get(&format!("/v1/users/{u}/experiments")).await }),
        )
        .await;
        for (u, (status, body)) in chunk.iter().zip(answers) {
            assert_eq!(status, StatusCode::OK, "{body}");
            let served = body["experiments"].as_array().unwrap();
            let e = served
                .iter()
                .find(|e| e["key"] == experiment_key)
                .expect("in the experiment");
            out.insert(u.clone(), e["variant"].as_str().unwrap().to_owned());
        }
    }
    out
}

async fn post_events(app: &TestApp, events: Vec<Value>) {
    for chunk in events.chunks(5000) {
        let (status, body) = app.post("/v1/events", json!({"events": chunk})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["accepted"], chunk.len(), "{body}");
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1e-300)
}

fn variant<'a>(results: &'a Value, metric: usize, key: &str) -> &'a Value {
    results["metrics"][metric]["variants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["key"] == key)
        .unwrap()
}

#[tokio::test]
async fn simulated_experiment_gives_exact_counts_and_a_winner() {
    let app = spawn_app().await;
    let id = running_experiment(
        &app,
        json!({"key": "checkout", "name": "One-page checkout", "variants": [
            {"key": "control", "weight": 50, "is_control": true},
            {"key": "treatment", "weight": 50}]}),
    )
    .await;
    for metric in [
        json!({"key": "purchased", "kind": "conversion", "event": "purchase", "window": "7d"}),
        json!({"key": "revenue", "kind": "sum", "event": "purchase", "property": "amount"}),
        json!({"key": "purchases", "kind": "count", "event": "purchase"}),
        json!({"key": "basket", "kind": "mean", "event": "purchase", "property": "amount"}),
    ] {
        let (s, body) = app.post("/v1/metrics", metric).await;
        assert_eq!(s, StatusCode::CREATED, "{body}");
    }

    // True rates: 10 % in control, 16 % in treatment; two cohorts a day apart.
    let true_rate = |v: &str| if v == "control" { 0.10 } else { 0.16 };
    let users: Vec<String> = (0..3000).map(|i| format!("sim-{i:04}")).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    // Purchases before anyone's exposure never count.
    post_events(
        &app,
        users.iter().map(|u| json!({"user_id": u, "name": "purchase", "timestamp": T0 - HOUR, "properties": {"amount": 999}})).collect(),
    )
    .await;
    let mut assigned = expose(&app, "checkout", &users[..1500]).await;
    app.clock.advance(DAY);
    assigned.extend(expose(&app, "checkout", &users[1500..]).await);
    let exposed_at = |i: usize| if i < 1500 { T0 } else { T0 + DAY };

    #[derive(Default, Clone)]
    struct Truth {
        users: u64,
        converted: u64,
        revenue: Vec<f64>,
        purchases: Vec<f64>,
        basket: Vec<f64>,
        day0_users: u64,
    }
    let mut truth: HashMap<&str, Truth> = HashMap::new();
    let mut events = Vec::new();
    let mut treatment_events = 0;
    for (i, u) in users.iter().enumerate() {
        let v = assigned[u].as_str();
        let t = truth
            .entry(if v == "control" {
                "control"
            } else {
                "treatment"
            })
            .or_default();
        t.users += 1;
        t.day0_users += u64::from(i < 1500);
        let (mut revenue, mut count, mut converted) = (0.0, 0.0, false);
        if rng.random::<f64>() < true_rate(v) {
            // One or two purchases inside the 7-day window.
            for _ in 0..rng.random_range(1..=2) {
                let amount = f64::from(rng.random_range(500..5000)) / 100.0;
                let at = exposed_at(i) + rng.random_range(0..6 * DAY);
                events.push(json!({"user_id": u, "name": "purchase", "timestamp": at, "properties": {"amount": amount}}));
                revenue += amount;
                count += 1.0;
            }
            converted = true;
        }
        if i % 10 == 3 {
            // A late purchase, 9 days after exposure: outside the conversion window.
            events.push(json!({"user_id": u, "name": "purchase", "timestamp": exposed_at(i) + 9 * DAY, "properties": {"amount": 20}}));
            revenue += 20.0;
            count += 1.0;
        }
        if count > 0.0 && v == "treatment" {
            treatment_events += count as usize;
        }
        t.converted += u64::from(converted);
        t.revenue.push(revenue);
        t.purchases.push(count);
        if count > 0.0 {
            t.basket.push(revenue / count);
        }
    }
    post_events(&app, events).await;
    app.clock.set(T0 + 12 * DAY);

    let (s, r) = app
        .get(&format!(
            "/v1/experiments/{id}/results?metric=purchased,revenue,purchases,basket"
        ))
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["exposed_users"], 3000);
    assert_eq!(r["method"], "welch");
    assert_eq!(r["srm"]["srm_detected"], false, "{}", r["srm"]);

    // Conversions: exact counts, the true rates inside the intervals, a winner.
    for key in ["control", "treatment"] {
        let t = &truth[key];
        let v = variant(&r, 0, key);
        assert_eq!(v["users"], t.users, "{key}");
        assert_eq!(v["conversions"], t.converted, "{key}");
        let (low, high) = (
            v["ci_low"].as_f64().unwrap(),
            v["ci_high"].as_f64().unwrap(),
        );
        assert!(
            low < true_rate(key) && true_rate(key) < high,
            "{key}: [{low}, {high}]"
        );
    }
    let treatment = variant(&r, 0, "treatment");
    assert_eq!(treatment["significant"], true, "{treatment}");
    assert!(treatment["chance_to_win"].as_f64().unwrap() > 0.99);
    assert_eq!(r["winner"]["key"], "treatment", "{}", r["winner_reason"]);
    assert!(variant(&r, 0, "control")["absolute"].is_null());

    // The same arms through the calculator give the same statistics.
    let arm = |k: &str| json!({"n": truth[k].users, "conversions": truth[k].converted});
    let (s, calc) = app
        .post(
            "/v1/stats/compare",
            json!({"method": "welch", "control": arm("control"), "treatment": arm("treatment")}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{calc}");
    for field in ["estimate", "se", "df", "p_value", "ci_low", "ci_high"] {
        assert_eq!(
            calc["absolute"][field], treatment["absolute"][field],
            "{field}"
        );
    }
    assert_eq!(calc["chance_to_win"], treatment["chance_to_win"]);

    // Revenue, purchases and basket: exact sums, means and sample variances.
    for (m, pick) in [(1, 0), (2, 1), (3, 2)] {
        for key in ["control", "treatment"] {
            let t = &truth[key];
            let values = match pick {
                0 => &t.revenue,
                1 => &t.purchases,
                _ => &t.basket,
            };
            let n = values.len() as f64;
            let mean = values.iter().sum::<f64>() / n;
            let var = values.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
            let v = variant(&r, m, key);
            assert_eq!(v["n"], values.len(), "metric {m} {key}");
            assert!(
                close(v["total"].as_f64().unwrap(), values.iter().sum()),
                "metric {m} {key}: {v}"
            );
            assert!(
                close(v["mean"].as_f64().unwrap(), mean),
                "metric {m} {key}: {v} vs {mean}"
            );
            assert!(
                (v["variance"].as_f64().unwrap() - var).abs() <= 1e-7 * var,
                "metric {m} {key}: {v} vs {var}"
            );
        }
    }
    assert_eq!(variant(&r, 3, "control")["users"], truth["control"].users);

    // The daily series: one point per day from the first exposure to now,
    // the first day holding the first cohort only, the last equal to the totals.
    let series = r["metrics"][0]["timeseries"].as_array().unwrap();
    assert_eq!(series.len(), 13);
    assert_eq!(series[0]["date"], "2026-01-01");
    let day0 = series[0]["variants"].as_array().unwrap();
    assert_eq!(day0[0]["n"], truth["control"].day0_users);
    let last = series.last().unwrap()["variants"].as_array().unwrap();
    for (i, key) in ["control", "treatment"].iter().enumerate() {
        assert_eq!(last[i]["estimate"], variant(&r, 0, key)["estimate"]);
        assert_eq!(last[i]["ci_low"], variant(&r, 0, key)["ci_low"]);
    }
    assert!(last[1]["lift"]["ci_low"].as_f64().unwrap() > 0.0);

    // The seed's form, with z_pooled.
    let (s, seed) = app
        .post(
            &format!("/v1/experiments/{id}/results"),
            json!({"conversion_event_type": "purchase", "confidence_level": 0.95, "significance_threshold": 0.05, "method": "z_pooled"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{seed}");
    assert_eq!(seed["experiment_name"], "One-page checkout");
    assert_eq!(seed["conversion_event_type"], "purchase");
    assert_eq!(seed["method"], "z_pooled");
    assert_eq!(seed["winner"]["key"], "treatment");
    assert!(seed["metrics"][0]["variants"][1]["absolute"]["df"].is_null());

    // Raw events of the treatment's users after their exposure, paged.
    let mut seen = 0;
    let mut cursor = String::new();
    loop {
        let (s, page) = app
            .get(&format!(
                "/v1/events?experiment_id={id}&variant=treatment&name=purchase&limit=1000{cursor}"
            ))
            .await;
        assert_eq!(s, StatusCode::OK, "{page}");
        for e in page["events"].as_array().unwrap() {
            assert_eq!(assigned[e["user_id"].as_str().unwrap()], "treatment");
            assert_ne!(e["properties"]["amount"], 999, "a pre-exposure event");
        }
        seen += page["events"].as_array().unwrap().len();
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, treatment_events);
}

#[tokio::test]
async fn a_sample_ratio_mismatch_blocks_the_winner() {
    let app = spawn_app().await;
    let id = running_experiment(
        &app,
        json!({"key": "srm", "name": "SRM", "variants": [
            {"key": "a", "weight": 50}, {"key": "b", "weight": 50}]}),
    )
    .await;
    let users: Vec<String> = (0..600).map(|i| format!("srm-{i}")).collect();
    let assigned = expose(&app, "srm", &users).await;
    // Every 10th user of a converts, every other one of b: a huge, significant difference...
    let events = users
        .iter()
        .enumerate()
        .filter(|(i, u)| i % if assigned[*u] == "b" { 2 } else { 10 } == 0)
        .map(|(_, u)| u)
        .map(|u| json!({"user_id": u, "name": "buy", "timestamp": T0 + 1000}))
        .collect();
    post_events(&app, events).await;
    app.clock.advance(HOUR);
    let (s, r) = app
        .get(&format!("/v1/experiments/{id}/results?event=buy"))
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["winner"]["key"], "b");
    // ...but once the weights say 90/10, the sticky 50/50 split is a mismatch.
    let (s, body) = app
        .json(
            Method::PATCH,
            &format!("/v1/experiments/{id}"),
            Some(json!({"variants": [{"key": "a", "weight": 90}, {"key": "b", "weight": 10}]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let (_, r) = app
        .get(&format!("/v1/experiments/{id}/results?event=buy"))
        .await;
    assert_eq!(r["srm"]["srm_detected"], true, "{}", r["srm"]);
    assert!(r["srm"]["p_value"].as_f64().unwrap() < 0.001);
    assert!(r["winner"].is_null());
    assert!(r["winner_reason"]
        .as_str()
        .unwrap()
        .contains("sample ratio mismatch"));
}

#[tokio::test]
async fn three_variants_use_holm_and_an_empty_experiment_has_no_numbers() {
    let app = spawn_app().await;
    let id = running_experiment(
        &app,
        json!({"key": "three", "name": "Three", "variants": [
            {"key": "c", "weight": 34, "is_control": true}, {"key": "t1", "weight": 33}, {"key": "t2", "weight": 33}]}),
    )
    .await;
    // Nobody exposed yet: counts are zero and statistics null, never NaN.
    let (s, r) = app
        .get(&format!("/v1/experiments/{id}/results?event=buy&method=z"))
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["exposed_users"], 0);
    assert_eq!(r["srm"]["p_value"], 1.0);
    let t1 = variant(&r, 0, "t1");
    assert!(
        t1["estimate"].is_null() && t1["absolute"]["p_value"].is_null(),
        "{t1}"
    );
    assert!(r["winner"].is_null());

    let users: Vec<String> = (0..900).map(|i| format!("h-{i}")).collect();
    let assigned = expose(&app, "three", &users).await;
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let events = users
        .iter()
        .filter(|u| {
            let p = match assigned[*u].as_str() {
                "c" => 0.2,
                "t1" => 0.22,
                _ => 0.35,
            };
            rng.random::<f64>() < p
        })
        .map(|u| json!({"user_id": u, "name": "buy", "timestamp": T0 + 5}))
        .collect();
    post_events(&app, events).await;
    app.clock.advance(HOUR);
    let (_, r) = app
        .get(&format!("/v1/experiments/{id}/results?event=buy"))
        .await;
    let raw: Vec<f64> = ["t1", "t2"]
        .iter()
        .map(|k| variant(&r, 0, k)["absolute"]["p_value"].as_f64().unwrap())
        .collect();
    let adjusted: Vec<f64> = ["t1", "t2"]
        .iter()
        .map(|k| variant(&r, 0, k)["p_value_adjusted"].as_f64().unwrap())
        .collect();
    // Holm with two treatments: the smaller p doubled, the larger kept (but not below it).
    let (lo, hi) = if raw[0] < raw[1] { (0, 1) } else { (1, 0) };
    assert!(close(adjusted[lo], (2.0 * raw[lo]).min(1.0)));
    assert!(close(adjusted[hi], raw[hi].max(adjusted[lo])));
}

#[tokio::test]
async fn metrics_and_results_reject_bad_input() {
    let app = spawn_app().await;
    let id = running_experiment(
        &app,
        json!({"key": "bad", "name": "Bad", "variants": [{"key": "a", "weight": 50}, {"key": "b", "weight": 50}]}),
    )
    .await;
    for (body, field) in [
        (
            json!({"key": "m", "kind": "sum", "event": "buy"}),
            "/property",
        ),
        (
            json!({"key": "m", "kind": "conversion", "event": "buy", "property": "x"}),
            "/property",
        ),
        (
            json!({"key": "m", "kind": "count", "event": "buy", "window": "7 days"}),
            "/window",
        ),
        (
            json!({"key": "m m", "kind": "count", "event": "buy"}),
            "/key",
        ),
        (
            json!({"key": "m", "kind": "sum", "event": "buy", "property": "a.b"}),
            "/property",
        ),
    ] {
        let (s, e) = app.post("/v1/metrics", body.clone()).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {e}");
        assert_eq!(e["error"]["field"], field, "{body}");
    }
    let (s, e) = app
        .post(
            "/v1/metrics",
            json!({"key": "m", "kind": "ratio", "event": "buy"}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    let (s, _) = app
        .post(
            "/v1/metrics",
            json!({"key": "m", "kind": "count", "event": "buy"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = app
        .post(
            "/v1/metrics",
            json!({"key": "m", "kind": "count", "event": "buy"}),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    let (s, list) = app.get("/v1/metrics").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["metrics"][0]["key"], "m");

    for (query, status, field) in [
        ("", StatusCode::UNPROCESSABLE_ENTITY, "/metric"),
        ("?metric=nope", StatusCode::NOT_FOUND, "/metric"),
        (
            "?metric=m&method=bayes",
            StatusCode::UNPROCESSABLE_ENTITY,
            "/method",
        ),
        (
            "?metric=m&confidence_level=1.5",
            StatusCode::UNPROCESSABLE_ENTITY,
            "/confidence_level",
        ),
        (
            "?metric=m&from=yesterday",
            StatusCode::UNPROCESSABLE_ENTITY,
            "/from",
        ),
        ("?metric=m&colour=red", StatusCode::UNPROCESSABLE_ENTITY, ""),
    ] {
        let (s, e) = app
            .get(&format!("/v1/experiments/{id}/results{query}"))
            .await;
        assert_eq!(s, status, "{query}: {e}");
        if !field.is_empty() {
            assert_eq!(e["error"]["field"], field, "{query}");
        }
    }
    let (s, _) = app.get("/v1/experiments/nope/results?metric=m").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, e) = app
        .post(
            &format!("/v1/experiments/{id}/results"),
            json!({"confidence": 0.9}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
    let (s, _) = app.json(Method::DELETE, "/v1/metrics/m", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = app.get("/v1/metrics/m").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_calculator_answers_the_contract_shapes() {
    let app = spawn_app().await;
    let (s, c) = app
        .post(
            "/v1/stats/compare",
            json!({"method": "z", "confidence_level": 0.95,
            "control": {"n": 400, "conversions": 0}, "treatment": {"n": 400, "conversions": 0}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{c}");
    assert_eq!(c["control"]["ci_low"], 0.0);
    assert!(
        c["absolute"]["p_value"].is_null() && c["absolute"]["statistic"].is_null(),
        "{c}"
    );
    assert!(
        c["relative"].is_null() && c["chance_to_win"].is_null(),
        "{c}"
    );

    let (s, srm) = app
        .post(
            "/v1/stats/srm",
            json!({"observed": [5120, 4880], "weights": [50, 50]}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{srm}");
    assert_eq!(srm["df"], 1);
    assert_eq!(srm["srm_detected"], false);
    assert!(close(srm["chi2"].as_f64().unwrap(), 5.76));
    let (_, none) = app
        .post(
            "/v1/stats/srm",
            json!({"observed": [0, 0], "weights": [1, 1]}),
        )
        .await;
    assert_eq!(none["p_value"], 1.0);

    let (s, n) = app
        .post(
            "/v1/stats/sample-size",
            json!({"baseline_rate": 0.1, "mde": 0.01}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{n}");
    // The textbook figure for 10 % → 11 %, α 0.05, power 0.8: 14 751 per arm.
    assert_eq!(n["n_per_variant"], 14751, "{n}");

    for (path, body) in [
        (
            "/v1/stats/compare",
            json!({"control": {"n": 1}, "treatment": {"n": 1, "conversions": 0}}),
        ),
        ("/v1/stats/srm", json!({"observed": [1], "weights": [1]})),
        (
            "/v1/stats/sample-size",
            json!({"baseline_rate": 1.5, "mde": 0.1}),
        ),
        (
            "/v1/stats/sample-size",
            json!({"baseline_rate": 0.1, "mde": 0.1, "extra": 1}),
        ),
    ] {
        let (s, e) = app.post(path, body.clone()).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{path} {body}: {e}");
        error_code(&e);
    }
}

/// Issue 20: a simulated experiment whose per-user pre- and post-exposure
/// values are known. The server's results with CUPED (t-test, sequential,
/// Bayesian) equal GrowthBook's gbstats 0.8.0 (pinned in scripts/test.sh)
/// run on the sums of those known values; `cuped=false` equals gbstats
/// without adjustment; the pre-period is exactly the lookback.
#[tokio::test]
async fn cuped_results_equal_gbstats_on_the_known_per_user_values() {
    let app = spawn_app().await;
    let id = running_experiment(
        &app,
        json!({"key": "pricing", "name": "Pricing", "variants": [
            {"key": "control", "weight": 50, "is_control": true},
            {"key": "treatment", "weight": 50}]}),
    )
    .await;
    let (s, m) = app
        .post(
            "/v1/metrics",
            json!({"key": "spend", "kind": "sum", "event": "purchase", "property": "amount",
                   "cuped": {"lookback": "14d"}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{m}");
    let (s, e) = app
        .post(
            "/v1/metrics",
            json!({"key": "avg", "kind": "mean", "event": "purchase", "property": "amount", "cuped": {"lookback": "14d"}}),
        )
        .await;
    assert_eq!(
        (s, error_code(&e)),
        (StatusCode::UNPROCESSABLE_ENTITY, "unexpected_field")
    );

    let users: Vec<String> = (0..600).map(|i| format!("cu-{i:03}")).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(20);
    let mut events = Vec::new();
    let mut pre: HashMap<&str, f64> = HashMap::new();
    for u in &users {
        // Two purchases inside the lookback, one before it (never counts).
        let (a, b) = (
            rng.random_range(0..4000) as f64 / 100.0,
            rng.random_range(0..4000) as f64 / 100.0,
        );
        events.push(json!({"user_id": u, "name": "purchase", "timestamp": T0 - 3 * DAY, "properties": {"amount": a}}));
        events.push(json!({"user_id": u, "name": "purchase", "timestamp": T0 - 13 * DAY, "properties": {"amount": b}}));
        events.push(json!({"user_id": u, "name": "purchase", "timestamp": T0 - 15 * DAY, "properties": {"amount": 500}}));
        pre.insert(u, a + b);
    }
    post_events(&app, events).await;
    let assigned = expose(&app, "pricing", &users).await;
    // After exposure: spend correlates with the pre-period, plus a lift.
    let mut post: HashMap<&str, f64> = HashMap::new();
    let mut events = Vec::new();
    for u in &users {
        let lift = if assigned[u] == "treatment" { 4.0 } else { 0.0 };
        let noise = rng.random_range(0..1000) as f64 / 100.0;
        let amount = ((0.8 * pre[u.as_str()] + lift + noise) * 100.0).round() / 100.0;
        events.push(json!({"user_id": u, "name": "purchase", "timestamp": T0 + HOUR, "properties": {"amount": amount}}));
        post.insert(u, amount);
    }
    post_events(&app, events).await;
    app.clock.advance(2 * DAY);

    // The sums gbstats gets, from the known values (not from the server).
    let mut sums: HashMap<&str, [f64; 6]> = HashMap::new(); // n, Σpost, Σpost², Σpre, Σpre², Σpost·pre
    for u in &users {
        let s = sums.entry(assigned[u].as_str()).or_default();
        let (x, y) = (post[u.as_str()], pre[u.as_str()]);
        for (k, v) in [1.0, x, x * x, y, y * y, x * y].into_iter().enumerate() {
            s[k] += v;
        }
    }
    let script = r#"
import json, sys
from gbstats.models.statistics import RegressionAdjustedStatistic, SampleMeanStatistic, compute_theta
from gbstats.frequentist.tests import TwoSidedTTest, SequentialTwoSidedTTest, FrequentistConfig, SequentialConfig
from gbstats.bayesian.tests import EffectBayesianABTest, EffectBayesianConfig
data = json.load(sys.stdin)
def stat(s, adjusted):
    n = int(s[0])
    post = SampleMeanStatistic(n=n, sum=s[1], sum_squares=s[2])
    if not adjusted:
        return post
    return RegressionAdjustedStatistic(n=n, post_statistic=post, pre_statistic=SampleMeanStatistic(n=n, sum=s[3], sum_squares=s[4]), post_pre_sum_of_products=s[5], theta=0)
out = {}
for adjusted in [True, False]:
    for test in ["ttest", "sequential", "bayesian"]:
        blocks = {}
        for scale in ["relative", "absolute"]:
            a, b = stat(data["control"], adjusted), stat(data["treatment"], adjusted)
            if test == "ttest":
                r = TwoSidedTTest(a, b, FrequentistConfig(difference_type=scale)).compute_result()
            elif test == "sequential":
                r = SequentialTwoSidedTTest(a, b, SequentialConfig(difference_type=scale, sequential_tuning_parameter=5000)).compute_result()
            else:
                r = EffectBayesianABTest(a, b, EffectBayesianConfig(difference_type=scale)).compute_result()
            blk = {"estimate": r.expected, "se": r.uplift.stddev, "ci_low": r.ci[0], "ci_high": r.ci[1]}
            if test == "bayesian":
                blk.update(chance_to_win=r.chance_to_win, risk_control=r.risk[0], risk_treatment=r.risk[1])
            else:
                blk["p_value"] = r.p_value
            blocks[scale] = {k: float(v) for k, v in blk.items()}
        out[f"{test} {'cuped' if adjusted else 'plain'}"] = blocks
a, b = stat(data["control"], True), stat(data["treatment"], True)
out["theta"] = float(compute_theta(a, b))
print(json.dumps(out))
"#;
    let expected = python_json(
        "the gbstats reference",
        script,
        &json!({"control": sums["control"], "treatment": sums["treatment"]}),
    )
    .await;

    for (name, query) in [
        ("ttest cuped", ""),
        ("sequential cuped", "&sequential=true"),
        ("bayesian cuped", "&engine=bayesian"),
        ("ttest plain", "&cuped=false"),
        (
            "sequential plain",
            "&cuped=false&sequential=true&sequential_tuning=5000",
        ),
        ("bayesian plain", "&cuped=false&engine=bayesian"),
    ] {
        let (s, r) = app
            .get(&format!("/v1/experiments/{id}/results?metric=spend{query}"))
            .await;
        assert_eq!(s, StatusCode::OK, "{r}");
        let t = variant(&r, 0, "treatment");
        assert_eq!(t["n"], sums["treatment"][0], "{name}");
        for scale in ["relative", "absolute"] {
            let want = expected[name][scale].as_object().expect("block");
            for (field, w) in want {
                let got = t[scale][field].as_f64().unwrap_or(f64::NAN);
                let w = w.as_f64().expect("number");
                let ok = close(got, w) || (field == "p_value" && (got - w).abs() < 1e-14);
                assert!(ok, "{name} {scale}.{field}: gbstats {w:e}, server {got:e}");
            }
        }
        if name.ends_with("cuped") {
            let theta = t["cuped"]["theta"].as_f64().expect("theta");
            assert!(
                close(theta, expected["theta"].as_f64().expect("theta")),
                "θ {theta}"
            );
            let reduction = t["cuped"]["variance_reduction"]
                .as_f64()
                .expect("reduction");
            assert!(reduction > 0.3, "variance reduction {reduction}");
            assert!(t["cuped"]["balance_p_value"].as_f64().is_some());
        } else {
            assert!(t.get("cuped").is_none(), "{t}");
        }
    }
    // The experiment's default analysis: sequential, so that looking every
    // day is safe; a request can still ask for the fixed-horizon test.
    let (s, e) = app
        .json(
            Method::PATCH,
            &format!("/v1/experiments/{id}"),
            Some(json!({"analysis": {"engine": "bayesian", "sequential": {"tuning": 5000}}})),
        )
        .await;
    assert_eq!(
        (s, e["error"]["field"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("/analysis/sequential")
        ),
        "{e}"
    );
    let (s, e) = app
        .json(
            Method::PATCH,
            &format!("/v1/experiments/{id}"),
            Some(json!({"analysis": {"sequential": {"tuning": 5000}}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{e}");
    assert_eq!(
        e["analysis"],
        json!({"engine": "frequentist", "sequential": {"tuning": 5000.0}})
    );
    for (query, name) in [
        ("", "sequential cuped"),
        ("&sequential=false", "ttest cuped"),
        ("&engine=bayesian", "bayesian cuped"),
    ] {
        let (_, r) = app
            .get(&format!("/v1/experiments/{id}/results?metric=spend{query}"))
            .await;
        let got = variant(&r, 0, "treatment")["absolute"]["ci_low"]
            .as_f64()
            .unwrap_or(f64::NAN);
        let want = expected[name]["absolute"]["ci_low"]
            .as_f64()
            .expect("number");
        assert!(close(got, want), "{name}: {got} vs {want}");
    }
    let (s, e) = app
        .get(&format!(
            "/v1/experiments/{id}/results?metric=spend&engine=bayesian&sequential=true"
        ))
        .await;
    assert_eq!(
        (s, error_code(&e), e["error"]["field"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_query",
            Some("/sequential")
        ),
        "{e}"
    );
}

/// Issue 20: a guardrail is reported in its own section and a treatment
/// that significantly harms it cannot win, however well it does elsewhere.
#[tokio::test]
async fn a_treatment_that_harms_a_guardrail_does_not_win() {
    let app = spawn_app().await;
    let id = running_experiment(
        &app,
        json!({"key": "fast-checkout", "name": "Fast checkout", "variants": [
            {"key": "control", "weight": 50, "is_control": true},
            {"key": "treatment", "weight": 50}]}),
    )
    .await;
    for metric in [
        json!({"key": "bought", "kind": "conversion", "event": "purchase"}),
        json!({"key": "errors", "kind": "count", "event": "error", "higher_is_better": false}),
        json!({"key": "logins", "kind": "count", "event": "login"}),
    ] {
        let (s, b) = app.post("/v1/metrics", metric).await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
    }
    let users: Vec<String> = (0..2000).map(|i| format!("g-{i:04}")).collect();
    let assigned = expose(&app, "fast-checkout", &users).await;
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut events = Vec::new();
    for u in &users {
        let treated = assigned[u] == "treatment";
        if rng.random_bool(if treated { 0.30 } else { 0.10 }) {
            events.push(json!({"user_id": u, "name": "purchase", "timestamp": T0 + HOUR}));
        }
        for _ in 0..rng.random_range(0..if treated { 6 } else { 2 }) {
            events.push(json!({"user_id": u, "name": "error", "timestamp": T0 + HOUR}));
        }
        if rng.random_bool(0.5) {
            events.push(json!({"user_id": u, "name": "login", "timestamp": T0 + HOUR}));
        }
    }
    post_events(&app, events).await;
    app.clock.advance(DAY);

    let (_, plain) = app
        .get(&format!("/v1/experiments/{id}/results?metric=bought"))
        .await;
    assert_eq!(
        plain["winner"]["key"], "treatment",
        "{}",
        plain["winner_reason"]
    );
    // A harmless guardrail changes nothing.
    let (_, harmless) = app
        .get(&format!(
            "/v1/experiments/{id}/results?metric=bought&guardrail=logins"
        ))
        .await;
    assert_eq!(harmless["winner"]["key"], "treatment");
    let (s, guarded) = app
        .get(&format!(
            "/v1/experiments/{id}/results?metric=bought&guardrail=errors,logins"
        ))
        .await;
    assert_eq!(s, StatusCode::OK, "{guarded}");
    assert!(guarded["winner"].is_null(), "{}", guarded["winner"]);
    let reason = guarded["winner_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("guardrail 'errors'"), "{reason}");
    // The guardrails are their own section, never among the metrics.
    assert_eq!(guarded["metrics"].as_array().map(Vec::len), Some(1));
    let g = &guarded["guardrails"][0];
    assert_eq!(g["metric"]["key"], "errors");
    assert!(g["winner"].is_null());
    let t = g["variants"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["key"] == "treatment")
        .unwrap();
    assert_eq!(t["significant"], true);
    assert!(t["absolute"]["estimate"].as_f64().unwrap() > 0.0);
    // The primary metric's own numbers do not change.
    assert_eq!(
        variant(&guarded, 0, "treatment")["absolute"],
        variant(&plain, 0, "treatment")["absolute"]
    );
}

/// Issue 20: a ratio metric (revenue per order) in results equals gbstats'
/// `RatioStatistic` under the t-test on the known per-user sums.
#[tokio::test]
async fn a_ratio_metric_equals_gbstats_on_the_known_per_user_values() {
    let app = spawn_app().await;
    let id = running_experiment(
        &app,
        json!({"key": "aov", "name": "AOV", "variants": [
            {"key": "control", "weight": 50, "is_control": true},
            {"key": "treatment", "weight": 50}]}),
    )
    .await;
    for metric in [
        json!({"key": "revenue", "kind": "sum", "event": "purchase", "property": "amount"}),
        json!({"key": "orders", "kind": "count", "event": "purchase"}),
        json!({"key": "per_order", "kind": "ratio", "numerator": "revenue", "denominator": "orders"}),
    ] {
        let (s, b) = app.post("/v1/metrics", metric).await;
        assert_eq!(s, StatusCode::CREATED, "{b}");
    }
    let (s, e) = app
        .post(
            "/v1/metrics",
            json!({"key": "bad", "kind": "ratio", "numerator": "revenue"}),
        )
        .await;
    assert_eq!(
        (s, e["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("/denominator"))
    );
    let users: Vec<String> = (0..800).map(|i| format!("r-{i:03}")).collect();
    let assigned = expose(&app, "aov", &users).await;
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut events = Vec::new();
    let mut sums: HashMap<&str, [f64; 6]> = HashMap::new(); // n, Σm, Σm², Σd, Σd², Σmd
    for u in &users {
        let treated = assigned[u] == "treatment";
        let orders = rng.random_range(0..4);
        let mut revenue = 0.0;
        for _ in 0..orders {
            let amount =
                (rng.random_range(1000..6000) + if treated { 700 } else { 0 }) as f64 / 100.0;
            revenue += amount;
            events.push(json!({"user_id": u, "name": "purchase", "timestamp": T0 + HOUR, "properties": {"amount": amount}}));
        }
        let d = f64::from(orders);
        let s = sums.entry(assigned[u].as_str()).or_default();
        for (k, v) in [1.0, revenue, revenue * revenue, d, d * d, revenue * d]
            .into_iter()
            .enumerate()
        {
            s[k] += v;
        }
    }
    post_events(&app, events).await;
    app.clock.advance(DAY);
    let expected = python_json(
        "the gbstats reference",
        r#"
import json, sys
from gbstats.models.statistics import RatioStatistic, SampleMeanStatistic
from gbstats.frequentist.tests import TwoSidedTTest, FrequentistConfig
data = json.load(sys.stdin)
def stat(s):
    n = int(s[0])
    return RatioStatistic(n=n, m_statistic=SampleMeanStatistic(n=n, sum=s[1], sum_squares=s[2]),
        d_statistic=SampleMeanStatistic(n=n, sum=s[3], sum_squares=s[4]), m_d_sum_of_products=s[5])
out = {}
for scale in ["relative", "absolute"]:
    r = TwoSidedTTest(stat(data["control"]), stat(data["treatment"]), FrequentistConfig(difference_type=scale)).compute_result()
    out[scale] = {"estimate": r.expected, "se": r.uplift.stddev, "ci_low": r.ci[0], "ci_high": r.ci[1], "p_value": r.p_value}
print(json.dumps(out))
"#,
        &json!({"control": sums["control"], "treatment": sums["treatment"]}),
    )
    .await;
    let (s, r) = app
        .get(&format!("/v1/experiments/{id}/results?metric=per_order"))
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let t = variant(&r, 0, "treatment");
    assert!(close(
        t["mean"].as_f64().unwrap(),
        sums["treatment"][1] / sums["treatment"][3]
    ));
    for scale in ["relative", "absolute"] {
        for (field, w) in expected[scale].as_object().expect("block") {
            let (got, w) = (
                t[scale][field].as_f64().unwrap_or(f64::NAN),
                w.as_f64().unwrap(),
            );
            assert!(
                close(got, w) || (field == "p_value" && (got - w).abs() < 1e-14),
                "{scale}.{field}: gbstats {w:e}, server {got:e}"
            );
        }
    }
}

/// Results without `to` are kept between calls (only what arrived since is
/// read); results with `to` are computed afresh. After every round of new
/// exposures and events, including exposures of users who had no profile
/// yet, events after `now`, a ratio and a CUPED metric, both answers are
/// identical. Amounts are quarters and each user's events number 1, 2 or 4,
/// so every sum is exact in any order.
#[tokio::test]
async fn results_kept_between_calls_equal_a_fresh_computation() {
    let app = spawn_app().await;
    let id = running_experiment(
        &app,
        json!({"key": "kept", "name": "Kept", "variants": [
            {"key": "control", "weight": 40, "is_control": true},
            {"key": "a", "weight": 30}, {"key": "b", "weight": 30}]}),
    )
    .await;
    for metric in [
        json!({"key": "bought", "kind": "conversion", "event": "buy", "window": "3d"}),
        json!({"key": "spend", "kind": "sum", "event": "buy", "property": "amount", "cuped": {"lookback": "7d"}}),
        json!({"key": "basket", "kind": "mean", "event": "buy", "property": "amount"}),
        json!({"key": "visits", "kind": "count", "event": "visit"}),
        json!({"key": "per_visit", "kind": "ratio", "numerator": "spend", "denominator": "visits"}),
    ] {
        let (s, body) = app.post("/v1/metrics", metric).await;
        assert_eq!(s, StatusCode::CREATED, "{body}");
    }
    let mut rng = ChaCha8Rng::seed_from_u64(18);
    let events_for = |u: &str, at: i64, rng: &mut ChaCha8Rng| -> Vec<Value> {
        let n = [1, 2, 4][rng.random_range(0..3)];
        (0..n)
            .map(|_| {
                let name = if rng.random_bool(0.5) { "buy" } else { "visit" };
                let amount = rng.random_range(-8..400) as f64 / 4.0;
                json!({"user_id": u, "name": name, "timestamp": at + rng.random_range(-5 * DAY..5 * DAY),
                       "properties": {"amount": amount}})
            })
            .collect()
    };
    let compare = |round: u32| {
        let app = &app;
        let id = id.clone();
        async move {
            let q = "metric=bought,spend,basket,visits,per_visit";
            let (s, kept) = app.get(&format!("/v1/experiments/{id}/results?{q}")).await;
            assert_eq!(s, StatusCode::OK, "{kept}");
            let to = kept["to"].as_str().unwrap().to_owned();
            let (s, fresh) = app
                .get(&format!(
                    "/v1/experiments/{id}/results?{q}&to={}",
                    to.replace('+', "%2B")
                ))
                .await;
            assert_eq!(s, StatusCode::OK, "{fresh}");
            for field in [
                "exposed_users",
                "excluded_users",
                "variants",
                "srm",
                "metrics",
                "winner",
            ] {
                assert!(
                    kept[field] == fresh[field],
                    "round {round}: {field} differs\nkept: {}\nfresh: {}",
                    kept[field],
                    fresh[field]
                );
            }
            kept["exposed_users"].as_u64().unwrap()
        }
    };

    // Round 1: users with events before and after their exposure.
    let first: Vec<String> = (0..150).map(|i| format!("k1-{i:03}")).collect();
    let mut events = Vec::new();
    for u in &first {
        events.extend(events_for(u, T0, &mut rng));
    }
    post_events(&app, events).await;
    app.clock.advance(HOUR);
    expose(&app, "kept", &first).await;
    app.clock.advance(DAY);
    assert_eq!(compare(1).await, 150);

    // Round 2: visitors served before any event (no profile yet), then
    // some of them and some earlier users act, one of them after `now`.
    let second: Vec<String> = (0..150).map(|i| format!("k2-{i:03}")).collect();
    expose(&app, "kept", &second).await;
    assert_eq!(compare(2).await, 300);
    let mut events = Vec::new();
    for u in second.iter().step_by(2).chain(first.iter().step_by(3)) {
        events.extend(events_for(u, T0 + 2 * DAY, &mut rng));
    }
    let now = T0 + DAY + HOUR;
    events.push(json!({"user_id": "k2-000", "name": "visit", "timestamp": now + 2 * DAY}));
    post_events(&app, events).await;
    assert_eq!(compare(3).await, 300);

    // Round 3: time passes the late visit; more users and events.
    app.clock.advance(3 * DAY);
    let third: Vec<String> = (0..100).map(|i| format!("k3-{i:03}")).collect();
    let mut events = Vec::new();
    for u in &third {
        events.extend(events_for(u, T0 + 4 * DAY, &mut rng));
    }
    post_events(&app, events).await;
    expose(&app, "kept", &third).await;
    assert_eq!(compare(4).await, 400);
}

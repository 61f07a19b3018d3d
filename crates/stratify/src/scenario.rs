//! The food-delivery demo scenario of the Stratify seed: 13 segments, 18
//! experiments and 5 users with order histories, applied through the public
//! HTTP API (so `stratify demo` against any server and `serve --demo` do the
//! same thing). Order times are relative to the server's clock (`/health`).
//! Re-applying is harmless: existing segments, experiments, users and orders
//! (fixed event ids) are found and kept.

use anyhow::{bail, Context};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::HashMap;
use stratify_core::time::{format_rfc3339, parse_rfc3339, Millis};

const DAY: Millis = 86_400_000;
const HOUR: Millis = 3_600_000;

/// (name, description, rule)
pub fn segments() -> Vec<(&'static str, &'static str, Value)> {
    let f = |field: &str, op: &str, value: Value| json!({"field": field, "op": op, "value": value});
    let and = |c: Vec<Value>| json!({"operator": "AND", "conditions": c});
    vec![
        (
            "new_user",
            "No order yet",
            f("is_new_user", "eq", json!(true)),
        ),
        (
            "regular_user",
            "3+ orders in the last 14 days, but not a power user",
            and(vec![
                f("order_count_last_14_days", "gte", json!(3)),
                f("order_count_last_23_days", "lt", json!(25)),
            ]),
        ),
        (
            "power_user",
            ">= 25 orders in the last 23 days",
            f("order_count_last_23_days", "gte", json!(25)),
        ),
        (
            "high_value_recent",
            ">= 13 orders in 15 days and LTV > 1000",
            and(vec![
                f("order_count_last_15_days", "gte", json!(13)),
                f("ltv", "gt", json!(1000)),
            ]),
        ),
        (
            "hsr_layout_user",
            "Latest order in HSR Layout",
            f("city", "eq", json!("HSR Layout")),
        ),
        (
            "koramangala_user",
            "Latest order in Koramangala",
            f("city", "eq", json!("Koramangala")),
        ),
        (
            "dormant_user",
            "No order for 14 days",
            f("seconds_since_last_order", "gte", json!(14 * 86_400)),
        ),
        (
            "lapsing_user",
            "Last order 7 to 14 days ago",
            and(vec![
                f("seconds_since_last_order", "gte", json!(7 * 86_400)),
                f("seconds_since_last_order", "lt", json!(14 * 86_400)),
            ]),
        ),
        (
            "at_risk_vip",
            "LTV over 5000 and no order for 10 days",
            and(vec![
                f("ltv", "gt", json!(5000)),
                f("seconds_since_last_order", "gte", json!(10 * 86_400)),
            ]),
        ),
        (
            "one_time_buyer",
            "Exactly one order",
            f("total_orders", "eq", json!(1)),
        ),
        (
            "weekly_active",
            "3+ orders in the last 7 days",
            f("order_count_last_7_days", "gte", json!(3)),
        ),
        (
            "big_spender",
            "Lifetime spend over 10000",
            f("ltv", "gt", json!(10_000)),
        ),
        (
            "premium_plan",
            "On the premium subscription",
            f("subscription_plan", "eq", json!("premium")),
        ),
    ]
}

fn variant(key: &str, weight: f64, payload: Option<Value>) -> Value {
    let mut v = json!({"key": key, "weight": weight});
    if key == "control" {
        v["is_control"] = json!(true);
    }
    if let Some(p) = payload {
        v["payload"] = p;
    }
    v
}

fn banners(list: &[i64]) -> Option<Value> {
    Some(json!({ "banners": list }))
}

/// (key, name, segment names, variants, extra fields, start it?)
#[allow(clippy::type_complexity)]
pub fn experiments() -> Vec<(
    &'static str,
    &'static str,
    Vec<&'static str>,
    Vec<Value>,
    Value,
    bool,
)> {
    let none = json!({});
    vec![
        (
            "pizza_category_visibility",
            "Pizza tile for power users",
            vec!["power_user"],
            vec![
                variant("control", 20.0, None),
                variant(
                    "show_pizza_tile",
                    80.0,
                    Some(json!({"tile": "pizza", "position": 1})),
                ),
            ],
            none.clone(),
            true,
        ),
        (
            "new_user_onboarding_banners",
            "Onboarding banners for new users",
            vec!["new_user"],
            vec![variant("onboarding", 100.0, banners(&[1, 2, 3]))],
            none.clone(),
            true,
        ),
        (
            "regular_user_discovery_banners",
            "Discovery banners for regular users",
            vec!["regular_user"],
            vec![variant("discovery", 100.0, banners(&[2, 4, 7]))],
            none.clone(),
            true,
        ),
        (
            "hsr_layout_banners",
            "Neighbourhood banners for HSR Layout",
            vec!["hsr_layout_user"],
            vec![variant("hsr_local", 100.0, banners(&[5, 8]))],
            none.clone(),
            true,
        ),
        (
            "dormant_user_discount",
            "Win back dormant users with 100 off",
            vec!["dormant_user"],
            vec![
                variant("control", 20.0, None),
                variant(
                    "show_100_rupees_discount",
                    80.0,
                    Some(json!({"widget": "discount", "amount": 100, "currency": "INR"})),
                ),
            ],
            none.clone(),
            true,
        ),
        (
            "dormant_user_content_strategy",
            "Personalised top picks for dormant users",
            vec!["dormant_user"],
            vec![
                variant("control", 50.0, None),
                variant(
                    "personalized_top_picks",
                    50.0,
                    Some(json!({"module": "top_picks"})),
                ),
            ],
            none.clone(),
            true,
        ),
        (
            "power_user_premium_features",
            "Premium features for power users",
            vec!["power_user"],
            vec![
                variant("control", 34.0, None),
                variant(
                    "priority_delivery",
                    33.0,
                    Some(json!({"feature": "priority_delivery"})),
                ),
                variant(
                    "free_delivery",
                    33.0,
                    Some(json!({"feature": "free_delivery"})),
                ),
            ],
            none.clone(),
            true,
        ),
        (
            "high_value_loyalty_rewards",
            "Double points for high-value users",
            vec!["high_value_recent"],
            vec![
                variant("control", 50.0, None),
                variant("double_points", 50.0, Some(json!({"points_multiplier": 2}))),
            ],
            none.clone(),
            true,
        ),
        (
            "at_risk_vip_winback",
            "Concierge outreach for at-risk VIPs",
            vec!["at_risk_vip"],
            vec![
                variant("control", 50.0, None),
                variant("vip_coupon", 50.0, Some(json!({"coupon": "VIP250"}))),
            ],
            json!({"keep_on_exit": true}),
            true,
        ),
        (
            "lapsing_user_reminder",
            "Reminders for lapsing users",
            vec!["lapsing_user"],
            vec![
                variant("control", 50.0, None),
                variant("push_reminder", 50.0, Some(json!({"channel": "push"}))),
            ],
            none.clone(),
            true,
        ),
        (
            "koramangala_banners",
            "Neighbourhood banners for Koramangala",
            vec!["koramangala_user"],
            vec![variant("koramangala_local", 100.0, banners(&[9, 10]))],
            none.clone(),
            true,
        ),
        (
            "second_order_coupon",
            "A coupon for the second order",
            vec!["one_time_buyer"],
            vec![
                variant("control", 50.0, None),
                variant("coupon_50", 50.0, Some(json!({"coupon": "SECOND50"}))),
            ],
            none.clone(),
            true,
        ),
        (
            "weekly_streak_badges",
            "Streak badges for weekly actives",
            vec!["weekly_active"],
            vec![
                variant("control", 50.0, None),
                variant("badges", 50.0, Some(json!({"badges": true}))),
            ],
            none.clone(),
            true,
        ),
        (
            "big_spender_early_access",
            "Early access for big spenders",
            vec!["big_spender", "premium_plan"],
            vec![
                variant("control", 50.0, None),
                variant("early_access", 50.0, None),
            ],
            none.clone(),
            true,
        ),
        (
            "checkout_button_color",
            "Checkout button colour",
            vec![],
            vec![
                variant("control", 50.0, Some(json!({"color": "blue"}))),
                variant("green", 50.0, Some(json!({"color": "green"}))),
            ],
            json!({"namespace": {"id": "checkout", "start": 0.0, "end": 0.5}}),
            true,
        ),
        (
            "checkout_copy",
            "Checkout button copy",
            vec![],
            vec![
                variant("control", 50.0, Some(json!({"copy": "Place order"}))),
                variant(
                    "urgent",
                    50.0,
                    Some(json!({"copy": "Order now, arrives in 20 min"})),
                ),
            ],
            json!({"namespace": {"id": "checkout", "start": 0.5, "end": 1.0}}),
            true,
        ),
        (
            "search_ranking_v2",
            "New search ranking on a fifth of traffic",
            vec![],
            vec![
                variant("control", 50.0, None),
                variant("ranking_v2", 50.0, Some(json!({"ranker": "v2"}))),
            ],
            json!({"coverage": 0.2}),
            true,
        ),
        (
            "festive_banners",
            "Festive banners (not started yet)",
            vec![],
            vec![variant("festive", 100.0, banners(&[11, 12, 13]))],
            none,
            false,
        ),
    ]
}

/// An order: (days ago, amount, city).
type Order = (f64, f64, &'static str);

/// (user id, attributes, orders)
pub fn users() -> Vec<(&'static str, Value, Vec<Order>)> {
    let spread = |n: usize, from_days: f64, to_days: f64, amount: f64, city: &'static str| {
        (0..n)
            .map(|i| {
                let t = if n == 1 {
                    from_days
                } else {
                    from_days + (to_days - from_days) * i as f64 / (n - 1) as f64
                };
                (t, amount + (i % 5) as f64 * 20.0, city)
            })
            .collect::<Vec<_>>()
    };
    vec![
        (
            "user_lisa_new",
            json!({"name": "Lisa", "city": "Indiranagar", "subscription_plan": "free"}),
            vec![],
        ),
        (
            "user_sarah_power_hsr",
            json!({"name": "Sarah", "city": "HSR Layout", "subscription_plan": "premium"}),
            spread(28, 20.0, 0.1, 320.0, "HSR Layout"),
        ),
        (
            "user_john_at_risk_vip",
            json!({"name": "John", "city": "Whitefield", "subscription_plan": "premium"}),
            spread(30, 60.0, 20.0, 480.0, "Whitefield"),
        ),
        (
            "user_mike_regular",
            json!({"name": "Mike", "city": "Indiranagar", "subscription_plan": "free"}),
            spread(10, 20.0, 1.0, 250.0, "Indiranagar"),
        ),
        (
            "user_priya_hsr_regular",
            json!({"name": "Priya", "city": "HSR Layout", "subscription_plan": "free"}),
            spread(8, 18.0, 2.0, 300.0, "HSR Layout"),
        ),
    ]
}

struct Api {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Api {
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{}", self.base, path))
            .bearer_auth(&self.key);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = resp.status();
        let text = resp.text().await?;
        let value = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok((status, value))
    }

    async fn expect(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        ok: &[StatusCode],
    ) -> anyhow::Result<(StatusCode, Value)> {
        let (status, value) = self.call(method.clone(), path, body).await?;
        if !ok.contains(&status) {
            bail!("{method} {path} answered {status}: {value}");
        }
        Ok((status, value))
    }
}

/// What was applied.
#[derive(Debug, Default)]
pub struct Summary {
    pub segments: usize,
    pub experiments: usize,
    pub users: usize,
    /// Orders sent (the ones sent before are recognised by id and ignored).
    pub orders: usize,
}

/// Applies the scenario to the server at `base` with an admin (or editor
/// plus ingest) key.
pub async fn apply(base: &str, key: &str) -> anyhow::Result<Summary> {
    // The demo loads into this very server over loopback: its certificate
    // (often self-signed) is not what this connection relies on.
    let own_server = base.starts_with("https://127.0.0.1:") || base.starts_with("https://[::1]:");
    let api = Api {
        http: reqwest::Client::builder()
            .danger_accept_invalid_certs(own_server)
            .build()?,
        base: base.trim_end_matches('/').to_owned(),
        key: key.to_owned(),
    };
    let (_, health) = api
        .expect(Method::GET, "/health", None, &[StatusCode::OK])
        .await?;
    let now = health["now"]
        .as_str()
        .and_then(|t| parse_rfc3339(t).ok())
        .context("the server's /health does not say what time it is")?;
    let mut summary = Summary::default();

    let (_, existing) = api
        .expect(Method::GET, "/v1/segments", None, &[StatusCode::OK])
        .await?;
    let mut ids: HashMap<String, String> = existing["segments"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| Some((s["name"].as_str()?.to_owned(), s["id"].as_str()?.to_owned())))
        .collect();
    for (name, description, rules) in segments() {
        if ids.contains_key(name) {
            continue;
        }
        let body = json!({"name": name, "description": description, "rules": rules});
        let (_, s) = api
            .expect(
                Method::POST,
                "/v1/segments",
                Some(&body),
                &[StatusCode::CREATED],
            )
            .await?;
        ids.insert(
            name.to_owned(),
            s["id"].as_str().unwrap_or_default().to_owned(),
        );
        summary.segments += 1;
    }

    let (_, existing) = api
        .expect(Method::GET, "/v1/experiments", None, &[StatusCode::OK])
        .await?;
    let mut known: HashMap<String, (String, String)> = existing["experiments"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            Some((
                e["key"].as_str()?.to_owned(),
                (
                    e["id"].as_str()?.to_owned(),
                    e["status"].as_str()?.to_owned(),
                ),
            ))
        })
        .collect();
    for (key, name, targets, variants, extra, start) in experiments() {
        if !known.contains_key(key) {
            let segment_ids: Vec<&String> = targets.iter().filter_map(|t| ids.get(*t)).collect();
            let mut body =
                json!({"key": key, "name": name, "variants": variants, "segment_ids": segment_ids});
            for (k, v) in extra.as_object().into_iter().flatten() {
                body[k] = v.clone();
            }
            let (_, e) = api
                .expect(
                    Method::POST,
                    "/v1/experiments",
                    Some(&body),
                    &[StatusCode::CREATED],
                )
                .await?;
            let id = e["id"].as_str().unwrap_or_default().to_owned();
            known.insert(key.to_owned(), (id, "draft".into()));
            summary.experiments += 1;
        }
        if let Some((id, status)) = known.get(key) {
            if start && status == "draft" {
                api.expect(
                    Method::POST,
                    &format!("/v1/experiments/{id}/start"),
                    None,
                    &[StatusCode::OK],
                )
                .await?;
            }
        }
    }

    for (user, attributes, orders) in users() {
        let body = json!({"user_id": user, "attributes": attributes});
        let (s, _) = api
            .expect(
                Method::POST,
                "/v1/users",
                Some(&body),
                &[StatusCode::CREATED, StatusCode::CONFLICT],
            )
            .await?;
        if s == StatusCode::CREATED {
            summary.users += 1;
        }
        if orders.is_empty() {
            continue;
        }
        let events: Vec<Value> = orders
            .iter()
            .enumerate()
            .map(|(i, (days_ago, amount, city))| {
                let at = now - (days_ago * DAY as f64) as Millis - HOUR;
                json!({
                    "event_id": format!("order:demo-{user}-{i:02}"),
                    "user_id": user,
                    "name": "order_placed",
                    "timestamp": format_rfc3339(at),
                    "properties": {"amount": amount, "city": city},
                })
            })
            .collect();
        let (_, r) = api
            .expect(
                Method::POST,
                "/v1/events",
                Some(&json!({"events": events})),
                &[StatusCode::OK, StatusCode::ACCEPTED],
            )
            .await?;
        if r["rejected"].as_array().is_some_and(|a| !a.is_empty()) {
            bail!("orders of {user} were rejected: {r}");
        }
        summary.orders += orders.len();
    }
    Ok(summary)
}

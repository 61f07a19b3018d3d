//! Live memberships end to end: the change log, its streams (SSE and
//! WebSocket, resumable), webhooks (signed, retried, at least once),
//! membership history, size history and build status.

use crate::helpers::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const DAY: i64 = 86_400_000;

async fn segment(app: &TestApp, name: &str, rules: Value) -> String {
    let (s, b) = app
        .post("/v1/segments", json!({"name": name, "rules": rules}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    b["id"].as_str().expect("id").to_owned()
}

async fn changes(app: &TestApp, segment: &str, after: i64) -> Vec<Value> {
    let (s, b) = app
        .get(&format!(
            "/v1/segments/{segment}/changes?after={after}&limit=1000"
        ))
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    b["changes"].as_array().expect("changes").clone()
}

async fn wait_changes(app: &TestApp, segment: &str, n: usize) -> Vec<Value> {
    eventually(&format!("{n} changes"), || async {
        let c = changes(app, segment, 0).await;
        (c.len() >= n).then_some(c)
    })
    .await
}

async fn login(app: &TestApp, user: &str, id: &str) {
    let (s, b) = app
        .post(
            "/v1/events",
            json!({"event_id": id, "user_id": user, "name": "LOGIN"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
}

#[tokio::test]
async fn changes_follow_events_and_time_with_history_and_size() {
    let app = spawn_app().await;
    let active = segment(
        &app,
        "active",
        json!({"event": "LOGIN", "within": "1d", "op": "gte", "value": 1}),
    )
    .await;
    login(&app, "u1", "e1").await;
    login(&app, "u2", "e2").await;
    let c = wait_changes(&app, &active, 2).await;
    assert_eq!(c[0]["change"], "entered");
    assert_eq!(c[0]["user_id"], "u1");
    assert_eq!(c[0]["segment_id"], active.as_str());
    assert_eq!(c[0]["at"], "2026-01-01T00:00:00.000Z");
    assert_eq!(c[0]["cause"]["event_id"], "e1");
    assert_eq!(c[1]["seq"].as_i64(), c[0]["seq"].as_i64().map(|s| s + 1));

    // A day later both leave, at the exact instant, because of time.
    app.clock.advance(DAY);
    let c = wait_changes(&app, &active, 4).await;
    for x in &c[2..] {
        assert_eq!(x["change"], "exited");
        assert_eq!(x["at"], "2026-01-02T00:00:00.000Z");
        assert_eq!(x["cause"], "time");
    }
    // Paging: after + limit, and next_after.
    let first = c[0]["seq"].as_i64().expect("seq");
    let (_, page) = app
        .get(&format!(
            "/v1/segments/{active}/changes?after={first}&limit=2"
        ))
        .await;
    assert_eq!(page["changes"].as_array().map(Vec::len), Some(2));
    assert_eq!(page["next_after"].as_i64(), Some(first + 2));

    // u1 comes back: history shows both stays, newest first.
    app.clock.advance(3_600_000);
    login(&app, "u1", "e3").await;
    wait_changes(&app, &active, 5).await;
    let (s, m) = app.get("/v1/users/u1/memberships").await;
    assert_eq!(s, StatusCode::OK, "{m}");
    assert_eq!(
        m["memberships"],
        json!([
            {"segment_id": active, "entered_at": "2026-01-02T01:00:00.000Z", "exited_at": null},
            {"segment_id": active, "entered_at": "2026-01-01T00:00:00.000Z", "exited_at": "2026-01-02T00:00:00.000Z"},
        ])
    );
    let (s, h) = app
        .get(&format!("/v1/segments/{active}/size-history?bucket=hour"))
        .await;
    assert_eq!(s, StatusCode::OK, "{h}");
    let sizes: Vec<(i64, i64, i64)> = h["points"]
        .as_array()
        .expect("points")
        .iter()
        .map(|p| {
            (
                p["size"].as_i64().unwrap_or(-1),
                p["entered"].as_i64().unwrap_or(-1),
                p["exited"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    assert_eq!(sizes, vec![(2, 2, 0), (0, 0, 2), (1, 1, 0)]);
    let (_, seg) = app.get(&format!("/v1/segments/{active}")).await;
    assert_eq!(seg["build"]["state"], "ready");
    assert_eq!(seg["size"], 1);

    // Bad input is a clear 4xx.
    for (path, status, code) in [
        (
            format!("/v1/segments/{active}/size-history?bucket=week"),
            422,
            "invalid_bucket",
        ),
        (
            format!("/v1/segments/{active}/changes?limit=0"),
            422,
            "invalid_limit",
        ),
        (
            format!("/v1/segments/{active}/changes?after=-1"),
            422,
            "invalid_after",
        ),
        (
            "/v1/segments/nope/changes".to_owned(),
            404,
            "segment_not_found",
        ),
        (
            "/v1/users/nobody/memberships".to_owned(),
            404,
            "user_not_found",
        ),
        (
            "/v1/changes/stream?segment_id=nope".to_owned(),
            404,
            "segment_not_found",
        ),
    ] {
        let (s, b) = app.get(&path).await;
        assert_eq!(s.as_u16(), status, "{path}: {b}");
        assert_eq!(error_code(&b), code, "{path}");
    }
}

/// Reads SSE frames from a response until `n` events arrived.
async fn sse_events(resp: &mut reqwest::Response, n: usize) -> Vec<(i64, Value)> {
    let mut buf = String::new();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while out.len() < n {
        assert!(Instant::now() < deadline, "timed out after {out:?}");
        let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
            .await
            .expect("a chunk in time")
            .expect("chunk")
            .expect("stream open");
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let (mut id, mut data) = (None, None);
            for line in frame.lines() {
                if let Some(v) = line.strip_prefix("id:") {
                    id = v.trim().parse::<i64>().ok();
                }
                if let Some(v) = line.strip_prefix("data:") {
                    data = serde_json::from_str::<Value>(v.trim()).ok();
                }
            }
            if let (Some(id), Some(data)) = (id, data) {
                out.push((id, data));
            }
        }
    }
    out
}

#[tokio::test]
async fn the_sse_stream_is_live_filtered_and_resumable() {
    let app = spawn_app().await;
    let a = segment(&app, "a", json!({"event": "A", "op": "gte", "value": 1})).await;
    let b = segment(&app, "b", json!({"event": "B", "op": "gte", "value": 1})).await;
    let post = |user: &'static str, name: &'static str| {
        let app = &app;
        async move {
            let (s, _) = app
                .post("/v1/events", json!({"user_id": user, "name": name}))
                .await;
            assert_eq!(s, StatusCode::OK);
        }
    };
    // From now on, segment a only.
    let mut resp = app
        .call(
            Method::GET,
            &format!("/v1/changes/stream?segment_id={a}"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream")));
    post("u1", "B").await;
    post("u1", "A").await;
    post("u2", "A").await;
    let got = sse_events(&mut resp, 2).await;
    assert!(got.iter().all(|(_, c)| c["segment_id"] == a.as_str()));
    assert_eq!(got[0].1["user_id"], "u1");
    assert_eq!(got[1].1["user_id"], "u2");
    assert_eq!(got[0].0, got[0].1["seq"].as_i64().expect("seq"));
    drop(resp);

    // Resuming with Last-Event-ID replays what came after it, all segments.
    let resume = got[0].0;
    let mut resp = app
        .client
        .get(app.url("/v1/changes/stream"))
        .bearer_auth(ADMIN)
        .header("Last-Event-ID", (resume - 2).to_string())
        .send()
        .await
        .expect("stream");
    let replay = sse_events(&mut resp, 3).await;
    let seqs: Vec<i64> = replay.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, vec![resume - 1, resume, resume + 1]);
    assert_eq!(replay[0].1["segment_id"], b.as_str());
}

#[tokio::test]
async fn the_websocket_streams_changes_from_a_sequence_number() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let app = spawn_app().await;
    let a = segment(&app, "a", json!({"event": "A", "op": "gte", "value": 1})).await;
    for u in ["u1", "u2"] {
        let (s, _) = app
            .post("/v1/events", json!({"user_id": u, "name": "A"}))
            .await;
        assert_eq!(s, StatusCode::OK);
    }
    wait_changes(&app, &a, 2).await;
    let mut req = format!("ws://{}/v1/changes/ws?after=0", app.addr)
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {ADMIN}").parse().expect("header"),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("connect");
    let (s, _) = app
        .post("/v1/events", json!({"user_id": "u3", "name": "A"}))
        .await;
    assert_eq!(s, StatusCode::OK);
    let mut users = Vec::new();
    while users.len() < 3 {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a message in time")
            .expect("open")
            .expect("message");
        let v: Value = serde_json::from_str(msg.to_text().expect("text")).expect("JSON");
        assert_eq!(v["change"], "entered");
        users.push(v["user_id"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(users, vec!["u1", "u2", "u3"]);
    // Without a key the upgrade is refused.
    let url = format!("ws://{}/v1/changes/ws", app.addr);
    assert!(tokio_tungstenite::connect_async(url).await.is_err());
}

/// A Standard Webhooks secret (`whsec_` and the base64 of 24 bytes).
const SECRET: &str = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3";

#[derive(Default)]
struct Receiver {
    deliveries: Vec<(String, Value)>,
    /// Each delivery's Standard Webhooks headers and body, as received.
    raw: Vec<(HashMap<String, String>, String)>,
    fail_first: usize,
}

async fn receiver() -> (String, Arc<parking_lot::Mutex<Receiver>>) {
    let state = Arc::new(parking_lot::Mutex::new(Receiver {
        fail_first: 1,
        ..Default::default()
    }));
    let st = state.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let st = st.clone();
                async move {
                    let mut r = st.lock();
                    if r.fail_first > 0 {
                        r.fail_first -= 1;
                        return StatusCode::SERVICE_UNAVAILABLE;
                    }
                    let body_text = String::from_utf8_lossy(&body).into_owned();
                    let standard: HashMap<String, String> =
                        ["webhook-id", "webhook-timestamp", "webhook-signature"]
                            .iter()
                            .filter_map(|h| {
                                Some((h.to_string(), headers.get(*h)?.to_str().ok()?.to_owned()))
                            })
                            .collect();
                    r.raw.push((standard, body_text.clone()));
                    r.deliveries.push((
                        body_text.clone(),
                        serde_json::from_str(&body_text).unwrap_or_default(),
                    ));
                    StatusCode::OK
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), state)
}

#[tokio::test]
async fn webhooks_are_signed_retried_and_carry_sequence_numbers() {
    let app = spawn_app_delivering_locally().await;
    let a = segment(&app, "a", json!({"event": "A", "op": "gte", "value": 1})).await;
    let b = segment(&app, "b", json!({"event": "B", "op": "gte", "value": 1})).await;
    let (url, rx) = receiver().await;
    for (body, code) in [
        (
            json!({"url": "ftp://example.com/x", "secret": SECRET}),
            "invalid_url",
        ),
        (json!({"url": url, "secret": "short"}), "invalid_secret"),
        (
            json!({"url": url, "secret": "0123456789abcdef0123456789abcdef"}),
            "invalid_secret",
        ),
        (
            json!({"url": url, "secret": "whsec_c2hvcnQ="}),
            "invalid_secret",
        ),
        (
            json!({"url": url, "secret": SECRET, "segment_ids": ["nope"]}),
            "segment_not_found",
        ),
        (
            json!({"url": url, "secret": SECRET, "extra": 1}),
            "invalid_body",
        ),
    ] {
        let (s, e) = app.post("/v1/webhooks", body).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{e}");
        assert_eq!(error_code(&e), code, "{e}");
    }
    let (s, hook) = app
        .post(
            "/v1/webhooks",
            json!({"url": url, "secret": SECRET, "segment_ids": [a]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{hook}");
    assert!(hook.get("secret").is_none(), "the secret is never shown");
    for (u, name) in [("u1", "A"), ("u1", "B"), ("u2", "A")] {
        let (s, _) = app
            .post("/v1/events", json!({"user_id": u, "name": name}))
            .await;
        assert_eq!(s, StatusCode::OK);
    }
    // The first attempt fails (503); the retry delivers everything, once.
    let got = eventually("deliveries", || async {
        let r = rx.lock();
        let n: usize = r
            .deliveries
            .iter()
            .map(|(_, v)| v["changes"].as_array().map_or(0, Vec::len))
            .sum();
        (n >= 2).then(|| r.deliveries.clone())
    })
    .await;
    let changes: Vec<Value> = got
        .iter()
        .flat_map(|(_, v)| v["changes"].as_array().cloned().unwrap_or_default())
        .collect();
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert!(changes.iter().all(|c| c["segment_id"] == a.as_str()));
    assert!(changes.iter().all(|c| c["segment_id"] != b.as_str()));
    assert!(changes[0]["seq"].as_i64() < changes[1]["seq"].as_i64());
    // The cursor is stored right after the receiver answered.
    let list = eventually("the cursor", || async {
        let (_, list) = app.get("/v1/webhooks").await;
        (list["webhooks"][0]["delivered_seq"] == changes[1]["seq"]).then_some(list)
    })
    .await;
    let w = &list["webhooks"][0];
    assert_eq!(w["failures"], 0);
    let id = w["id"].as_str().expect("id");
    let resp = app
        .call(
            Method::DELETE,
            &format!("/v1/webhooks/{id}"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = app
        .call(
            Method::DELETE,
            &format!("/v1/webhooks/{id}"),
            Some(ADMIN),
            None,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn editing_a_rule_rebuilds_the_segment_in_the_background() {
    let app = spawn_app().await;
    for i in 0..50 {
        let plan = if i % 5 == 0 { "pro" } else { "free" };
        let (s, _) = app
            .post(
                "/v1/users",
                json!({"user_id": format!("u{i}"), "attributes": {"plan": plan}}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED);
    }
    let seg = segment(&app, "pro", json!({"plan": "pro"})).await;
    let c = wait_changes(&app, &seg, 10).await;
    assert!(c.iter().all(|x| x["cause"] == "rule_change"));
    let (s, b) = app
        .json(
            Method::PATCH,
            &format!("/v1/segments/{seg}"),
            Some(json!({"rules": {"plan": "free"}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    assert!(["building", "ready"].contains(&b["build"]["state"].as_str().unwrap_or("")));
    // 10 exits, 40 entries.
    wait_changes(&app, &seg, 60).await;
    let seg_now = eventually("ready", || async {
        let (_, s) = app.get(&format!("/v1/segments/{seg}")).await;
        (s["build"]["state"] == "ready" && s["size"] == 40).then_some(s)
    })
    .await;
    assert_eq!(seg_now["build"]["evaluated"], seg_now["build"]["total"]);
    // Attribute writes move users at once.
    let (s, _) = app
        .json(
            Method::PATCH,
            "/v1/users/u0",
            Some(json!({"attributes": {"plan": "free"}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let c = wait_changes(&app, &seg, 61).await;
    assert_eq!(c[60]["cause"], "attribute_change");
    assert_eq!(c[60]["user_id"], "u0");
}

/// The seed's food-delivery scenario over HTTP, on a movable clock: 25
/// orders make a power user at once; as orders age out of the 23-day window
/// they drop out at the exact instant; 14 days after the last order they
/// are dormant, to the millisecond; a new order brings them back at once.
#[tokio::test]
async fn food_delivery_power_user_and_dormancy_end_to_end() {
    let app = spawn_app().await;
    let power = segment(
        &app,
        "power_user",
        json!({"field": "order_count_last_23_days", "op": "gte", "value": 25}),
    )
    .await;
    let dormant = segment(
        &app,
        "dormant_user",
        json!({"field": "seconds_since_last_order", "op": "gte", "value": 14 * 86_400}),
    )
    .await;
    let min = 60_000;
    let order = |id: String, ts: i64| {
        let app = &app;
        async move {
            let (s, b) = app
                .post(
                    "/v1/orders",
                    json!({"order_id": id, "user_id": "rider", "amount": 18.5, "city": "Pune", "timestamp": ts}),
                )
                .await;
            assert!(s.is_success(), "{b}");
        }
    };
    let member = |segment: String| {
        let app = &app;
        async move {
            app.engine.live().sync().await;
            let (_, b) = app.get(&format!("/v1/segments/{segment}")).await;
            b["size"] == 1
        }
    };
    app.clock.set(T0 + 30 * min);
    for i in 0..25 {
        order(format!("o{i}"), T0 + i * min).await;
    }
    assert!(
        member(power.clone()).await,
        "25 orders in 23 days: a power user"
    );
    let c = changes(&app, &power, 0).await;
    assert_eq!(c.len(), 1);
    assert_eq!(
        c[0]["cause"]["event_id"], "order:o24",
        "the 25th order did it"
    );
    assert_eq!(c[0]["at"], "2026-01-01T00:30:00.000Z");

    app.clock.set(T0 + 10 * DAY);
    order("o25".into(), T0 + 10 * DAY).await;
    // 26 orders; the second one leaves the window at T0 + 23 d + 1 min.
    app.clock.set(T0 + 23 * DAY + min - 1);
    assert!(member(power.clone()).await);
    app.clock.set(T0 + 23 * DAY + min);
    assert!(!member(power.clone()).await, "dropped out as orders aged");
    app.clock.set(T0 + 24 * DAY - 1);
    assert!(!member(dormant.clone()).await);
    app.clock.set(T0 + 24 * DAY);
    assert!(
        member(dormant.clone()).await,
        "dormant 14 days after the last order"
    );
    app.clock.set(T0 + 24 * DAY + 3_600_000);
    order("o26".into(), T0 + 24 * DAY + 3_600_000).await;
    assert!(
        !member(dormant.clone()).await,
        "a new order brings them back"
    );

    let p = changes(&app, &power, 0).await;
    assert_eq!(p[1]["change"], "exited");
    assert_eq!(p[1]["at"], "2026-01-24T00:01:00.000Z");
    assert_eq!(p[1]["cause"], "time");
    let d = changes(&app, &dormant, 0).await;
    let d: Vec<(&str, &str, Value)> = d
        .iter()
        .map(|c| {
            (
                c["change"].as_str().unwrap_or(""),
                c["at"].as_str().unwrap_or(""),
                c["cause"].clone(),
            )
        })
        .collect();
    assert_eq!(d.len(), 2, "{d:?}");
    assert_eq!(
        (d[0].0, d[0].1, &d[0].2),
        ("entered", "2026-01-25T00:00:00.000Z", &json!("time"))
    );
    assert_eq!((d[1].0, d[1].1), ("exited", "2026-01-25T01:00:00.000Z"));
    assert_eq!(d[1].2["event_id"], "order:o26");
    let (_, m) = app.get("/v1/users/rider/memberships").await;
    assert_eq!(m["memberships"].as_array().map(Vec::len), Some(2));
    assert_eq!(m["memberships"][0]["segment_id"], dormant.as_str());
    assert_eq!(m["memberships"][0]["exited_at"], "2026-01-25T01:00:00.000Z");
}

/// A webhook target that answers with a redirect has not received the
/// delivery: the redirect is not followed (nothing reaches its target), the
/// attempt counts as failed with the status, and the cursor stays.
#[tokio::test]
async fn a_webhook_redirect_is_a_failed_delivery_and_is_not_followed() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let app = spawn_app_delivering_locally().await;
    let seg = segment(&app, "a", json!({"event": "A", "op": "gte", "value": 1})).await;
    let followed = std::sync::Arc::new(AtomicUsize::new(0));
    let hits = followed.clone();
    let receiver = axum::Router::new()
        .route(
            "/moved",
            axum::routing::post(|| async {
                (
                    StatusCode::FOUND,
                    [(reqwest::header::LOCATION, "/elsewhere")],
                )
            }),
        )
        .route(
            "/elsewhere",
            axum::routing::any(move || {
                let hits = hits.clone();
                async move {
                    hits.fetch_add(1, Ordering::SeqCst);
                    StatusCode::OK
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/moved", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, receiver).await });
    let (s, hook) = app
        .post(
            "/v1/webhooks",
            json!({"url": url, "secret": SECRET, "segment_ids": [seg]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{hook}");
    let (s, _) = app
        .post("/v1/events", json!({"user_id": "u1", "name": "A"}))
        .await;
    assert_eq!(s, StatusCode::OK);
    let w = eventually("a failed attempt", || async {
        let (_, list) = app.get("/v1/webhooks").await;
        let w = list["webhooks"][0].clone();
        (w["failures"].as_i64().unwrap_or(0) >= 1).then_some(w)
    })
    .await;
    assert_eq!(w["last_error"], "HTTP 302");
    assert_eq!(
        w["delivered_seq"], hook["delivered_seq"],
        "the cursor stays"
    );
    assert_eq!(
        followed.load(Ordering::SeqCst),
        0,
        "the redirect was followed"
    );
}

/// Issue 22: deliveries verified by the Standard Webhooks reference
/// (`standardwebhooks` 1.1.0 from PyPI, pinned in scripts/test.sh) with the
/// secret the server generated and showed once.
#[tokio::test]
async fn deliveries_verify_with_the_standard_webhooks_reference() {
    let app = spawn_app_delivering_locally().await;
    // The reference refuses timestamps five minutes off the wall clock.
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    app.clock.set(wall);
    let a = segment(&app, "a", json!({"event": "A", "op": "gte", "value": 1})).await;
    let (url, rx) = receiver().await;
    rx.lock().fail_first = 0;
    let (s, hook) = app.post("/v1/webhooks", json!({"url": url})).await;
    assert_eq!(s, StatusCode::CREATED, "{hook}");
    let secret = hook["secret"]
        .as_str()
        .expect("a generated secret")
        .to_owned();
    assert!(secret.starts_with("whsec_"), "{secret}");
    let (_, list) = app.get("/v1/webhooks").await;
    assert!(
        list["webhooks"][0].get("secret").is_none(),
        "shown once only"
    );
    for u in ["u1", "u2", "u3"] {
        let (s, _) = app
            .post("/v1/events", json!({"user_id": u, "name": "A"}))
            .await;
        assert_eq!(s, StatusCode::OK);
    }
    let raw = eventually("three changes delivered", || async {
        let r = rx.lock();
        let n: usize = r
            .deliveries
            .iter()
            .map(|(_, v)| v["changes"].as_array().map_or(0, Vec::len))
            .sum();
        (n >= 3).then(|| r.raw.clone())
    })
    .await;
    assert!(raw.iter().all(|(h, _)| h.len() == 3), "{raw:?}");
    let script = r#"
import json, sys
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
data = json.load(sys.stdin)
hook = Webhook(data["secret"])
for headers, body in data["deliveries"]:
    hook.verify(body, headers)
    for bad_body, bad_headers in [(body + " ", headers), (body, dict(headers, **{"webhook-timestamp": str(int(headers["webhook-timestamp"]) - 1)}))]:
        try:
            hook.verify(bad_body, bad_headers)
        except WebhookVerificationError:
            continue
        sys.exit("a tampered delivery verified")
print(json.dumps({"verified": len(data["deliveries"])}))
"#;
    let verified = python_json(
        "the standardwebhooks check",
        script,
        &json!({"secret": secret, "deliveries": raw}),
    )
    .await;
    assert_eq!(verified["verified"], raw.len());
    let _ = a;
}

/// Issue 22: by default a webhook may not target loopback, link-local
/// (cloud metadata), private or unspecified addresses, given as literals or
/// as names that resolve there.
#[tokio::test]
async fn webhooks_to_private_addresses_are_refused_by_default() {
    let app = spawn_app().await;
    for url in [
        "http://127.0.0.1:9/x",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/x",
        "http://0.0.0.0/x",
        "http://10.0.0.8/x",
        "http://[::ffff:127.0.0.1]/x",
        "https://localhost/x",
    ] {
        let (s, e) = app.post("/v1/webhooks", json!({"url": url})).await;
        assert_eq!(
            (s, error_code(&e), e["error"]["field"].as_str()),
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_url",
                Some("/url")
            ),
            "{url}: {e}"
        );
    }
    let (_, list) = app.get("/v1/webhooks").await;
    assert_eq!(list["webhooks"], json!([]));
}

/// Issue 22, DNS rebinding: the target is checked at every delivery, on the
/// address the name resolves to then. A webhook made while private targets
/// were allowed is not delivered once they are not.
#[tokio::test]
async fn a_name_that_resolves_to_a_private_address_is_refused_at_delivery() {
    let first = spawn_app_delivering_locally().await;
    let a = segment(&first, "a", json!({"event": "A", "op": "gte", "value": 1})).await;
    let (url, rx) = receiver().await;
    rx.lock().fail_first = 0;
    // The same receiver, by a name instead of an address.
    let url = url.replace("127.0.0.1", "localhost");
    let (s, hook) = first
        .post("/v1/webhooks", json!({"url": url, "segment_ids": [a]}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{hook}");
    first.engine.shutdown().await;
    let TestApp { dir, .. } = first;
    let app = spawn_app_in(dir, Default::default(), Default::default()).await;
    let (s, _) = app
        .post("/v1/events", json!({"user_id": "u1", "name": "A"}))
        .await;
    assert_eq!(s, StatusCode::OK);
    let w = eventually("a refused attempt", || async {
        let (_, list) = app.get("/v1/webhooks").await;
        let w = list["webhooks"][0].clone();
        (w["failures"].as_i64().unwrap_or(0) >= 1).then_some(w)
    })
    .await;
    let error = w["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("refused address (loopback)"), "{w}");
    assert!(rx.lock().deliveries.is_empty(), "delivered to loopback");
}

/// Issue 22: webhooks deliver to `https://` targets (rustls), trusting the
/// public roots and the configured extra certificates only.
#[tokio::test]
async fn webhooks_deliver_over_https() {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("cert");
    let dir = tempfile::tempdir().expect("dir");
    let (cert_path, key_path) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).expect("write");
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).expect("write");
    let received = Arc::new(parking_lot::Mutex::new(Vec::<Value>::new()));
    let sink = received.clone();
    let receiver = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let sink = sink.clone();
            async move {
                sink.lock()
                    .push(serde_json::from_slice(&body).unwrap_or_default());
                StatusCode::OK
            }
        }),
    );
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("https://{}/hook", tcp.local_addr().expect("addr"));
    let tls = stratify_server::tls::TlsListener::new(
        tcp,
        stratify_server::tls::server_config(&cert_path, &key_path).expect("tls"),
    )
    .expect("listener");
    tokio::spawn(async move { axum::serve(tls, receiver).await });
    let app = spawn_app_in(
        tempfile::tempdir().expect("dir"),
        Default::default(),
        stratify_engine::EngineConfig {
            webhooks: stratify_engine::WebhookPolicy {
                allow_private: true,
                extra_roots_pem: Some(cert.cert.pem().into_bytes()),
            },
            ..Default::default()
        },
    )
    .await;
    let a = segment(&app, "a", json!({"event": "A", "op": "gte", "value": 1})).await;
    let (s, hook) = app
        .post("/v1/webhooks", json!({"url": url, "segment_ids": [a]}))
        .await;
    assert_eq!(s, StatusCode::CREATED, "{hook}");
    let (s, _) = app
        .post("/v1/events", json!({"user_id": "u1", "name": "A"}))
        .await;
    assert_eq!(s, StatusCode::OK);
    let got = eventually("an https delivery", || async {
        let r = received.lock();
        (!r.is_empty()).then(|| r.clone())
    })
    .await;
    assert_eq!(got[0]["changes"][0]["user_id"], "u1", "{got:?}");
}

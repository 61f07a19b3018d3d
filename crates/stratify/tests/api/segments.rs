use crate::helpers::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use stratify_core::access::Role;

fn ids(v: &Value) -> Vec<String> {
    v["user_ids"]
        .as_array()
        .expect("user_ids")
        .iter()
        .map(|u| u.as_str().unwrap_or("").to_owned())
        .collect()
}

async fn seed_users(app: &TestApp) {
    for (id, age, city, plan) in [
        ("a", 22, "Pune", "free"),
        ("b", 28, "Delhi", "premium"),
        ("c", 31, "Pune", "premium"),
        ("d", 40, "Mumbai", "basic"),
    ] {
        let (status, _) = app
            .post(
                "/v1/users",
                json!({"user_id": id, "attributes": {"age": age, "city_attr": city, "plan": plan}}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    app.post(
        "/v1/events",
        json!({"events": [
            {"user_id": "a", "name": "LOGIN", "timestamp": T0 - 3_600_000},
            {"user_id": "b", "name": "LOGIN", "timestamp": T0 - 2 * 86_400_000},
            {"user_id": "c", "name": "order_placed", "timestamp": T0 - 86_400_000, "properties": {"amount": 800, "city": "Pune"}},
            {"user_id": "c", "name": "order_placed", "timestamp": T0 - 1000, "properties": {"amount": 400, "city": "HSR Layout"}},
        ]}),
    )
    .await;
}

#[tokio::test]
async fn dynamic_segments_are_versioned_audited_and_list_their_members() {
    let app = spawn_app().await;
    seed_users(&app).await;
    let editor = app.key(Role::Editor).await;
    let resp = app
        .call(
            Method::POST,
            "/v1/segments",
            Some(&editor),
            Some(json!({"name": "young", "description": "under 30",
            "rules": {"field": "age", "op": "lt", "value": 30}})),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let seg: Value = resp.json().await.expect("json");
    let id = seg["id"].as_str().expect("id").to_owned();
    assert_eq!(
        (seg["kind"].as_str(), seg["version"].as_i64()),
        (Some("dynamic"), Some(1))
    );
    let editor_id = seg["created_by"].as_str().expect("created_by").to_owned();
    assert!(editor.contains(&editor_id), "created_by names the key");

    let (_, members) = app.get(&format!("/v1/segments/{id}/members")).await;
    assert_eq!(ids(&members), ["a", "b"]);
    assert_eq!(members["total_count"], 2);

    app.clock.advance(1000);
    let (status, v2) = app
        .json(
            Method::PATCH,
            &format!("/v1/segments/{id}"),
            Some(json!({"rules": {"field": "age", "op": "gte", "value": 30}})),
        )
        .await;
    assert_eq!((status, v2["version"].as_i64()), (StatusCode::OK, Some(2)));
    let (_, members) = app.get(&format!("/v1/segments/{id}/members")).await;
    assert_eq!(ids(&members), ["c", "d"]);

    let (_, versions) = app.get(&format!("/v1/segments/{id}/versions")).await;
    let v = versions["versions"].as_array().expect("versions");
    assert_eq!(v.len(), 2);
    assert_eq!(
        (v[0]["version"].as_i64(), v[1]["version"].as_i64()),
        (Some(2), Some(1))
    );
    assert_eq!(
        v[1]["rules"],
        json!({"field": "age", "op": "lt", "value": 30}),
        "old versions stay readable"
    );
    assert_eq!(v[0]["created_by"], "env-admin");
    assert_eq!(v[1]["created_by"].as_str(), Some(editor_id.as_str()));

    let (status, body) = app
        .post(
            "/v1/segments",
            json!({"name": "young", "rules": {"field": "x", "op": "exists"}}),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "segment_name_taken")
    );
    let (status, _) = app
        .json(Method::DELETE, &format!("/v1/segments/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = app.get(&format!("/v1/segments/{id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn invalid_rules_are_422_with_a_pointer_into_the_body() {
    let app = spawn_app().await;
    let (status, body) = app
        .post("/v1/segments", json!({"name": "x", "rules": {"operator": "AND", "conditions": [{"field": "age", "op": "between", "value": [3]}]}}))
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("/rules/conditions/0/value")
        )
    );
    let (status, body) = app.post("/v1/segments", json!({"name": "x"})).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid_segment")
    );
    let (status, body) = app
        .post(
            "/v1/segments",
            json!({"name": "x", "rules": {"segment": "seg_nope"}}),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "segment_not_found")
    );
}

#[tokio::test]
async fn segment_references_work_and_cycles_are_refused() {
    let app = spawn_app().await;
    seed_users(&app).await;
    let (_, premium) = app
        .post(
            "/v1/segments",
            json!({"name": "premium", "rules": {"plan": "premium"}}),
        )
        .await;
    let premium_id = premium["id"].as_str().expect("id").to_owned();
    let (_, vip) = app
        .post("/v1/segments", json!({"name": "vip", "user_ids": ["d"]}))
        .await;
    let vip_id = vip["id"].as_str().expect("id").to_owned();
    let (status, either) = app
        .post("/v1/segments", json!({"name": "premium or vip", "rules": {"operator": "OR", "conditions": [{"segment": premium_id}, {"segment": vip_id}]}}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{either}");
    let either_id = either["id"].as_str().expect("id").to_owned();
    let (_, members) = app.get(&format!("/v1/segments/{either_id}/members")).await;
    assert_eq!(ids(&members), ["b", "c", "d"]);

    let (status, body) = app
        .json(
            Method::PATCH,
            &format!("/v1/segments/{premium_id}"),
            Some(json!({"rules": {"segment": either_id}})),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::UNPROCESSABLE_ENTITY, "segment_cycle")
    );
    let (status, body) = app
        .json(Method::DELETE, &format!("/v1/segments/{premium_id}"), None)
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "segment_in_use")
    );

    let (_, user) = app.get("/v1/users/d").await;
    let segs: BTreeSet<String> = user["segments"]
        .as_array()
        .expect("segments")
        .iter()
        .map(|s| s.as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(segs, BTreeSet::from([vip_id.clone(), either_id.clone()]));
}

#[tokio::test]
async fn static_segments_take_lists_additions_removals_and_uploads() {
    let app = spawn_app().await;
    let (status, seg) = app
        .post(
            "/v1/segments",
            json!({"name": "beta testers", "user_ids": ["x1", "x2"]}),
        )
        .await;
    assert_eq!(
        (status, seg["kind"].as_str()),
        (StatusCode::CREATED, Some("static"))
    );
    let id = seg["id"].as_str().expect("id").to_owned();
    let (_, added) = app
        .post(
            &format!("/v1/segments/{id}/members"),
            json!({"user_ids": ["x2", "x3"]}),
        )
        .await;
    assert_eq!(added["changed"], 1);
    let (_, removed) = app
        .json(
            Method::DELETE,
            &format!("/v1/segments/{id}/members"),
            Some(json!({"user_ids": ["x1"]})),
        )
        .await;
    assert_eq!(removed["changed"], 1);
    let (_, members) = app.get(&format!("/v1/segments/{id}/members")).await;
    assert_eq!(ids(&members), ["x2", "x3"]);
    let upload = app
        .client
        .put(app.url(&format!("/v1/segments/{id}/members")))
        .bearer_auth(ADMIN)
        .header("content-type", "text/csv")
        .body("user_id\ny1\n\"y2\"\n\ny3\n")
        .send()
        .await
        .expect("upload");
    assert_eq!(upload.status(), StatusCode::OK);
    let (_, members) = app.get(&format!("/v1/segments/{id}/members")).await;
    assert_eq!(ids(&members), ["y1", "y2", "y3"]);
    let (status, body) = app
        .post(
            &format!("/v1/segments/{id}/members"),
            json!({"user_ids": [""]}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("/user_ids/0"))
    );

    let (_, dynamic) = app
        .post(
            "/v1/segments",
            json!({"name": "d", "rules": {"field": "a", "op": "exists"}}),
        )
        .await;
    let (status, body) = app
        .post(
            &format!(
                "/v1/segments/{}/members",
                dynamic["id"].as_str().unwrap_or("")
            ),
            json!({"user_ids": ["y1"]}),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "dynamic_segment")
    );
}

#[tokio::test]
async fn members_page_with_a_cursor_and_evaluate_as_of_an_instant() {
    let app = spawn_app().await;
    let users: Vec<Value> = (0..25).map(|i| json!({"user_id": format!("p{i:02}"), "name": "LOGIN", "timestamp": T0 - 2 * 86_400_000})).collect();
    app.post("/v1/events", json!({"events": users})).await;
    let (_, seg) = app.post("/v1/segments", json!({"name": "recent login", "rules": {"event": "LOGIN", "within": "1d", "op": "gte", "value": 1}})).await;
    let id = seg["id"].as_str().expect("id").to_owned();
    let (_, now) = app.get(&format!("/v1/segments/{id}/members")).await;
    assert_eq!(now["total_count"], 0, "the logins are two days old");

    let as_of = "2025-12-30T01:00:00Z";
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = app
            .get(&format!(
                "/v1/segments/{id}/members?limit=10&as_of={as_of}{cursor}"
            ))
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        assert_eq!(page["total_count"], 25);
        seen.extend(ids(&page));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(
        seen,
        (0..25).map(|i| format!("p{i:02}")).collect::<Vec<_>>()
    );
    let (status, body) = app
        .get(&format!("/v1/segments/{id}/members?as_of=tomorrow"))
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("/as_of"))
    );
}

#[tokio::test]
async fn ad_hoc_queries_take_rules_or_the_duckmart_payload() {
    let app = spawn_app().await;
    seed_users(&app).await;
    let (status, r) = app
        .post(
            "/v1/segments/query",
            json!({"rules": {"field": "ltv", "op": "gt", "value": 1000}, "include_sql": true}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(ids(&r), ["c"]);
    assert!(r["sql"]["sql"]
        .as_str()
        .is_some_and(|s| s.starts_with("SELECT u.user_id FROM users u WHERE")));
    let duck = json!({"user_filters": [{"field": "plan", "operator": "eq", "value": "premium"}],
        "event_filters": [{"event_name": "LOGIN", "operator": "gte", "count": 1}], "logic_operator": "OR", "limit": 2});
    let (status, r) = app.post("/v1/segments/query", duck).await;
    assert_eq!(status, StatusCode::OK, "{r}");
    assert_eq!(
        (ids(&r), r["total_count"].as_u64()),
        (vec!["a".to_owned(), "b".to_owned()], Some(3))
    );
    assert_eq!(r["filters_applied"]["logic_operator"], "OR");
    assert_eq!(
        r["filters_applied"]["event_filters"][0]["event_name"],
        "LOGIN"
    );
    let (status, body) = app
        .post(
            "/v1/segments/query",
            json!({"user_filters": [{"field": "age", "operator": "between", "value": 3}]}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["field"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("/user_filters/0/value")
        )
    );
}

#[tokio::test]
async fn every_example_runs_as_it_is() {
    let app = spawn_app().await;
    seed_users(&app).await;
    let (_, examples) = app.get("/v1/segments/examples").await;
    let list = examples["examples"].as_array().expect("examples");
    assert!(list.len() >= 5);
    for e in list {
        let (status, body) = app.post("/v1/segments/query", e["payload"].clone()).await;
        assert_eq!(status, StatusCode::OK, "{}: {body}", e["name"]);
    }
}

#[tokio::test]
async fn sql_is_shown_for_both_dialects_with_bound_values() {
    let app = spawn_app().await;
    let (_, seg) = app
        .post(
            "/v1/segments",
            json!({"name": "pune", "rules": {"field": "city", "op": "eq", "value": "Pune'; --"}}),
        )
        .await;
    let id = seg["id"].as_str().expect("id").to_owned();
    let (_, sqlite) = app.get(&format!("/v1/segments/{id}/sql")).await;
    assert!(sqlite["sql"]
        .as_str()
        .is_some_and(|s| s.contains("?1") && !s.contains("Pune")));
    assert!(sqlite["params"]
        .as_array()
        .is_some_and(|p| p.contains(&json!("Pune'; --"))));
    let (_, pg) = app
        .get(&format!("/v1/segments/{id}/sql?dialect=postgres"))
        .await;
    assert!(pg["sql"]
        .as_str()
        .is_some_and(|s| s.contains("$1") && s.contains("jsonb")));
    let (status, _) = app
        .get(&format!("/v1/segments/{id}/sql?dialect=oracle"))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn explain_shows_why_a_user_is_in_or_out() {
    let app = spawn_app().await;
    seed_users(&app).await;
    let (_, seg) = app
        .post("/v1/segments", json!({"name": "big spenders in pune", "rules": {"operator": "AND", "conditions": [
            {"field": "ltv", "op": "gt", "value": 1000}, {"field": "city", "op": "eq", "value": "Pune"}]}}))
        .await;
    let id = seg["id"].as_str().expect("id").to_owned();
    let (status, e) = app.get(&format!("/v1/users/c/segments/{id}/explain")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        e["in_segment"], false,
        "c's latest order is from HSR Layout"
    );
    assert_eq!(e["tree"]["children"][0]["actual"], 1200);
    assert_eq!(e["tree"]["children"][0]["result"], true);
    assert_eq!(e["tree"]["children"][1]["actual"], "HSR Layout");
    let (_, before) = app
        .get(&format!(
            "/v1/users/c/segments/{id}/explain?as_of=2025-12-31T12:00:00Z"
        ))
        .await;
    assert_eq!(
        before["tree"]["children"][1]["actual"], "Pune",
        "as_of ignores the later order"
    );
    assert_eq!(before["tree"]["children"][0]["actual"], 800);
    let (status, body) = app
        .get(&format!("/v1/users/nobody/segments/{id}/explain"))
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "user_not_found")
    );
}

#[tokio::test]
async fn populations_follow_attribute_changes_new_events_and_erasure() {
    let app = spawn_app().await;
    seed_users(&app).await;
    let (_, seg) = app
        .post(
            "/v1/segments",
            json!({"name": "young", "rules": {"field": "age", "op": "lt", "value": 30}}),
        )
        .await;
    let members = format!("/v1/segments/{}/members", seg["id"].as_str().expect("id"));
    assert_eq!(ids(&app.get(&members).await.1), ["a", "b"]);
    app.json(
        Method::PATCH,
        "/v1/users/a",
        Some(json!({"attributes": {"age": 50}})),
    )
    .await;
    assert_eq!(ids(&app.get(&members).await.1), ["b"]);
    app.json(Method::DELETE, "/v1/users/b", None).await;
    assert!(ids(&app.get(&members).await.1).is_empty());

    let (_, active) = app.post("/v1/segments", json!({"name": "active", "rules": {"event": "SEARCH", "within": "1h", "op": "gte", "value": 2}})).await;
    let active = format!(
        "/v1/segments/{}/members",
        active["id"].as_str().expect("id")
    );
    assert!(ids(&app.get(&active).await.1).is_empty());
    app.post("/v1/events", json!({"events": [{"user_id": "new", "name": "SEARCH"}, {"user_id": "new", "name": "SEARCH"}]})).await;
    assert_eq!(
        ids(&app.get(&active).await.1),
        ["new"],
        "new events are visible to the next query"
    );
    app.clock.advance(3_600_001);
    assert!(
        ids(&app.get(&active).await.1).is_empty(),
        "and leave the window as time passes"
    );
}

#[tokio::test]
async fn bad_query_options_and_member_inputs_are_clear_4xx() {
    let app = spawn_app().await;
    let rule = json!({"field": "age", "op": "exists"});
    for (body, field) in [
        (json!({"rules": rule, "evaluator": "duckdb"}), "/evaluator"),
        (json!({"rules": rule, "include_sql": "yes"}), "/include_sql"),
        (json!({"rules": rule, "limit": 0}), "/limit"),
        (json!({"rules": rule, "limit": 20_000}), "/limit"),
        (json!({"rules": rule, "limit": -1}), "/limit"),
        (json!({"rules": rule, "cursor": "not-hex"}), "/cursor"),
        (json!({"rules": rule, "extra": 1}), "/extra"),
    ] {
        let (status, err) = app.post("/v1/segments/query", body.clone()).await;
        assert_eq!(
            (status, err["error"]["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some(field)),
            "{body}: {err}"
        );
    }
    let (_, seg) = app
        .post("/v1/segments", json!({"name": "s", "user_ids": ["a"]}))
        .await;
    let id = seg["id"].as_str().expect("id").to_owned();
    for path in [
        format!("/v1/segments/{id}/members?limit=0"),
        format!("/v1/segments/{id}/members?cursor=zz"),
        format!("/v1/segments/{id}/members?nope=1"),
    ] {
        let (status, err) = app.get(&path).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{path}: {err}");
        error_code(&err);
    }
    let upload = app
        .client
        .put(app.url(&format!("/v1/segments/{id}/members")))
        .bearer_auth(ADMIN)
        .header("content-type", "text/plain")
        .body(vec![0xff, 0xfe, b'\n'])
        .send()
        .await
        .expect("upload");
    assert_eq!(upload.status(), StatusCode::BAD_REQUEST);
    let (status, err) = app
        .json(
            Method::PATCH,
            &format!("/v1/segments/{id}"),
            Some(json!({"description": 5})),
        )
        .await;
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("/description"))
    );
    let (status, err) = app
        .json(
            Method::PUT,
            &format!("/v1/segments/{id}"),
            Some(json!({"name": "s", "user_ids": ["b"]})),
        )
        .await;
    assert_eq!(
        (status, err["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("/user_ids"))
    );
    let (status, err) = app.get("/v1/segments/seg_missing/members").await;
    assert_eq!(
        (status, error_code(&err)),
        (StatusCode::NOT_FOUND, "segment_not_found")
    );
}

/// An OR of `n` attribute leaves (`n + 1` rule nodes).
fn or_of_leaves(n: usize) -> Value {
    let leaves: Vec<Value> = (0..n)
        .map(|i| json!({"field": "plan", "op": "eq", "value": format!("p{i}")}))
        .collect();
    json!({"operator": "OR", "conditions": leaves})
}

#[tokio::test]
async fn a_reference_graph_over_the_budget_is_refused_when_written() {
    let app = spawn_app().await;
    // A chain longer than MAX_REF_CHAIN (8).
    let (_, base) = app
        .post(
            "/v1/segments",
            json!({"name": "c0", "rules": {"plan": "pro"}}),
        )
        .await;
    let mut last = base["id"].as_str().expect("id").to_owned();
    for level in 1..=8 {
        let (status, seg) = app
            .post(
                "/v1/segments",
                json!({"name": format!("c{level}"), "rules": {"segment": last}}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{seg}");
        last = seg["id"].as_str().expect("id").to_owned();
    }
    let (status, body) = app
        .post(
            "/v1/segments",
            json!({"name": "c9", "rules": {"segment": last}}),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "reference_graph_too_large"
        )
    );
    assert_eq!(body["error"]["field"], "/rules", "{body}");

    // Ten segments of 990 nodes and one that refers to all of them: 9 911
    // nodes, within the 10 000 budget.
    let mut wide = Vec::new();
    for i in 0..10 {
        let (status, seg) = app
            .post(
                "/v1/segments",
                json!({"name": format!("wide {i}"), "rules": or_of_leaves(989)}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{seg}");
        wide.push(seg["id"].as_str().expect("id").to_owned());
    }
    let all: Vec<Value> = wide.iter().map(|id| json!({"segment": id})).collect();
    let (status, top) = app
        .post(
            "/v1/segments",
            json!({"name": "top", "rules": {"operator": "OR", "conditions": all}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{top}");
    let top_id = top["id"].as_str().expect("id").to_owned();
    // Growing one of them grows top's graph past the budget: refused,
    // naming top, and nothing changes.
    let (_, extra) = app
        .post(
            "/v1/segments",
            json!({"name": "extra", "rules": or_of_leaves(499)}),
        )
        .await;
    let extra_id = extra["id"].as_str().expect("id").to_owned();
    let (status, body) = app
        .json(
            Method::PATCH,
            &format!("/v1/segments/{}", wide[0]),
            Some(json!({"rules": {"operator": "AND", "conditions": [{"segment": extra_id}, or_of_leaves(900)]}})),
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "reference_graph_too_large"
        ),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains(&top_id),
        "{body}"
    );
    let (_, unchanged) = app.get(&format!("/v1/segments/{}", wide[0])).await;
    assert_eq!(unchanged["version"], 1, "{unchanged}");
}

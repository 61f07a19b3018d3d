//! Scale-out, end to end: a Python producer (kafka-python) sends events to
//! a 4-partition topic on a real Kafka-protocol broker (tansu); two
//! Stratify nodes on one PostgreSQL consume them as one consumer group. One
//! node is SIGKILLed mid-stream and the other takes its partitions over;
//! later a new node joins mid-stream and takes some back. Nothing is lost or
//! counted twice, and memberships and assignments equal a single-node run
//! (SQLite, the same events over HTTP). Needs the services scripts/test.sh
//! starts (STRATIFY_TEST_POSTGRES_URL, STRATIFY_TEST_KAFKA_BROKERS): a test
//! that cannot find them fails, it never skips.

use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "cluster-admin-key";
const USERS: usize = 240;
const EVENTS: usize = 6_000;
const PARTITIONS: i32 = 4;
/// Records that are not events: rejected and counted, never blocking a partition.
const BAD_RECORDS: [&str; 3] = ["not json", "[1, 2]", r#"{"name": "LOGIN"}"#];

struct Node {
    child: Child,
    url: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run scripts/test.sh, which starts PostgreSQL and a Kafka broker")
    })
}

fn python() -> String {
    std::env::var("STRATIFY_PYTHON").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/pyenv/bin/python").to_owned()
    })
}

fn produce(args: &[&str]) -> String {
    let out = Command::new(python())
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/cluster/produce.py"
        ))
        .args(args)
        .output()
        .expect("run the Python producer (scripts/test.sh installs kafka-python)");
    assert!(
        out.status.success(),
        "producer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

async fn start(name: &str, args: &[String], log_dir: &std::path::Path) -> Node {
    let port = free_port();
    let log = std::fs::File::create(log_dir.join(format!("{name}.log"))).expect("log");
    let child = Command::new(env!("CARGO_BIN_EXE_stratify"))
        .arg("serve")
        .arg("--addr")
        .arg(format!("127.0.0.1:{port}"))
        .args(args)
        .env("STRATIFY_ADMIN_KEY", KEY)
        // The webhook test's receiver listens on loopback.
        .env("STRATIFY_WEBHOOK_ALLOW_PRIVATE", "true")
        .env("RUST_LOG", "warn,stratify_kafka=info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn stratify");
    let node = Node {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if reqwest::get(format!("{}/health", node.url))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return node;
        }
        assert!(
            Instant::now() < deadline,
            "{name} did not start; see its log"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn call(method: reqwest::Method, url: String, body: Option<Value>) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut req = client.request(method, &url).header("X-API-Key", KEY);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn get(node: &Node, path: &str) -> Value {
    let (s, v) = call(reqwest::Method::GET, format!("{}{path}", node.url), None).await;
    assert_eq!(s, 200, "GET {path}: {v}");
    v
}

async fn post(node: &Node, path: &str, body: Value) -> Value {
    let (s, v) = call(
        reqwest::Method::POST,
        format!("{}{path}", node.url),
        Some(body),
    )
    .await;
    assert!(s == 200 || s == 201, "POST {path}: {s} {v}");
    v
}

/// Segments by name, and the one experiment's id.
async fn configure(node: &Node) -> BTreeMap<String, String> {
    let rules = [
        (
            "frequent",
            json!({"event": "order_placed", "op": "gte", "value": 17}),
        ),
        (
            "big_spenders",
            json!({"event": "order_placed", "agg": "sum", "property": "amount", "op": "gt", "value": 300}),
        ),
        (
            "active_buyers",
            json!({"operator": "AND", "conditions": [
            {"event": "LOGIN", "op": "gte", "value": 3},
            {"event": "order_placed", "op": "gte", "value": 5}]}),
        ),
    ];
    let mut ids = BTreeMap::new();
    for (name, rule) in rules {
        let s = post(node, "/v1/segments", json!({"name": name, "rules": rule})).await;
        ids.insert(name.to_owned(), s["id"].as_str().expect("id").to_owned());
    }
    let e = post(
        node,
        "/v1/experiments",
        json!({"key": "checkout", "name": "Checkout", "seed": "cluster", "segment_ids": [ids["frequent"]],
               "variants": [{"key": "a", "weight": 50, "is_control": true}, {"key": "b", "weight": 50}]}),
    )
    .await;
    let id = e["id"].as_str().expect("id");
    post(node, &format!("/v1/experiments/{id}/start"), json!(null)).await;
    for metric in [
        json!({"key": "spend", "kind": "sum", "event": "purchase", "property": "amount"}),
        json!({"key": "bought", "kind": "conversion", "event": "purchase", "window": "7d"}),
    ] {
        post(node, "/v1/metrics", metric).await;
    }
    let everyone = post(
        node,
        "/v1/experiments",
        json!({"key": "everyone", "name": "Everyone", "seed": "cluster",
               "variants": [{"key": "a", "weight": 50, "is_control": true}, {"key": "b", "weight": 50}]}),
    )
    .await;
    let everyone = everyone["id"].as_str().expect("id").to_owned();
    post(
        node,
        &format!("/v1/experiments/{everyone}/start"),
        json!(null),
    )
    .await;
    ids.insert("everyone".to_owned(), everyone);
    ids
}

/// Serves every user the experiments (their exposures), on `nodes` in turn.
async fn expose(nodes: &[&Node]) {
    for u in 0..USERS {
        let node = nodes[u % nodes.len()];
        let v = get(node, &format!("/v1/users/user-{u:03}/experiments")).await;
        assert!(
            v["experiments"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e["key"] == "everyone")),
            "{v}"
        );
    }
}

/// The `everyone` experiment's per-variant figures for both metrics.
async fn results(node: &Node, experiment: &str) -> Vec<(String, String, Value, Value, Value, f64)> {
    let r = get(
        node,
        &format!("/v1/experiments/{experiment}/results?metric=spend,bought"),
    )
    .await;
    let mut out = Vec::new();
    for m in r["metrics"].as_array().expect("metrics") {
        for v in m["variants"].as_array().expect("variants") {
            out.push((
                m["metric"]["key"].as_str().unwrap_or_default().to_owned(),
                v["key"].as_str().unwrap_or_default().to_owned(),
                v["users"].clone(),
                v["n"].clone(),
                v["total"].clone(),
                v["mean"].as_f64().unwrap_or(-1.0),
            ));
        }
    }
    out
}

/// The stream. A tenth are purchases at `purchases_from` (after every
/// user's exposure to the `everyone` experiment) and later: what its
/// results count.
fn events(purchases_from: i64) -> Vec<Value> {
    (0..EVENTS)
        .map(|i| {
            let user = format!("user-{:03}", (i * 7 + i / 13) % USERS);
            let mut e = if i % 10 == 5 {
                json!({"user_id": user, "name": "purchase", "timestamp": purchases_from + i as i64,
                       "properties": {"amount": (i % 37) as f64 + 0.5}})
            } else if i % 3 == 0 {
                json!({"user_id": user, "name": "LOGIN", "timestamp": 1_700_000_000_000i64 + i as i64})
            } else {
                json!({"user_id": user, "name": "order_placed", "timestamp": 1_700_000_000_000i64 + i as i64,
                       "properties": {"amount": (i % 37) as f64 + 0.5}})
            };
            // A third carry no event id: the consumer derives one from the
            // record's offset, the same on every delivery.
            if i % 3 != 1 {
                e["event_id"] = json!(format!("ev-{i}"));
            }
            e
        })
        .collect()
}

async fn members(node: &Node, segment: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/segments/{segment}/members?limit=1000&cursor={c}"),
            None => format!("/v1/segments/{segment}/members?limit=1000"),
        };
        let page = get(node, &path).await;
        for u in page["user_ids"].as_array().expect("ids") {
            out.insert(u.as_str().expect("id").to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

async fn variants(node: &Node) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for u in 0..USERS {
        let user = format!("user-{u:03}");
        let v = get(node, &format!("/v1/users/{user}/experiments")).await;
        for e in v["experiments"].as_array().expect("experiments") {
            if e["key"] == "checkout" {
                out.insert(user.clone(), e["variant"].as_str().unwrap_or("").to_owned());
            }
        }
    }
    out
}

/// Waits until the shared log holds `n` events; fails after a minute.
async fn wait_count(pg: &tokio_postgres::Client, n: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(pg).await < n as i64 {
        assert!(
            Instant::now() < deadline,
            "{what}: {} of {n} events stored",
            count(pg).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Which node consumes each partition, as the ingest status shows it.
async fn owners(node: &Node) -> BTreeMap<i64, String> {
    let status = get(node, "/v1/ingest/status").await;
    status["kafka_partitions"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|p| {
            (
                p["partition"].as_i64().expect("partition"),
                p["node"].as_str().expect("node").to_owned(),
            )
        })
        .collect()
}

/// Waits until exactly `nodes` consume the topic's partitions.
async fn wait_owners(node: &Node, nodes: &[&str]) {
    let want: BTreeSet<String> = nodes.iter().map(|n| n.to_string()).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = owners(node).await;
        if now.len() == PARTITIONS as usize
            && now.values().cloned().collect::<BTreeSet<_>>() == want
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "partitions not consumed by {want:?}: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn count(pg: &tokio_postgres::Client) -> i64 {
    pg.query_one("SELECT count(*) FROM events", &[])
        .await
        .expect("count")
        .get(0)
}

/// A segment's open memberships in the shared change log.
async fn cluster_members(pg: &tokio_postgres::Client, segment: &str) -> BTreeSet<String> {
    let sql = "SELECT user_id FROM (SELECT DISTINCT ON (user_id) user_id, entered FROM changes \
               WHERE segment_id = $1 ORDER BY user_id, seq DESC) t WHERE entered";
    pg.query(sql, &[&segment])
        .await
        .expect("members")
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_consume_kafka_lose_nothing_count_nothing_twice_and_match_one_node() {
    let brokers = env("STRATIFY_TEST_KAFKA_BROKERS");
    let pg_url = stratify_store::testing::fresh_postgres().await;
    let logs = tempfile::tempdir().expect("dir");
    let tag = format!("{}-{}", std::process::id(), free_port());
    let (events_topic, changes_topic) = (format!("events-{tag}"), format!("changes-{tag}"));
    produce(&[
        &brokers,
        &events_topic,
        &PARTITIONS.to_string(),
        "-",
        "create",
    ]);
    produce(&[&brokers, &changes_topic, "1", "-", "create"]);
    let cluster_args: Vec<String> = [
        "--postgres-url",
        &pg_url,
        "--kafka-brokers",
        &brokers,
        "--kafka-group",
        &format!("g-{tag}"),
        "--kafka-events-topic",
        &events_topic,
        "--kafka-changes-topic",
        &changes_topic,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let with_id = |id: &str| {
        let mut a = cluster_args.clone();
        a.extend(["--node-id".to_owned(), id.to_owned()]);
        a
    };
    let (hook_url, seen) = webhook_receiver().await;

    // Node b starts first, alone: it takes the changes relay's lease and the
    // webhook's, so the node killed below is the one relaying and the one
    // delivering.
    let mut b = start("node-b", &with_id("b"), logs.path()).await;
    let (pg, conn) = tokio_postgres::connect(&pg_url, tokio_postgres::NoTls)
        .await
        .expect("pg");
    tokio::spawn(conn);
    let holder = |name: String| {
        let pg = &pg;
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let rows = pg
                    .query("SELECT holder FROM leases WHERE name = $1", &[&name])
                    .await
                    .expect("leases");
                if let Some(r) = rows.first() {
                    return r.get::<_, String>(0);
                }
                assert!(Instant::now() < deadline, "nobody holds the lease {name}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(holder(format!("changes-relay:{changes_topic}")).await, "b");
    let mut ids = configure(&b).await;
    let everyone = ids.remove("everyone").expect("everyone");
    let hook = post(
        &b,
        "/v1/webhooks",
        json!({"url": hook_url, "segment_ids": ids.values().collect::<Vec<_>>()}),
    )
    .await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_eq!(holder(format!("webhook:{hook}")).await, "b");
    let a = start("node-a", &with_id("a"), logs.path()).await;

    // Configuration made on one node is served by the other within a second.
    let made = Instant::now();
    let (s, late) = call(
        reqwest::Method::POST,
        format!("{}/v1/segments", a.url),
        Some(json!({"name": "late", "rules": {"event": "LOGIN", "op": "gte", "value": 1}})),
    )
    .await;
    assert_eq!(s, 201);
    let late = late["id"].as_str().expect("id").to_owned();
    let vip = post(
        &a,
        "/v1/segments",
        json!({"name": "vip", "rules": {"field": "plan", "op": "eq", "value": "vip"}}),
    )
    .await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    loop {
        let list = get(&b, "/v1/segments").await;
        if list["segments"]
            .as_array()
            .expect("list")
            .iter()
            .any(|s| s["name"] == "late")
        {
            break;
        }
        assert!(
            made.elapsed() < Duration::from_secs(1),
            "node b did not see the new segment within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The stream, in three parts: both nodes consume the first; node b is
    // SIGKILLed while the second is being produced and consumed; a new node b
    // joins while the third is.
    // The single-node run (SQLite, the same configuration, the same events
    // over HTTP at the end) starts now: every user is exposed to the
    // `everyone` experiment on both before any purchase.
    let dir = tempfile::tempdir().expect("dir");
    let one = start(
        "single",
        &["--data-dir".to_owned(), dir.path().display().to_string()],
        logs.path(),
    )
    .await;
    let mut one_ids = configure(&one).await;
    let one_everyone = one_ids.remove("everyone").expect("everyone");
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&b, &format!("/v1/experiments/{everyone}")).await["status"] != "running" {
        assert!(Instant::now() < deadline, "node b never saw the experiment");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    expose(&[&a, &b]).await;
    expose(&[&one]).await;
    let all = events(now_ms() + 1_000);
    let third = EVENTS / 3;
    let part = |name: &str, from: usize, to: usize, bad: &[&str]| {
        let mut text: String = all[from..to].iter().map(|e| format!("{e}\n")).collect();
        for line in bad {
            text.push_str(line);
            text.push('\n');
        }
        let file = logs.path().join(name);
        std::fs::write(&file, text).expect("write");
        let (brokers, topic) = (brokers.clone(), events_topic.clone());
        let expect = (to - from + bad.len()).to_string();
        // In a thread: the test goes on while the producer sends.
        std::thread::spawn(move || {
            let acked = produce(&[&brokers, &topic, "4", file.to_str().expect("path")]);
            assert_eq!(acked, expect, "records acknowledged by the broker");
        })
    };
    part("part1.jsonl", 0, third, &[]).join().expect("producer");
    wait_count(&pg, third, "part 1").await;
    // Both nodes own partitions before one is killed.
    wait_owners(&a, &["a", "b"]).await;

    // Results are read on both nodes all through part 2 (node b dies on
    // the way): node a answers every time.
    let reading = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let reader = {
        let reading = reading.clone();
        let urls = [a.url.clone(), b.url.clone()];
        let path = format!("/v1/experiments/{everyone}/results?metric=spend,bought");
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut on_a = Vec::new();
            while reading.load(std::sync::atomic::Ordering::Relaxed) {
                for (i, url) in urls.iter().enumerate() {
                    // Node b's reads fail once it is killed; node a's never.
                    let status = client
                        .get(format!("{url}{path}"))
                        .header("X-API-Key", KEY)
                        .send()
                        .await
                        .map(|r| r.status().as_u16());
                    if i == 0 {
                        on_a.push(status.map_err(|e| e.to_string()));
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            on_a
        })
    };
    let half = third + third / 2;
    let producer = part("part2a.jsonl", third, half, &[]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(&pg).await < (third + third / 10) as i64 {
        assert!(Instant::now() < deadline, "part 2 not consumed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(holder(format!("changes-relay:{changes_topic}")).await, "b");
    assert_eq!(holder(format!("webhook:{hook}")).await, "b");
    assert!(
        !seen.lock().expect("lock").is_empty(),
        "node b is delivering when it is killed"
    );
    b.child.kill().expect("SIGKILL node b");
    b.child.wait().expect("reap node b");
    let killed = Instant::now();
    let killed_at = count(&pg).await;
    producer.join().expect("producer");
    // Sent after the kill, to every partition: node b's can only be
    // consumed once node a has taken them over (when b's session times out).
    part("part2b.jsonl", half, 2 * third, &[])
        .join()
        .expect("producer");
    wait_count(&pg, 2 * third, "part 2, after node b was killed").await;
    wait_owners(&a, &["a"]).await;
    reading.store(false, std::sync::atomic::Ordering::Relaxed);
    let on_a = reader.await.expect("reader");
    assert!(
        on_a.len() > 5 && on_a.iter().all(|s| s == &Ok(200)),
        "results on node a while node b died: {on_a:?}"
    );
    eprintln!(
        "node b killed with {killed_at} of {} events stored; node a had them all {:?} later",
        2 * third,
        killed.elapsed()
    );

    // A new node joins mid-stream and gets partitions back.
    let b = start("node-b2", &with_id("b"), logs.path()).await;
    let producer = part("part3.jsonl", 2 * third, EVENTS, &BAD_RECORDS);
    wait_count(&pg, EVENTS, "part 3, with node b back").await;
    producer.join().expect("producer");
    wait_owners(&b, &["a", "b"]).await;

    // Nothing lost, nothing twice: every event exactly once in the log...
    let row = pg
        .query_one(
            "SELECT count(*), count(DISTINCT (uid, event_id)) FROM events",
            &[],
        )
        .await
        .expect("count");
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, i64>(1)),
        (EVENTS as i64, EVENTS as i64)
    );
    // ...every partition consumed to its end, and shown by any node.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = get(&b, "/v1/ingest/status").await;
        let parts = status["kafka_partitions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let done: i64 = parts
            .iter()
            .map(|p| p["committed_offset"].as_i64().unwrap_or(0))
            .sum();
        let records = (EVENTS + BAD_RECORDS.len()) as i64;
        if parts.len() == PARTITIONS as usize
            && done == records
            && parts.iter().all(|p| p["lag"] == 0)
        {
            let kafka = &status["sources"][2];
            assert_eq!(kafka["source"], "kafka");
            assert_eq!(kafka["rejected"], BAD_RECORDS.len(), "{kafka}");
            // Records node b read but never committed are read again by
            // their next owner: counted as received twice, stored once.
            let again = kafka["duplicates"].as_i64().expect("duplicates");
            assert_eq!(kafka["received"], records + again, "{kafka}");
            assert_eq!(kafka["accepted"], EVENTS, "{kafka}");
            assert!(kafka["last_error"].is_string(), "{kafka}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "partitions not caught up: {parts:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // ...and each (segment, user) entered once (these rules only grow).
    let twice = pg
        .query_one(
            "SELECT count(*) FROM (SELECT 1 FROM changes GROUP BY segment_id, user_id HAVING count(*) > 1) t",
            &[],
        )
        .await
        .expect("changes")
        .get::<_, i64>(0);
    assert_eq!(twice, 0, "a membership change was recorded twice");

    // The single-node run gets the same events.
    for chunk in all.chunks(500) {
        post(&one, "/v1/events", json!({"events": chunk})).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for (name, id) in &ids {
        let expected = members(&one, &one_ids[name]).await;
        assert!(
            !expected.is_empty(),
            "{name} is empty: the test data must fill it"
        );
        loop {
            let live = cluster_members(&pg, id).await;
            if live == expected {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: cluster {} vs single node {}",
                live.len(),
                expected.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Either node answers for every user, whoever owns them.
        assert_eq!(members(&b, id).await, expected, "{name} listed by node b");
        let seg = get(&a, &format!("/v1/segments/{id}")).await;
        assert_eq!(seg["size"], expected.len(), "{name} size on node a");
    }
    // Assignments: the same users in the experiment, with the same variants,
    // served by either node.
    let single = variants(&one).await;
    assert!(single.len() > 10, "too few users in the experiment");
    assert_eq!(variants(&b).await, single, "node b");
    assert_eq!(variants(&a).await, single, "node a");
    // Results: the same on every node as on the single node.
    let expected = results(&one, &one_everyone).await;
    assert_eq!(expected.len(), 4, "{expected:?}");
    assert!(
        expected
            .iter()
            .all(|r| r.4.as_f64().is_some_and(|t| t > 0.0)),
        "{expected:?}"
    );
    assert_eq!(results(&a, &everyone).await, expected, "node a");
    assert_eq!(results(&b, &everyone).await, expected, "node b (new)");

    // The webhook: every change of its segments arrived, at least once and
    // at most twice (one crash: the batch node b was sending may be sent
    // again by node a, which took the webhook over).
    let segments: Vec<String> = ids.values().cloned().collect();
    let logged: BTreeSet<i64> = pg
        .query(
            "SELECT seq FROM changes WHERE segment_id = ANY($1)",
            &[&segments],
        )
        .await
        .expect("changes")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let delivered: BTreeSet<i64> = seen.lock().expect("lock").iter().copied().collect();
        if delivered.is_superset(&logged) {
            assert!(
                delivered.is_subset(&logged),
                "delivered changes nobody logged"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} changes delivered",
            delivered.intersection(&logged).count(),
            logged.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut times: BTreeMap<i64, usize> = BTreeMap::new();
    for s in seen.lock().expect("lock").iter() {
        *times.entry(*s).or_default() += 1;
    }
    let thrice: Vec<_> = times.iter().filter(|(_, &n)| n > 2).collect();
    assert!(
        thrice.is_empty(),
        "changes delivered more than twice: {thrice:?}"
    );
    eprintln!(
        "webhook: {} changes, {} delivered twice",
        logged.len(),
        times.values().filter(|&&n| n == 2).count()
    );

    // Writes over HTTP to the node that does not own the user reach the
    // owner's live state: events through the topic, attributes by a refresh.
    let owners = owners(&a).await;
    let guest = (0..)
        .map(|i| format!("guest-{i}"))
        .find(|u| owners[&i64::from(stratify_kafka::partition_of(u, PARTITIONS))] == "b")
        .expect("a user of node b");
    let (s, v) = call(
        reqwest::Method::POST,
        format!("{}/v1/events", a.url),
        Some(json!({"events": [{"user_id": guest, "name": "LOGIN"}, {"user_id": "x", "name": 7}]})),
    )
    .await;
    assert_eq!((s, &v["accepted"]), (200, &json!(1)), "{v}");
    assert_eq!(v["rejected"][0]["index"], 1, "{v}");
    let (s, v) = call(
        reqwest::Method::PUT,
        format!("{}/v1/users/{guest}", a.url),
        Some(json!({"attributes": {"plan": "vip"}})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    for segment in [&late, &vip] {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cluster_members(&pg, segment).await.contains(&guest) {
            assert!(
                Instant::now() < deadline,
                "{guest}, written on node a, is not in {segment} on its owner b"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(members(&a, &vip).await.contains(&guest));
    let (s, v) = call(
        reqwest::Method::PATCH,
        format!("{}/v1/users/{guest}", a.url),
        Some(json!({"attributes": {"plan": "free"}})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while cluster_members(&pg, &vip).await.contains(&guest) {
        assert!(
            Instant::now() < deadline,
            "{guest} did not leave vip on node b"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Every membership change in the shared log went out on Kafka, keyed by
    // user id, although the node relaying them was killed on the way (at
    // least once: a page may be sent twice, never skipped).
    let logged: i64 = pg
        .query_one("SELECT count(*) FROM changes", &[])
        .await
        .expect("changes")
        .get(0);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = produce(&[&brokers, &changes_topic, "1", "-", "count"]);
        let (records, seqs) = out.split_once(' ').expect("two numbers");
        let (records, seqs): (i64, i64) = (records.parse().expect("n"), seqs.parse().expect("n"));
        if seqs == logged {
            assert!(records >= seqs);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{seqs} of {logged} membership changes on the changes topic"
        );
    }
}

/// A throwaway cluster for one test: its own database and topics, and the
/// arguments that start a node of it.
struct Cluster {
    brokers: String,
    pg_url: String,
    events_topic: String,
    changes_topic: String,
    group: String,
    logs: tempfile::TempDir,
    pg: tokio_postgres::Client,
}

impl Cluster {
    async fn new(name: &str) -> Self {
        let brokers = env("STRATIFY_TEST_KAFKA_BROKERS");
        let pg_url = stratify_store::testing::fresh_postgres().await;
        let tag = format!("{name}-{}-{}", std::process::id(), free_port());
        let (events_topic, changes_topic) = (format!("{tag}-events"), format!("{tag}-changes"));
        produce(&[
            &brokers,
            &events_topic,
            &PARTITIONS.to_string(),
            "-",
            "create",
        ]);
        produce(&[&brokers, &changes_topic, "1", "-", "create"]);
        let (pg, conn) = tokio_postgres::connect(&pg_url, tokio_postgres::NoTls)
            .await
            .expect("pg");
        tokio::spawn(conn);
        Self {
            brokers,
            pg_url,
            events_topic,
            changes_topic,
            group: format!("g-{tag}"),
            logs: tempfile::tempdir().expect("dir"),
            pg,
        }
    }

    async fn node(&self, id: &str) -> Node {
        let args: Vec<String> = [
            "--postgres-url",
            &self.pg_url,
            "--kafka-brokers",
            &self.brokers,
            "--kafka-group",
            &self.group,
            "--kafka-events-topic",
            &self.events_topic,
            "--kafka-changes-topic",
            &self.changes_topic,
            "--node-id",
            id,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        start(&format!("node-{id}"), &args, self.logs.path()).await
    }

    /// Writes events to a file and produces them (`mode`: `wrong` puts each
    /// on the partition after its user's); returns how many were acknowledged.
    fn produce(&self, name: &str, events: &[Value], mode: Option<&str>) -> String {
        let file = self.logs.path().join(name);
        let text: String = events.iter().map(|e| format!("{e}\n")).collect();
        std::fs::write(&file, text).expect("write");
        let path = file.to_str().expect("path").to_owned();
        let mut args = vec![
            self.brokers.as_str(),
            self.events_topic.as_str(),
            "4",
            path.as_str(),
        ];
        args.extend(mode);
        produce(&args)
    }

    /// A few records on the right partitions, so that every consumer reports
    /// its partitions; waits until `nodes` own them all.
    async fn warm_up(&self, node: &Node, nodes: &[&str]) {
        let events: Vec<Value> = (0..40)
            .map(|i| json!({"user_id": format!("warm-{i}"), "name": "PING", "timestamp": 1_700_000_000_000i64}))
            .collect();
        self.produce("warmup.jsonl", &events, None);
        wait_count(&self.pg, 40, "warm-up").await;
        wait_owners(node, nodes).await;
    }
}

/// A webhook receiver on loopback: its URL, and every change seq it was
/// sent, once per delivery.
async fn webhook_receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<i64>>>) {
    let seen: std::sync::Arc<std::sync::Mutex<Vec<i64>>> = Default::default();
    let sink = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::Json<Value>| {
            let sink = sink.clone();
            async move {
                let seqs = body["changes"].as_array().map(|c| {
                    c.iter()
                        .filter_map(|c| c["seq"].as_i64())
                        .collect::<Vec<_>>()
                });
                sink.lock().expect("lock").extend(seqs.unwrap_or_default());
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

/// Creates the segment of users with at least one LOGIN; returns its id.
async fn login_segment(node: &Node, name: &str) -> String {
    post(
        node,
        "/v1/segments",
        json!({"name": name, "rules": {"event": "LOGIN", "op": "gte", "value": 1}}),
    )
    .await["id"]
        .as_str()
        .expect("id")
        .to_owned()
}

/// Creates an experiment and starts it; returns its id.
async fn running_experiment(node: &Node, body: Value) -> String {
    let id = post(node, "/v1/experiments", body).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    post(node, &format!("/v1/experiments/{id}/start"), json!(null)).await;
    id
}

/// Users named `<prefix>-<n>` whose partition `node` consumes.
fn users_of<'a>(
    owners: &'a BTreeMap<i64, String>,
    node: &'a str,
    prefix: &'a str,
) -> impl Iterator<Item = String> + 'a {
    (0..)
        .map(move |i| format!("{prefix}-{i}"))
        .filter(move |u| {
            owners.get(&i64::from(stratify_kafka::partition_of(u, PARTITIONS)))
                == Some(&node.to_owned())
        })
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as i64
}

/// Issue 19, "stale answers on a non-owner node": a node that does not own a
/// user caches the user's experiments answer; when the owner applies an event
/// that moves the user into a targeted segment, the other node's answer
/// follows within a second (it used to keep the old one for the cache's five
/// minutes, because following a membership did not touch freshness).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_owner_node_drops_an_answer_the_owner_made_stale() {
    let cluster = Cluster::new("stale").await;
    let a = cluster.node("a").await;
    let b = cluster.node("b").await;
    cluster.warm_up(&a, &["a", "b"]).await;
    let owners = owners(&a).await;
    let segment = login_segment(&a, "loggers").await;
    let experiment = running_experiment(
        &a,
        json!({"key": "stale", "name": "Stale", "segment_ids": [segment],
               "variants": [{"key": "only", "weight": 100, "is_control": true}]}),
    )
    .await;
    for (owner, reader) in [("a", &b), ("b", &a)] {
        let owner_node = if owner == "a" { &a } else { &b };
        let prefix = format!("stale-{owner}");
        let user = users_of(&owners, owner, &prefix)
            .next()
            .expect("a user of each node");
        // The reader knows the running experiment, and caches the answer
        // "not targeted" for a user it does not own.
        let deadline = Instant::now() + Duration::from_secs(5);
        while call(
            reqwest::Method::GET,
            format!("{}/v1/experiments/{experiment}", reader.url),
            None,
        )
        .await
        .1["status"]
            != "running"
        {
            assert!(
                Instant::now() < deadline,
                "the experiment never reached the other node"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let path = format!("/v1/users/{user}/experiments");
        // A configuration reload between two reads (starting an experiment
        // moves the version more than once) makes the second a recomputation:
        // read until the answer comes from the cache.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let answer = get(reader, &path).await;
            assert_eq!(answer["experiments"], json!([]));
            if answer["source"] == "cache" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the reader never cached the answer: {answer}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The owner applies the event that moves the user into the segment.
        let now = now_ms();
        post(
            owner_node,
            "/v1/events",
            json!({"user_id": user, "name": "LOGIN", "timestamp": now}),
        )
        .await;
        let applied = Instant::now();
        loop {
            let answer = get(reader, &path).await;
            if answer["experiments"]
                .as_array()
                .is_some_and(|e| e.len() == 1)
            {
                assert_eq!(answer["experiments"][0]["variant"], "only");
                break;
            }
            assert!(
                applied.elapsed() < Duration::from_secs(2),
                "node {} still serves the stale answer for {user} owned by {owner}: {answer}",
                if owner == "a" { "b" } else { "a" }
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    // Each node reports the segment's size across the cluster (its own users
    // and the ones it follows): the two users above, nobody else.
    for node in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let size = get(node, &format!("/v1/segments/{segment}")).await["size"].clone();
            if size == 2 {
                break;
            }
            assert!(Instant::now() < deadline, "cluster size {size}, want 2");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// Issue 19, "webhooks multiplied": with two nodes, each membership change
/// is POSTed once (the holder of the webhook's lease delivers), also by a
/// node that started after the webhook was made; a webhook deleted on one
/// node stops on every node within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_deliver_each_webhook_batch_once_and_stop_together() {
    let cluster = Cluster::new("hook").await;
    let (hook_url, seen) = webhook_receiver().await;

    let a = cluster.node("a").await;
    let segment = login_segment(&a, "hooked").await;
    let hook = post(
        &a,
        "/v1/webhooks",
        json!({"url": hook_url, "segment_ids": [segment], "secret": "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3"}),
    )
    .await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    // Node b starts after the webhook exists (it used to deliver it too).
    let b = cluster.node("b").await;
    let pg = &cluster.pg;
    let now = now_ms();
    let login = |from: usize, to: usize| -> Value {
        json!({"events": (from..to)
            .map(|i| json!({"user_id": format!("hook-user-{i}"), "name": "LOGIN", "timestamp": now}))
            .collect::<Vec<_>>()})
    };
    post(&a, "/v1/events", login(0, 30)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster_members(pg, &segment).await.len() < 30 {
        assert!(
            Instant::now() < deadline,
            "the 30 entries never reached the change log"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let distinct: BTreeSet<i64> = seen.lock().expect("lock").iter().copied().collect();
        if distinct.len() >= 30 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of 30 changes delivered",
            distinct.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Time for a second deliverer, if there were one, to POST again (an
    // idle deliverer polls the log at least every 5 s).
    tokio::time::sleep(Duration::from_millis(6_000)).await;
    let delivered = seen.lock().expect("lock").clone();
    let distinct: BTreeSet<i64> = delivered.iter().copied().collect();
    assert_eq!(
        (delivered.len(), distinct.len()),
        (30, 30),
        "each change is POSTed once across the two nodes"
    );

    // Deleted on node b: neither node delivers after a second.
    let (s, _) = call(
        reqwest::Method::DELETE,
        format!("{}/v1/webhooks/{hook}", b.url),
        None,
    )
    .await;
    assert_eq!(s, 204);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    post(&b, "/v1/events", login(30, 40)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster_members(pg, &segment).await.len() < 40 {
        assert!(
            Instant::now() < deadline,
            "the 10 later entries never reached the change log"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(
        seen.lock().expect("lock").len(),
        30,
        "a deleted webhook is delivered by no node"
    );
    drop((a, b));
}

/// Issue 19, "wrong partition, silently ignored": records a producer put on
/// a partition that is not their user's are applied by the user's owner
/// (handed over through the topic) and counted as forwarded; HTTP writes
/// for another node's users are counted once, as forwarded, too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_on_another_partition_reach_their_users_owner_and_are_counted_once() {
    let cluster = Cluster::new("wrong").await;
    let a = cluster.node("a").await;
    let b = cluster.node("b").await;
    let segment = login_segment(&a, "misrouted").await;
    cluster.warm_up(&a, &["a", "b"]).await;
    let pg = &cluster.pg;

    // 20 LOGINs, each on the partition after its user's.
    let misrouted: Vec<Value> = (0..20)
        .map(|i| json!({"user_id": format!("wrong-{i}"), "name": "LOGIN", "timestamp": 1_700_000_000_000i64}))
        .collect();
    let acked = cluster.produce("wrong.jsonl", &misrouted, Some("wrong"));
    assert_eq!(acked, "20");
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster_members(pg, &segment).await.len() < 20 {
        assert!(
            Instant::now() < deadline,
            "misrouted events never reached their owners' live state: {} of 20 members ({:?}; partitions {:?}; owners {:?}), {} events, status {}",
            cluster_members(pg, &segment).await.len(),
            cluster_members(pg, &segment).await,
            (0..20).map(|i| stratify_kafka::partition_of(&format!("wrong-{i}"), PARTITIONS)).collect::<Vec<_>>(),
            owners(&a).await,
            count(pg).await,
            get(&b, "/v1/ingest/status").await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(count(pg).await, 60, "each misrouted event stored once");

    // HTTP writes for users node b owns, sent to node a.
    let owners = owners(&a).await;
    let theirs: Vec<Value> = users_of(&owners, "b", "http")
        .take(10)
        .map(|u| json!({"user_id": u, "name": "LOGIN", "timestamp": 1_700_000_000_000i64}))
        .collect();
    post(&a, "/v1/events", json!({"events": theirs})).await;
    wait_count(pg, 70, "forwarded HTTP events").await;

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = get(&b, "/v1/ingest/status").await;
        let source = |name: &str| {
            status["sources"]
                .as_array()
                .expect("sources")
                .iter()
                .find(|s| s["source"] == name)
                .cloned()
                .expect("source")
        };
        let (http, kafka) = (source("http"), source("kafka"));
        let counts = |s: &Value| {
            (
                s["received"].as_u64().unwrap_or(0),
                s["accepted"].as_u64().unwrap_or(0),
                s["forwarded"].as_u64().unwrap_or(0),
            )
        };
        // HTTP: 10 received, none stored here, 10 forwarded. Kafka: 40
        // warm-up + 20 misrouted + 20 handed over + 10 from HTTP received;
        // 70 stored; the 20 misrouted forwarded.
        if counts(&http) == (10, 0, 10) && counts(&kafka) == (90, 70, 20) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "ingest status: http {:?}, kafka {:?}",
            counts(&http),
            counts(&kafka)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Issue 19, "dashboard sessions live in one node's memory": a browser
/// signed in on one node is signed in on the other (a load balancer may
/// switch), and signing out or revoking the key ends it on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_session_made_on_one_node_holds_on_the_other() {
    let cluster = Cluster::new("session").await;
    let a = cluster.node("a").await;
    let b = cluster.node("b").await;
    let key = post(
        &a,
        "/v1/api-keys",
        json!({"name": "browser", "role": "editor"}),
    )
    .await;
    let (key_id, secret) = (
        key["id"].as_str().expect("id").to_owned(),
        key["key"].as_str().expect("key").to_owned(),
    );
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    // Node b knows the new key within a second (config poll).
    let deadline = Instant::now() + Duration::from_secs(2);
    while browser
        .get(format!("{}/v1/segments", b.url))
        .header("X-API-Key", &secret)
        .send()
        .await
        .expect("request")
        .status()
        != 200
    {
        assert!(
            Instant::now() < deadline,
            "node b never accepted the new key"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let signed_in = browser
        .post(format!("{}/login", a.url))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(format!("api_key={secret}&next=%2F"))
        .send()
        .await
        .expect("sign in");
    assert_eq!(signed_in.status(), 303);
    let cookie = signed_in
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .expect("a session cookie")
        .to_owned();
    let page = |node: &Node| {
        browser
            .get(format!("{}/", node.url))
            .header("Cookie", cookie.clone())
            .send()
    };
    for node in [&a, &b] {
        let shell = page(node).await.expect("page");
        assert_eq!(shell.status(), 200, "signed in on {}", node.url);
        let api = browser
            .get(format!("{}/v1/segments", node.url))
            .header("Cookie", cookie.clone())
            .send()
            .await
            .expect("api");
        assert_eq!(
            api.status(),
            200,
            "the session works for the API on {}",
            node.url
        );
    }
    // Revoked on node b: the session ends on node a too.
    let (s, _) = call(
        reqwest::Method::DELETE,
        format!("{}/v1/api-keys/{key_id}", b.url),
        None,
    )
    .await;
    assert_eq!(s, 204);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let status = page(&a).await.expect("page").status();
        if status == 303 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node a still honours a revoked key's session: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Issue 19, "erasure clears only on the node that got it": a user erased on
/// their owner is forgotten on the other node too, within a second: its
/// sticky variant and cached answer go, so the user comes back as new.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_erased_on_one_node_is_forgotten_on_the_other() {
    let cluster = Cluster::new("erase").await;
    let a = cluster.node("a").await;
    let b = cluster.node("b").await;
    cluster.warm_up(&a, &["a", "b"]).await;
    let owners = owners(&a).await;
    let user = users_of(&owners, "a", "erased")
        .next()
        .expect("a user of node a");
    post(
        &a,
        "/v1/users",
        json!({"user_id": user, "attributes": {"plan": "pro"}}),
    )
    .await;
    let experiment = running_experiment(
        &a,
        json!({"key": "erasure", "name": "Erasure", "variants": [
            {"key": "first", "weight": 100, "is_control": true}, {"key": "later", "weight": 0}]}),
    )
    .await;
    let variant_on_b = |u: String| {
        let b = &b;
        async move {
            get(b, &format!("/v1/users/{u}/experiments")).await["experiments"][0]["variant"]
                .as_str()
                .unwrap_or("")
                .to_owned()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    while variant_on_b(user.clone()).await != "first" {
        assert!(
            Instant::now() < deadline,
            "node b never served the experiment"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // New users get "later" from now on; the user keeps "first" (sticky).
    let (s, e) = call(
        reqwest::Method::PATCH,
        format!("{}/v1/experiments/{experiment}", a.url),
        Some(json!({"variants": [
            {"key": "first", "weight": 0, "is_control": true}, {"key": "later", "weight": 100}]})),
    )
    .await;
    assert_eq!(s, 200, "{e}");
    let deadline = Instant::now() + Duration::from_secs(3);
    // A new user each time (a user served once keeps their variant).
    for i in 0.. {
        if variant_on_b(format!("someone-new-{i}")).await == "later" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node b never saw the new weights"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        variant_on_b(user.clone()).await,
        "first",
        "sticky on node b"
    );
    // Node b's first exposure of the user reaches the store before the erasure.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let (s, _) = call(
        reqwest::Method::DELETE,
        format!("{}/v1/users/{user}", a.url),
        None,
    )
    .await;
    assert_eq!(s, 204);
    let erased = Instant::now();
    loop {
        let v = variant_on_b(user.clone()).await;
        if v == "later" {
            break;
        }
        assert!(
            erased.elapsed() < Duration::from_secs(2),
            "node b still serves the erased user's sticky variant {v}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Issue 19, "one `live_watermark` for the cluster": a node that joins a
/// running cluster records nothing for users another node owns. It used to
/// start as if alone: it loaded every user, resumed from the watermark the
/// other node last wrote (one key for every node) and fired the deadlines
/// that node was firing, so exits and "repairs" were recorded twice.
/// Here node a alone applies a LOGIN every 40 ms (each user in a "LOGIN
/// within 2 s" segment, out 2 s later) while node b starts and joins:
/// afterwards each user entered once and exited once, and each node keeps
/// its own watermark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joining_the_cluster_records_nothing_for_users_it_does_not_own() {
    let cluster = Cluster::new("join").await;
    let a = cluster.node("a").await;
    cluster.warm_up(&a, &["a"]).await;
    let segment = post(
        &a,
        "/v1/segments",
        json!({"name": "recent", "rules": {"event": "LOGIN", "within": "2s", "op": "gte", "value": 1}}),
    )
    .await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    const LOGINS: usize = 150;
    let url = a.url.clone();
    let sender = tokio::spawn(async move {
        let client = reqwest::Client::new();
        for i in 0..LOGINS {
            let r = client
                .post(format!("{url}/v1/events"))
                .header("X-API-Key", KEY)
                .json(&json!({"user_id": format!("join-{i}"), "name": "LOGIN", "timestamp": now_ms()}))
                .send()
                .await
                .expect("send");
            assert!(r.status().is_success(), "{}", r.status());
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    });
    // Node a has been firing exits for a second when node b starts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let b = cluster.node("b").await;
    sender.await.expect("sender");
    wait_owners(&a, &["a", "b"]).await;
    // Every user is out 2 s after their LOGIN: wait for the last exits.
    let deadline = Instant::now() + Duration::from_secs(20);
    let rows = loop {
        let rows = cluster
            .pg
            .query(
                "SELECT user_id, entered FROM changes WHERE segment_id = $1 ORDER BY seq",
                &[&segment],
            )
            .await
            .expect("changes");
        if rows.len() >= 2 * LOGINS || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut per_user: BTreeMap<String, Vec<bool>> = BTreeMap::new();
    for r in &rows {
        per_user.entry(r.get(0)).or_default().push(r.get(1));
    }
    // A LOGIN that reaches its owner more than 2 s late (held up by the
    // rebalance) enters nobody: such a user has no change at all.
    let wrong: Vec<_> = per_user
        .iter()
        .filter(|(_, changes)| changes.as_slice() != [true, false])
        .collect();
    assert!(
        wrong.is_empty() && per_user.len() >= LOGINS * 3 / 4,
        "{} users with changes, want each entered once then exited once; wrong: {wrong:?}",
        per_user.len()
    );
    // Each node committed under its own key; none under the single-node one.
    let keys: BTreeSet<String> = cluster
        .pg
        .query(
            "SELECT key FROM live_state WHERE key LIKE 'live_watermark%'",
            &[],
        )
        .await
        .expect("keys")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        keys,
        ["live_watermark:a", "live_watermark:b"]
            .map(String::from)
            .into(),
    );
    drop(b);
}

/// Issue 19, batches stored while the next is read: a batch the store
/// refuses is read again, with every batch read past it, until the store
/// takes it; nothing is lost or stored twice. A trigger refuses one event
/// (so its batch, and the pipelined one after it, fail) until it is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_the_store_refuses_is_read_again_with_the_batches_after_it() {
    let cluster = Cluster::new("refused").await;
    cluster
        .pg
        .batch_execute(
            "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN IF NEW.event_id = 'poison' THEN RAISE EXCEPTION 'refused for the test'; END IF; \
             RETURN NEW; END $$",
        )
        .await
        .expect("function");
    let a = cluster.node("a").await;
    cluster.warm_up(&a, &["a"]).await;
    cluster
        .pg
        .batch_execute(
            "CREATE TRIGGER refuse_poison BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION refuse_poison()",
        )
        .await
        .expect("trigger");
    const N: usize = 3_000;
    let events: Vec<Value> = (0..N)
        .map(|i| {
            let id = if i == N / 3 {
                "poison".to_owned()
            } else {
                format!("r-{i}")
            };
            json!({"event_id": id, "user_id": format!("r-user-{}", i % 97), "name": "LOGIN",
                   "timestamp": 1_700_000_000_000i64 + i as i64})
        })
        .collect();
    assert_eq!(
        cluster.produce("refused.jsonl", &events, None),
        N.to_string()
    );
    // Refused: the log stops short of the poison's batch, and stays there.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stuck = count(&cluster.pg).await;
    assert!(
        stuck < (40 + N) as i64,
        "{stuck} events stored although one batch is refused"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        count(&cluster.pg).await,
        stuck,
        "nothing passes the refused batch"
    );
    cluster
        .pg
        .batch_execute("DROP TRIGGER refuse_poison ON events")
        .await
        .expect("drop");
    wait_count(&cluster.pg, 40 + N, "after the store takes the batch").await;
    let row = cluster
        .pg
        .query_one(
            "SELECT count(*), count(DISTINCT event_id) FROM events WHERE event_id NOT LIKE 'kafka-%'",
            &[],
        )
        .await
        .expect("count");
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, i64>(1)),
        (N as i64, N as i64),
        "every event stored once"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count(&cluster.pg).await, (40 + N) as i64, "nothing more");
}

/// Issue 21, identity stitching on a cluster: a visitor owned by node a is
/// merged into a member owned by node b by a call to node a, which is then
/// killed. Node b, the member's owner, applies the merge from the store's
/// log (the member enters "twice" with cause `identify`; the visitor's
/// membership ends), and later events sent under the visitor's id, over
/// HTTP to another node or as Kafka records on the visitor's partition,
/// are the member's, each stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merge_made_on_one_node_lands_on_the_known_users_owner() {
    let cluster = Cluster::new("identify").await;
    let a = cluster.node("a").await;
    let b = cluster.node("b").await;
    let loggers = login_segment(&a, "loggers").await;
    let twice = post(
        &a,
        "/v1/segments",
        json!({"name": "twice", "rules": {"event": "LOGIN", "op": "gte", "value": 2}}),
    )
    .await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    cluster.warm_up(&a, &["a", "b"]).await;
    let pg = &cluster.pg;
    let owners = owners(&a).await;
    let visitor = users_of(&owners, "a", "visitor").next().expect("a's user");
    let member = users_of(&owners, "b", "member").next().expect("b's user");
    let login = |user: &str, at: i64| json!({"user_id": user, "name": "LOGIN", "timestamp": at});
    post(&a, "/v1/events", login(&visitor, 1_700_000_000_000)).await;
    post(&b, "/v1/events", login(&member, 1_700_000_000_001)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster_members(pg, &loggers).await.len() < 2 {
        assert!(Instant::now() < deadline, "the two never entered");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let out = post(
        &a,
        "/v1/identify",
        json!({"anonymous_id": visitor, "user_id": member}),
    )
    .await;
    assert_eq!(
        (&out["merged"], &out["events_moved"]),
        (&json!(true), &json!(1)),
        "{out}"
    );
    drop(a);
    // The member's owner applies the merge at once; the visitor's exit is
    // recorded by whoever owns the visitor's partition next (node a's may
    // have died with it): within the group's session timeout.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let in_twice = cluster_members(pg, &twice).await;
        let in_loggers = cluster_members(pg, &loggers).await;
        if in_twice == BTreeSet::from([member.clone()])
            && in_loggers == BTreeSet::from([member.clone()])
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node b never applied the merge: twice {in_twice:?}, loggers {in_loggers:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let causes: Vec<(String, String, bool, i32)> = pg
        .query(
            "SELECT segment_id, user_id, entered, cause FROM changes \
             WHERE user_id = ANY($1) ORDER BY seq",
            &[&vec![visitor.clone(), member.clone()]],
        )
        .await
        .expect("changes")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get::<_, i64>(3) as i32))
        .collect();
    // cause 5: identify (0 event, 4 refresh). The visitor's exit is the
    // merge's (5) when node a recorded it before it died, else the repair
    // of the next owner of the visitor's partition (4).
    assert_eq!(causes.len(), 4, "{causes:?}");
    assert!(
        causes.contains(&(twice.clone(), member.clone(), true, 5)),
        "{causes:?}"
    );
    assert!(
        causes.contains(&(loggers.clone(), visitor.clone(), false, 5))
            || causes.contains(&(loggers.clone(), visitor.clone(), false, 4)),
        "{causes:?}"
    );
    // Node b answers for the visitor's id as the member.
    assert_eq!(
        get(&b, &format!("/v1/users/{visitor}")).await["user_id"],
        json!(member)
    );
    // A node that joins later, and Kafka records under the visitor's id on
    // the visitor's partition: the member's events.
    let c = cluster.node("c").await;
    wait_owners(&c, &["b", "c"]).await;
    post(&c, "/v1/events", login(&visitor, 1_700_000_000_002)).await;
    let acked = cluster.produce("visitor.jsonl", &[login(&visitor, 1_700_000_000_003)], None);
    assert_eq!(acked, "1");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let per_user: Vec<(String, i64)> = pg
            .query(
                "SELECT u.user_id, count(*) FROM events e JOIN users u ON u.uid = e.uid \
                 WHERE u.user_id = ANY($1) GROUP BY u.user_id",
                &[&vec![visitor.clone(), member.clone()]],
            )
            .await
            .expect("counts")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        if per_user == vec![(member.clone(), 4)] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "events under the visitor's id: {per_user:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let orphans: i64 = pg
        .query_one(
            "SELECT count(*) FROM events e WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.uid = e.uid)",
            &[],
        )
        .await
        .expect("orphans")
        .get(0);
    assert_eq!(orphans, 0, "every event belongs to a user");
}

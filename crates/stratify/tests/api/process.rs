//! Tests that run the real `stratify` binary: start-up, signals, the crash
//! test, generate and import.

use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_stratify");
const KEY: &str = "process-test-admin";

struct Server {
    child: Child,
    base: String,
    output: Arc<std::sync::Mutex<Vec<String>>>,
}

/// A server still running when its test ends (or fails) is killed.
impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn start(data_dir: &Path, admin_key: Option<&str>) -> Server {
    start_with(data_dir, admin_key, &[])
}

fn start_with(data_dir: &Path, admin_key: Option<&str>, extra: &[&str]) -> Server {
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .env_remove("STRATIFY_ADMIN_KEY");
    if let Some(k) = admin_key {
        cmd.env("STRATIFY_ADMIN_KEY", k);
    }
    let mut child = cmd
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn stratify");
    let stdout = child.stdout.take().expect("stdout");
    let output = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = output.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("Stratify listening on ") {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_owned());
            }
            sink.lock().expect("lock").push(line);
        }
    });
    let base = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the server printed its address");
    Server {
        child,
        base,
        output,
    }
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args(["-s", sig, &child.id().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -s {sig} failed");
}

#[tokio::test]
async fn first_start_prints_an_admin_key_once_and_sigterm_stops_cleanly() {
    let dir = tempfile::tempdir().expect("dir");
    let mut server = start(dir.path(), None);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let printed = server.output.lock().expect("lock").join("\n");
    let key = printed
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("sfy_"))
        .expect("an admin key is printed")
        .to_owned();
    let client = reqwest::Client::new();
    let resp = client
        .get(format!("{}/v1/api-keys", server.base))
        .bearer_auth(&key)
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), StatusCode::OK);

    signal(&server.child, "TERM");
    let status = server.child.wait().expect("wait");
    assert!(status.success(), "SIGTERM is a clean shutdown: {status:?}");

    let mut again = start(dir.path(), None);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let printed = again.output.lock().expect("lock").join("\n");
    assert!(
        !printed.contains("sfy_"),
        "the key is printed only on first start: {printed}"
    );
    let resp = client
        .get(format!("{}/v1/api-keys", again.base))
        .bearer_auth(&key)
        .send()
        .await
        .expect("get");
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "the bootstrap key is durable"
    );
    signal(&again.child, "INT");
    assert!(again.child.wait().expect("wait").success());
}

#[tokio::test]
async fn every_acknowledged_event_survives_a_sigkill() {
    let dir = tempfile::tempdir().expect("dir");
    let mut server = start(dir.path(), Some(KEY));
    let acked = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let mut writers = Vec::new();
    for w in 0..8 {
        let (base, acked) = (server.base.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            for batch in 0.. {
                let ids: Vec<String> = (0..50).map(|i| format!("w{w}-b{batch}-e{i}")).collect();
                let events: Vec<Value> = ids.iter().map(|id| json!({"event_id": id, "user_id": format!("user-{w}"), "name": "LOGIN"})).collect();
                let sent = client.post(format!("{base}/v1/events")).bearer_auth(KEY).json(&json!({"events": events})).send().await;
                match sent {
                    Ok(resp) if resp.status() == StatusCode::OK => {
                        let body: Value = match resp.json().await {
                            Ok(b) => b,
                            Err(_) => break, // killed mid-answer: not acknowledged
                        };
                        assert_eq!(body["accepted"], 50);
                        acked.lock().expect("lock").extend(ids);
                    }
                    _ => break,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    signal(&server.child, "KILL");
    let _ = server.child.wait();
    for w in writers {
        w.await.expect("writer");
    }
    let acked = acked.lock().expect("lock").clone();
    assert!(
        acked.len() >= 500,
        "the test must acknowledge real traffic before the kill ({} acked)",
        acked.len()
    );

    let restarted = start(dir.path(), Some(KEY));
    let client = reqwest::Client::new();
    let mut stored = HashSet::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{}/v1/events?limit=1000", restarted.base);
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: Value = client
            .get(url)
            .bearer_auth(KEY)
            .send()
            .await
            .expect("page")
            .json()
            .await
            .expect("json");
        for e in page["events"].as_array().expect("events") {
            stored.insert(e["event_id"].as_str().expect("id").to_owned());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let lost: Vec<_> = acked
        .iter()
        .filter(|id| !stored.contains(*id))
        .take(5)
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged events lost, e.g. {lost:?}",
        acked.iter().filter(|id| !stored.contains(*id)).count()
    );
    let mut restarted = restarted;
    let _ = restarted.child.kill();
    let _ = restarted.child.wait();
}

/// The crash test's other half: a SIGKILL at any moment of a graceful
/// shutdown, including while the metric copies are being saved, leaves a
/// data directory whose restart answers the same results (a half-written
/// checkpoint is never trusted, a whole one is), and no temporary file.
#[tokio::test]
async fn results_survive_a_kill_while_their_copies_are_saved() {
    let dir = tempfile::tempdir().expect("dir");
    let mut server = start(dir.path(), Some(KEY));
    let client = reqwest::Client::new();
    let send = |method: reqwest::Method, url: String, body: Option<Value>| {
        let client = client.clone();
        async move { ok(&client, method, url, body).await }
    };
    let base = server.base.clone();
    let created = send(reqwest::Method::POST, format!("{base}/v1/experiments"), Some(json!({
        "key": "saved", "name": "Saved", "variants": [
            {"key": "control", "weight": 50, "is_control": true}, {"key": "treatment", "weight": 50}]}))).await;
    let id = created["id"].as_str().expect("id").to_owned();
    send(
        reqwest::Method::POST,
        format!("{base}/v1/experiments/{id}/start"),
        None,
    )
    .await;
    send(
        reqwest::Method::POST,
        format!("{base}/v1/metrics"),
        Some(json!({
        "key": "spend", "kind": "sum", "event": "buy", "property": "amount"})),
    )
    .await;
    for u in 0..200 {
        send(
            reqwest::Method::GET,
            format!("{base}/v1/users/p{u}/experiments"),
            None,
        )
        .await;
    }
    // 200 000 purchases: a copy big enough that saving it takes a while.
    for batch in 0..20 {
        let events: Vec<Value> = (0..10_000)
            .map(|i| {
                json!({"user_id": format!("p{}", (batch * 10_000 + i) % 200), "name": "buy",
                            "properties": {"amount": (i % 97) as f64 / 4.0}})
            })
            .collect();
        send(
            reqwest::Method::POST,
            format!("{base}/v1/events"),
            Some(json!({"events": events})),
        )
        .await;
    }
    let results = |base: String| {
        let url = format!("{base}/v1/experiments/{id}/results?metric=spend");
        let send = &send;
        async move {
            let r = send(reqwest::Method::GET, url, None).await;
            (
                r["exposed_users"].clone(),
                r["metrics"][0]["variants"].clone(),
            )
        }
    };
    let want = results(server.base.clone()).await;
    assert_eq!(want.0, 200);
    let columns = dir.path().join("checkpoints").join("metric-columns");
    for delay in [0_u64, 20, 60, 120, 250, 500] {
        server = kill_during_shutdown(server, dir.path(), delay).await;
        assert_eq!(
            results(server.base.clone()).await,
            want,
            "killed {delay} ms into the shutdown"
        );
        let stray = temporary_files(&columns);
        assert!(
            stray.is_empty(),
            "a temporary file outlived the restart: {stray:?}"
        );
    }
    // A clean stop saves the copy; the restart uses it and agrees.
    signal(&server.child, "TERM");
    assert!(server.child.wait().expect("wait").success());
    let saved: Vec<_> = std::fs::read_dir(&columns)
        .expect("saved")
        .flatten()
        .collect();
    assert_eq!(saved.len(), 1, "one copy saved: {saved:?}");
    let server = start(dir.path(), Some(KEY));
    assert_eq!(
        results(server.base.clone()).await,
        want,
        "from the saved copy"
    );
}

/// Sends one authenticated request and returns its JSON body (asserting success).
async fn ok(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> Value {
    let mut req = client.request(method, url).bearer_auth(KEY);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("send");
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{status}: {body}");
    body
}

/// Derived state saved at shutdown: a restart reads it and answers exactly
/// as before; a SIGKILL at any moment of the shutdown (while the files are
/// written too) leaves no half file trusted and no temporary file; and a
/// truncated, flipped or old file is refused (deleted) and the state rebuilt
/// from the store, with the same answers.
#[tokio::test]
async fn derived_state_is_restored_from_its_checkpoint_only_when_it_matches_the_store() {
    use reqwest::Method;
    let dir = tempfile::tempdir().expect("dir");
    let saved = dir.path().join("checkpoints").join("derived");
    let (live, population) = (saved.join("live.state"), saved.join("population.state"));
    let client = reqwest::Client::new();
    let mut server = start(dir.path(), Some(KEY));
    let base = server.base.clone();
    let rules = [
        ("buyers", json!({"event": "buy", "op": "gte", "value": 3})),
        (
            "big",
            json!({"event": "buy", "agg": "sum", "property": "amount", "op": "gt", "value": 2000}),
        ),
        (
            "recent",
            json!({"event": "buy", "within": "2h", "op": "gte", "value": 1}),
        ),
        ("pro", json!({"field": "plan", "op": "eq", "value": "pro"})),
    ];
    // (name, id, rule): population queries ask by rule, sizes by id.
    let mut segments: Vec<(String, String, Value)> = Vec::new();
    for (name, rule) in &rules {
        let made = ok(
            &client,
            Method::POST,
            format!("{base}/v1/segments"),
            Some(json!({"name": name, "rules": rule})),
        )
        .await;
        segments.push((
            name.to_string(),
            made["id"].as_str().expect("id").to_owned(),
            rule.clone(),
        ));
    }
    let made = ok(
        &client,
        Method::POST,
        format!("{base}/v1/segments"),
        Some(json!({"name": "vip", "user_ids": ["p1", "p2", "p3"]})),
    )
    .await;
    let vip = made["id"].as_str().expect("id").to_owned();
    segments.push(("vip".into(), vip.clone(), json!({"segment": vip})));
    let buyers = segments[0].1.clone();
    for u in 0..60 {
        let plan = if u % 3 == 0 { "pro" } else { "free" };
        ok(
            &client,
            Method::PUT,
            format!("{base}/v1/users/p{u}"),
            Some(json!({"attributes": {"plan": plan}})),
        )
        .await;
    }
    // 100 000 purchases over 400 users (user p399 gets exactly two).
    for batch in 0..10 {
        let events: Vec<Value> = (0..10_000)
            .map(|i| {
                let n = batch * 10_000 + i;
                let user = if n < 99_998 { n % 399 } else { 399 };
                json!({"user_id": format!("p{user}"), "name": "buy", "properties": {"amount": (n % 97) as f64 / 4.0}})
            })
            .collect();
        ok(
            &client,
            Method::POST,
            format!("{base}/v1/events"),
            Some(json!({"events": events})),
        )
        .await;
    }
    let answers = |base: String| {
        let client = client.clone();
        let segments = segments.clone();
        async move {
            let mut all = serde_json::Map::new();
            for (name, id, rule) in &segments {
                // Live (size) and population (query) agree once live has
                // applied every event.
                let (size, ids) = crate::helpers::eventually("live caught up", || {
                    let client = client.clone();
                    let (url, query) = (
                        format!("{base}/v1/segments/{id}"),
                        format!("{base}/v1/segments/query"),
                    );
                    let rule = rule.clone();
                    async move {
                        let seg = ok(&client, Method::GET, url, None).await;
                        let found = ok(
                            &client,
                            Method::POST,
                            query,
                            Some(json!({"rules": rule, "limit": 1000})),
                        )
                        .await;
                        let mut ids: Vec<String> = found["user_ids"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|v| v.as_str().map(str::to_owned))
                            .collect();
                        ids.sort();
                        (seg["build"]["state"] == "ready" && seg["size"] == ids.len())
                            .then_some((seg["size"].clone(), ids))
                    }
                })
                .await;
                all.insert(name.clone(), json!({"size": size, "population": ids}));
            }
            Value::Object(all)
        }
    };
    let want = answers(base.clone()).await;
    assert_eq!(want["buyers"]["size"], 399, "{want}");
    assert_eq!(want["pro"]["size"], 20);
    assert_eq!(want["vip"]["population"], json!(["p1", "p2", "p3"]));
    assert!(
        want["big"]["size"]
            .as_u64()
            .is_some_and(|n| n > 0 && n < 400),
        "{want}"
    );
    // Killed at moments through the shutdown, the files being written among them.
    for delay in [0_u64, 5, 10, 20, 40, 80, 160] {
        server = kill_during_shutdown(server, dir.path(), delay).await;
        assert_eq!(
            answers(server.base.clone()).await,
            want,
            "killed {delay} ms into the shutdown"
        );
        let stray = temporary_files(&saved);
        assert!(
            stray.is_empty(),
            "a temporary file outlived the restart: {stray:?}"
        );
    }
    let stop = |mut server: Server| {
        signal(&server.child, "TERM");
        assert!(server.child.wait().expect("wait").success());
    };
    stop(server);
    assert!(
        live.exists() && population.exists(),
        "a clean stop saves both"
    );
    let server = start(dir.path(), Some(KEY));
    assert!(
        live.exists() && population.exists(),
        "both matched the store and were used"
    );
    assert_eq!(
        answers(server.base.clone()).await,
        want,
        "from the saved state"
    );
    stop(server);
    // Damaged files: refused (deleted at start) and rebuilt.
    let bytes = std::fs::read(&live).expect("live file");
    std::fs::write(&live, &bytes[..bytes.len() / 2]).expect("truncate");
    let mut bytes = std::fs::read(&population).expect("population file");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&population, &bytes).expect("flip");
    let server = start(dir.path(), Some(KEY));
    assert!(!live.exists(), "the truncated live state was refused");
    assert!(
        !population.exists(),
        "the flipped population index was refused"
    );
    assert_eq!(
        answers(server.base.clone()).await,
        want,
        "rebuilt from the store"
    );
    stop(server);
    // Old files: saved before writes they do not hold, put back after them.
    let old = tempfile::tempdir().expect("dir");
    for f in [&live, &population] {
        std::fs::copy(f, old.path().join(f.file_name().expect("name"))).expect("keep the old file");
    }
    let server = start(dir.path(), Some(KEY));
    let base = server.base.clone();
    ok(
        &client,
        Method::PATCH,
        format!("{base}/v1/users/p1"),
        Some(json!({"attributes": {"plan": "pro"}})),
    )
    .await;
    ok(
        &client,
        Method::POST,
        format!("{base}/v1/segments/{vip}/members"),
        Some(json!({"user_ids": ["p4"]})),
    )
    .await;
    let changed = answers(base.clone()).await;
    assert_eq!(changed["pro"]["size"], 21);
    assert_eq!(
        changed["vip"]["population"],
        json!(["p1", "p2", "p3", "p4"])
    );
    stop(server);
    for f in [&live, &population] {
        std::fs::copy(old.path().join(f.file_name().expect("name")), f)
            .expect("put the old file back");
    }
    let server = start(dir.path(), Some(KEY));
    assert!(
        !live.exists() && !population.exists(),
        "old files were refused"
    );
    assert_eq!(
        answers(server.base.clone()).await,
        changed,
        "the writes after the old files count"
    );
    stop(server);
    // Events appended while the server is down (an import) are read after
    // the saved state, which stays valid; and the live state goes on from
    // it: p399's third purchase makes it a buyer.
    let server = start(dir.path(), Some(KEY));
    assert!(live.exists() && population.exists());
    let base = server.base.clone();
    ok(
        &client,
        Method::POST,
        format!("{base}/v1/events"),
        Some(
            json!({"events": [{"user_id": "p399", "name": "buy", "properties": {"amount": 1.0}}]}),
        ),
    )
    .await;
    crate::helpers::eventually("p399 enters buyers", || {
        let (client, url) = (client.clone(), format!("{base}/v1/segments/{buyers}"));
        async move { (ok(&client, Method::GET, url, None).await["size"] == 400).then_some(()) }
    })
    .await;
    let members = ok(
        &client,
        Method::POST,
        format!("{base}/v1/segments/query"),
        Some(json!({"rules": {"segment": buyers}, "limit": 1000})),
    )
    .await;
    assert!(
        members["user_ids"]
            .as_array()
            .is_some_and(|a| a.contains(&json!("p399"))),
        "{members}"
    );
    stop(server);
}

/// SIGTERM, then SIGKILL `delay` into the graceful shutdown; a new server
/// on the same data directory.
async fn kill_during_shutdown(mut server: Server, data_dir: &Path, delay: u64) -> Server {
    signal(&server.child, "TERM");
    tokio::time::sleep(Duration::from_millis(delay)).await;
    let _ = server.child.kill();
    let _ = server.child.wait();
    start(data_dir, Some(KEY))
}

/// Temporary (`.tmp`) files left in `dir`.
fn temporary_files(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "tmp"))
                .collect()
        })
        .unwrap_or_default()
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run stratify");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn generate_is_reproducible_and_import_is_idempotent_and_reports_bad_rows() {
    let dir = tempfile::tempdir().expect("dir");
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    let gen = |out: &Path| {
        run(&[
            "generate",
            "--users",
            "300",
            "--events",
            "2000",
            "--orders",
            "400",
            "--seed",
            "7",
            "--now",
            "2026-06-01T00:00:00Z",
            "--out",
            out.to_str().expect("path"),
        ])
    };
    assert!(gen(&a).0 && gen(&b).0);
    for f in ["user_attributes.csv", "user_events.csv", "orders.csv"] {
        let (x, y) = (
            std::fs::read(a.join(f)).expect("read"),
            std::fs::read(b.join(f)).expect("read"),
        );
        assert_eq!(x, y, "{f} differs between two runs with the same seed");
    }
    let header = std::fs::read_to_string(a.join("user_attributes.csv")).expect("read");
    assert!(header.starts_with(
        "user_id,name,age,gender,location,signup_date,subscription_plan,device_type\n"
    ));

    // Two bad rows at known lines, then a good one.
    let mut events = std::fs::read_to_string(a.join("user_events.csv")).expect("read");
    events.push_str(
        "42,LOGIN,not-a-time\n,LOGIN,2026-01-01T00:00:00Z\n42,LOGIN,2026-05-01T00:00:00Z\n",
    );
    std::fs::write(a.join("user_events.csv"), events).expect("write");

    let data = dir.path().join("data");
    let args = |d: &Path| {
        vec![
            "import".to_owned(),
            "--users".into(),
            a.join("user_attributes.csv").display().to_string(),
            "--events".into(),
            a.join("user_events.csv").display().to_string(),
            "--orders".into(),
            a.join("orders.csv").display().to_string(),
            "--data-dir".into(),
            d.display().to_string(),
        ]
    };
    let argv = args(&data);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let (ok, stdout, stderr) = run(&argv);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("user_attributes.csv: 300 rows") && stdout.contains("300 written"),
        "{stdout}"
    );
    assert!(
        stdout.contains("user_events.csv: 2003 rows")
            && stdout.contains("2001 written, 0 already present, 2 bad"),
        "{stdout}"
    );
    assert!(
        stderr.contains("line 2002: invalid_timestamp")
            && stderr.contains("line 2003: missing_field"),
        "{stderr}"
    );
    assert!(
        stdout.contains("orders.csv: 400 rows") && stdout.contains("400 written"),
        "{stdout}"
    );

    let (ok, stdout, _) = run(&argv);
    assert!(ok);
    assert!(
        stdout.contains("0 written, 300 already present"),
        "re-import adds nothing: {stdout}"
    );
    assert!(
        stdout.contains("0 written, 2001 already present, 2 bad"),
        "{stdout}"
    );
    assert!(
        stdout.contains("0 written, 400 already present"),
        "{stdout}"
    );
}

/// An import at least as large as the log drops the log's indexes and
/// builds them once at the end (a bulk append); it stays idempotent, and the
/// store answers by user afterwards.
#[test]
fn a_large_import_builds_the_event_log_indexes_once_and_adds_nothing_twice() {
    let dir = tempfile::tempdir().expect("dir");
    let gen = dir.path().join("gen");
    let (ok, _, stderr) = run(&[
        "generate",
        "--users",
        "200",
        "--events",
        "60000",
        "--orders",
        "1000",
        "--seed",
        "3",
        "--now",
        "2026-06-01T00:00:00Z",
        "--out",
        gen.to_str().expect("path"),
    ]);
    assert!(ok, "{stderr}");
    let data = dir.path().join("data");
    let file = |f: &str| gen.join(f).display().to_string();
    let argv = [
        "import".to_owned(),
        "--users".into(),
        file("user_attributes.csv"),
        "--events".into(),
        file("user_events.csv"),
        "--orders".into(),
        file("orders.csv"),
        "--data-dir".into(),
        data.display().to_string(),
    ];
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let (ok, stdout, stderr) = run(&argv);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("event log indexes built"),
        "a bulk append: {stdout}"
    );
    assert!(
        stdout.contains("60000 written, 0 already present") && stdout.contains("1000 written"),
        "{stdout}"
    );
    // Again, the events alone.
    let again = [&argv[..1], &argv[3..5], &argv[7..]].concat();
    let (ok, stdout, stderr) = run(&again[..]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("0 written, 60000 already present"),
        "{stdout}"
    );
    // And all three once more, as a bulk append whose keys are read from the log.
    let (ok, stdout, _) = run(&argv);
    assert!(ok);
    assert!(
        stdout.contains("0 written, 60000 already present")
            && stdout.contains("0 written, 1000 already present"),
        "{stdout}"
    );
}

#[test]
fn import_refuses_a_file_without_the_needed_columns() {
    let dir = tempfile::tempdir().expect("dir");
    let f = dir.path().join("e.csv");
    std::fs::write(&f, "who,what\n1,2\n").expect("write");
    let (ok, _, stderr) = run(&[
        "import",
        "--events",
        f.to_str().expect("p"),
        "--data-dir",
        dir.path().join("d").to_str().expect("p"),
    ]);
    assert!(!ok);
    assert!(stderr.contains("user_id"), "{stderr}");
}

/// Waits for the next SSE `data:` payload on a streaming response.
async fn next_sse(resp: &mut reqwest::Response, buf: &mut String) -> Value {
    loop {
        if let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            if let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data:")) {
                return serde_json::from_str(data.trim()).expect("JSON change");
            }
            continue;
        }
        let chunk = tokio::time::timeout(Duration::from_secs(15), resp.chunk())
            .await
            .expect("a change in time")
            .expect("chunk")
            .expect("stream open");
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The real binary on the system clock: a 2-second window expires at its
/// exact instant, observed on the stream within a second of it; after a
/// clean stop, `stratify rebuild` from the log alone finds nothing to correct.
#[tokio::test]
async fn second_scale_windows_expire_on_time_on_the_real_server_and_rebuild_agrees() {
    let dir = tempfile::tempdir().expect("dir");
    let mut server = start(dir.path(), Some(KEY));
    let client = reqwest::Client::new();
    let resp = client
        .post(format!("{}/v1/segments", server.base))
        .bearer_auth(KEY)
        .json(&json!({"name": "pinged", "rules": {"event": "PING", "within": "2s", "op": "gte", "value": 1}}))
        .send()
        .await
        .expect("segment");
    assert_eq!(resp.status(), StatusCode::CREATED);
    let mut stream = client
        .get(format!("{}/v1/changes/stream", server.base))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("stream");
    assert_eq!(stream.status(), StatusCode::OK);
    let mut buf = String::new();
    for user in ["u1", "u2"] {
        let sent = wall_ms();
        let resp = client
            .post(format!("{}/v1/events", server.base))
            .bearer_auth(KEY)
            .json(&json!({"user_id": user, "name": "PING", "timestamp": sent}))
            .send()
            .await
            .expect("event");
        assert_eq!(resp.status(), StatusCode::OK);
        let entered = next_sse(&mut stream, &mut buf).await;
        assert_eq!(
            (entered["user_id"].as_str(), entered["change"].as_str()),
            (Some(user), Some("entered"))
        );
        let exited = next_sse(&mut stream, &mut buf).await;
        let seen = wall_ms();
        assert_eq!(exited["change"], "exited");
        assert_eq!(exited["cause"], "time");
        let at = stratify_core::time::parse_rfc3339(exited["at"].as_str().expect("at"))
            .expect("RFC 3339");
        assert_eq!(at, sent + 2000, "the window (t - 2s, t] ends exactly");
        assert!(
            seen - at < 1000,
            "observed {} ms after its instant",
            seen - at
        );
    }
    // SIGTERM with the stream still open: the stream ends, the server stops.
    signal(&server.child, "TERM");
    let rest = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = stream.chunk().await {}
    })
    .await;
    assert!(rest.is_ok(), "the stream ends on shutdown");
    assert!(server.child.wait().expect("wait").success());

    let data = dir.path().to_str().expect("utf-8 path");
    let (ok, out, err) = run(&["rebuild", "--data-dir", data]);
    assert!(ok, "{err}");
    assert!(out.contains("0 memberships corrected"), "{out}");
    let (ok, out, err) = run(&["refresh", "--data-dir", data]);
    assert!(ok, "{err}");
    assert!(out.contains("0 memberships changed"), "{out}");
}

/// A JSON call to the real server with the admin key, failing the test after
/// 10 s (the server is another process: a stuck one cannot stall the test).
async fn call(
    client: &reqwest::Client,
    base: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = client
        .request(method, format!("{base}{path}"))
        .bearer_auth(KEY)
        .timeout(Duration::from_secs(10));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{path}: no answer within 10 s ({e})"));
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_chain_of_ors_of_references_is_evaluated_once_per_segment() {
    // Issue 22: four segments, each an OR of 900 references to the one
    // before: 900⁴ leaves if references were expanded, all within the
    // per-rule limits. Evaluation, explain, SQL and the live state must each
    // compute a referenced segment once.
    use reqwest::Method;
    let dir = tempfile::tempdir().expect("dir");
    let server = start(dir.path(), Some(KEY));
    let (client, base) = (reqwest::Client::new(), server.base.clone());
    let post =
        |path: &'static str, body: Value| call(&client, &base, Method::POST, path, Some(body));
    for (id, plan) in [("a", "free"), ("b", "premium"), ("c", "premium")] {
        let (s, _) = post(
            "/v1/users",
            json!({"user_id": id, "attributes": {"plan": plan}}),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED);
    }
    let (s, seg) = post(
        "/v1/segments",
        json!({"name": "chain 0", "rules": {"field": "plan", "op": "eq", "value": "premium"}}),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{seg}");
    let mut last = seg["id"].as_str().expect("id").to_owned();
    for level in 1..=4 {
        let refs: Vec<Value> = (0..900).map(|_| json!({"segment": last})).collect();
        let (s, seg) = post(
            "/v1/segments",
            json!({"name": format!("chain {level}"), "rules": {"operator": "OR", "conditions": refs}}),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{seg}");
        last = seg["id"].as_str().expect("id").to_owned();
    }
    let get = |path: String| {
        call(
            &client,
            &base,
            Method::GET,
            Box::leak(path.into_boxed_str()),
            None,
        )
    };
    let in_last = |user: Value| {
        user["segments"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s == &json!(last)))
    };
    // b leaves the base segment: finding b out of the last one takes every
    // path of the chain (no short-circuit), in the live state and in reads.
    let (s, _) = call(
        &client,
        &base,
        Method::PATCH,
        "/v1/users/b",
        Some(json!({"attributes": {"plan": "free"}})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = post(
        "/v1/events",
        json!({"events": [{"user_id": "a", "name": "LOGIN", "timestamp": "2026-01-01T00:00:00Z"}]}),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = get("/health".into()).await;
    assert_eq!(s, StatusCode::OK);
    let (_, b) = get("/v1/users/b".into()).await;
    assert!(!in_last(b.clone()), "{b}");
    let (_, c) = get("/v1/users/c".into()).await;
    assert!(in_last(c.clone()), "{c}");
    let (_, members) = get(format!("/v1/segments/{last}/members")).await;
    assert_eq!(members["user_ids"], json!(["c"]), "{members}");
    let (s, by_sql) = post(
        "/v1/segments/query",
        json!({"rules": {"segment": last}, "evaluator": "sql"}),
    )
    .await;
    assert_eq!(
        (s, &by_sql["user_ids"]),
        (StatusCode::OK, &json!(["c"])),
        "{by_sql}"
    );
    let (s, explained) = get(format!("/v1/users/b/segments/{last}/explain")).await;
    assert_eq!(s, StatusCode::OK, "{explained}");
    assert_eq!(explained["in_segment"], false);
    let text = explained.to_string();
    // Each referenced segment explained once; later references say so.
    assert!(text.len() < 1_000_000, "explain is {} bytes", text.len());
    assert!(text.contains("\"explained\":\"above\""));
    for dialect in ["sqlite", "postgres"] {
        let (s, sql) = get(format!("/v1/segments/{last}/sql?dialect={dialect}")).await;
        assert_eq!(s, StatusCode::OK, "{sql}");
        let text = sql["sql"].as_str().expect("sql");
        // One CTE per referenced segment and one for the rule itself.
        assert_eq!(
            text.matches("AS MATERIALIZED").count(),
            5,
            "{}",
            &text[..400]
        );
        assert!(text.len() < 200_000, "the SQL is {} bytes", text.len());
    }
    // The live state got there too (the event for a, served after b's change).
    let (s, _) = get("/health".into()).await;
    assert_eq!(s, StatusCode::OK);
    drop(server);
}

/// Issue 22: `serve --tls-cert --tls-key` serves HTTPS (rustls) with a
/// certificate made here, trusted by the client and nothing else; plain
/// HTTP on the same port gets no answer.
#[tokio::test]
async fn serve_with_a_certificate_answers_https() {
    let dir = tempfile::tempdir().expect("dir");
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("certificate");
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).expect("write cert");
    std::fs::write(&key_path, cert.key_pair.serialize_pem()).expect("write key");
    let data = dir.path().join("data");
    let server = start_with(
        &data,
        Some(KEY),
        &[
            "--tls-cert",
            cert_path.to_str().expect("path"),
            "--tls-key",
            key_path.to_str().expect("path"),
        ],
    );
    assert!(server.base.starts_with("https://"), "{}", server.base);
    let client = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).expect("pem"),
        )
        .build()
        .expect("client");
    let resp = client
        .get(format!("{}/v1/segments", server.base))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("an HTTPS answer");
    assert_eq!(resp.status(), StatusCode::OK);
    // A client that does not trust the certificate refuses the connection.
    assert!(reqwest::Client::new()
        .get(format!("{}/health", server.base))
        .send()
        .await
        .is_err());
    // Plain HTTP on the TLS port is not served.
    let plain = server.base.replace("https://", "http://");
    let answer = reqwest::Client::new()
        .get(format!("{plain}/health"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(
        !answer.is_ok_and(|r| r.status().is_success()),
        "plain HTTP was served"
    );
    // A key without its certificate stops the start with a message.
    let out = Command::new(BIN)
        .args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("other"))
        .args(["--tls-key", key_path.to_str().expect("path")])
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("TLS needs both"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Issue 21: schemathesis (PyPI 4.32.5, pinned in scripts/test.sh) against
/// `/openapi.json` on the real binary with the demo data: every operation's
/// generated cases, with the checks not_a_server_error,
/// status_code_conformance, response_schema_conformance and
/// content_type_conformance, find nothing.
#[tokio::test]
async fn schemathesis_finds_nothing_against_the_openapi_document() {
    let dir = tempfile::tempdir().expect("dir");
    let server = start_with(dir.path(), Some(KEY), &["--demo"]);
    // The demo scenario loads over the API after start.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !server
        .output
        .lock()
        .expect("lock")
        .iter()
        .any(|l| l.starts_with("Demo: scenario loaded"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the demo did not load"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let python = crate::helpers::pyenv_python("schemathesis");
    let base = server.base.clone();
    // schemathesis keeps a cache where it runs: in the test's directory.
    let work = dir.path().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .current_dir(work)
            .args([
                "-c",
                "import sys; from schemathesis.cli import schemathesis; sys.argv[0] = 'schemathesis'; sys.exit(schemathesis())",
                "run",
                &format!("{base}/openapi.json"),
                "-H",
                &format!("Authorization: Bearer {KEY}"),
                "--checks",
                "not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance",
                "--max-examples",
                "5",
                "--workers",
                "2",
                "--seed",
                "20261204",
                "--no-color",
            ])
            .output()
            .expect("schemathesis runs")
    })
    .await
    .expect("join");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{}\n{}",
        report
            .lines()
            .rev()
            .take(120)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("passed"), "{report}");
    drop(server);
}

use reqwest::{Client, Method, Response, StatusCode};
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;
use stratify_core::access::Role;
use stratify_engine::{Clock, Engine, EngineConfig, ManualClock, WebhookPolicy};
use stratify_server::{AppState, ServerConfig};

pub const ADMIN: &str = "test-admin-secret";
/// 2026-01-01T00:00:00Z
pub const T0: i64 = 1_767_225_600_000;

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: Client,
    pub clock: Arc<ManualClock>,
    pub engine: Engine,
    pub dir: tempfile::TempDir,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(ServerConfig::default()).await
}

pub async fn spawn_app_with(config: ServerConfig) -> TestApp {
    spawn_app_in(
        tempfile::tempdir().expect("temp dir"),
        config,
        EngineConfig::default(),
    )
    .await
}

/// A server whose webhooks may deliver to loopback receivers (the tests'),
/// as `webhook_allow_private = true` allows.
pub async fn spawn_app_delivering_locally() -> TestApp {
    spawn_app_in(
        tempfile::tempdir().expect("temp dir"),
        ServerConfig::default(),
        EngineConfig {
            webhooks: WebhookPolicy {
                allow_private: true,
                extra_roots_pem: None,
            },
            ..EngineConfig::default()
        },
    )
    .await
}

/// A server on the store in `dir` (a new one, or one a previous app left),
/// with these settings.
pub async fn spawn_app_in(
    dir: tempfile::TempDir,
    config: ServerConfig,
    engine_config: EngineConfig,
) -> TestApp {
    let store = stratify_engine::open_store(dir.path()).expect("open store");
    let clock = Arc::new(ManualClock::new(T0));
    let engine = Engine::start_with(
        store,
        clock.clone() as Arc<dyn Clock>,
        Some(ADMIN.into()),
        engine_config,
    )
    .await
    .expect("engine");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let state = AppState::new(engine.clone(), config);
    tokio::spawn(stratify_server::serve(
        listener,
        state,
        std::future::pending(),
    ));
    TestApp {
        addr,
        client: Client::new(),
        clock,
        engine,
        dir,
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Response {
        let mut req = self.client.request(method, self.url(path));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.expect("request")
    }

    pub async fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let resp = self.call(method, path, Some(ADMIN), body).await;
        let status = resp.status();
        let text = resp.text().await.expect("body");
        (
            status,
            if text.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&text).expect("JSON body")
            },
        )
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.json(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.json(Method::POST, path, Some(body)).await
    }

    pub async fn key(&self, role: Role) -> String {
        let (status, body) = self
            .post(
                "/v1/api-keys",
                serde_json::json!({"name": format!("{role} key"), "role": role.as_str()}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["key"].as_str().expect("key").to_owned()
    }
}

/// Asserts the standard error shape and returns the code.
pub fn error_code(body: &Value) -> &str {
    let err = &body["error"];
    assert!(err["message"].is_string(), "no error message in {body}");
    err["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {body}"))
}

/// Creates an experiment and starts it; returns its id.
pub async fn running_experiment(app: &TestApp, body: Value) -> String {
    let (s, e) = app.post("/v1/experiments", body).await;
    assert_eq!(s, StatusCode::CREATED, "{e}");
    let id = e["id"].as_str().expect("id").to_owned();
    let (s, e) = app
        .post(
            &format!("/v1/experiments/{id}/start"),
            serde_json::json!(null),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{e}");
    id
}

/// The Python of target/pyenv (made by scripts/test.sh with the pinned
/// OpenFeature SDK and Playwright), or `STRATIFY_PYTHON`. Never skips: a
/// missing interpreter fails the test that needs it.
pub fn pyenv_python(purpose: &str) -> String {
    if let Ok(p) = std::env::var("STRATIFY_PYTHON") {
        return p;
    }
    let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/pyenv/bin/python");
    assert!(
        std::path::Path::new(venv).exists(),
        "{purpose} needs target/pyenv: run scripts/test.sh (it creates it) or set STRATIFY_PYTHON"
    );
    venv.to_owned()
}

/// Polls `f` until it returns `Some`, for up to 10 s of real time.
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Runs a Python `script` (the pinned target/pyenv) with `input` as JSON on
/// stdin and reads its stdout as JSON; fails the test on a non-zero exit.
/// Waits off the runtime, so the script may call back into a test server.
pub async fn python_json(
    purpose: &str,
    script: &str,
    input: &serde_json::Value,
) -> serde_json::Value {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new(pyenv_python(purpose))
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.to_string().as_bytes())
        .expect("write");
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .expect("join")
        .expect("python output");
    assert!(
        out.status.success(),
        "{purpose}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from python")
}

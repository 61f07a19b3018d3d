//! The web dashboard, served by the binary itself at `/`: a sign-in page,
//! one HTML shell for every page, and the dashboard's own script, styles and
//! icon (compiled in; nothing is fetched from elsewhere). The pages call the
//! same `/v1` API as every client, authenticated by the session cookie, so
//! roles are enforced in one place ([`crate::auth`]).

pub mod session;

use crate::AppState;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::sync::LazyLock;
use stratify_core::access::{Capability, Role};

struct Asset {
    body: &'static str,
    content_type: &'static str,
    etag: String,
}

fn asset(body: &'static str, content_type: &'static str) -> Asset {
    let hash = Sha256::digest(body.as_bytes());
    Asset {
        body,
        content_type,
        etag: format!("\"{}\"", hex::encode(&hash[..8])),
    }
}

static ASSETS: LazyLock<[(&'static str, Asset); 3]> = LazyLock::new(|| {
    [
        (
            "app.js",
            asset(
                include_str!("../../assets/app.js"),
                "text/javascript; charset=utf-8",
            ),
        ),
        (
            "app.css",
            asset(
                include_str!("../../assets/app.css"),
                "text/css; charset=utf-8",
            ),
        ),
        (
            "favicon.svg",
            asset(include_str!("../../assets/favicon.svg"), "image/svg+xml"),
        ),
    ]
});

/// The page paths; each serves the shell, and the script draws the page.
const PAGES: [&str; 10] = [
    "/",
    "/segments",
    "/segments/{*rest}",
    "/users",
    "/users/{*rest}",
    "/experiments",
    "/experiments/{*rest}",
    "/ingest",
    "/keys",
    "/audit",
];

pub fn router() -> Router<AppState> {
    let mut router = Router::new()
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/assets/{name}", get(serve_asset));
    for page in PAGES {
        router = router.route(page, get(shell));
    }
    router
}

/// The capabilities a page may use, by the names the script knows.
fn capability_names(role: Role) -> Vec<&'static str> {
    use Capability::*;
    [
        (Read, "read"),
        (EditConfig, "edit"),
        (ManageKeys, "keys"),
        (ManageSchemas, "schemas"),
        (ReadSchemas, "read_schemas"),
        (ReadIngest, "ingest"),
        (Evaluate, "evaluate"),
        (ReadAudit, "audit"),
    ]
    .into_iter()
    .filter(|(c, _)| role.can(*c))
    .map(|(_, name)| name)
    .collect()
}

/// Whether a role has anything to see in the dashboard.
fn may_sign_in(role: Role) -> bool {
    role.can(Capability::Read) || role.can(Capability::ReadIngest)
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Where to go after signing in: only a path on this site.
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n,
        _ => "/",
    }
}

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
img-src 'self' data:; connect-src 'self'; font-src 'self'; object-src 'none'; \
base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn html(status: StatusCode, body: String) -> Response<Body> {
    let mut response = (status, body).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

fn redirect(to: &str, cookie: Option<String>) -> Response<Body> {
    let mut response = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        response.headers_mut().insert(header::SET_COOKIE, c);
    }
    response
}

fn asset_url(name: &str) -> String {
    let etag = ASSETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, a)| a.etag.trim_matches('"'))
        .unwrap_or("");
    format!("/assets/{name}?v={etag}")
}

fn head(title: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · Stratify</title>
<link rel="icon" href="{icon}" type="image/svg+xml">
<link rel="stylesheet" href="{css}">
"#,
        title = escape(title),
        icon = asset_url("favicon.svg"),
        css = asset_url("app.css"),
    )
}

#[derive(Deserialize)]
struct NextQuery {
    next: Option<String>,
}

fn login_html(next: &str, error: Option<&str>) -> String {
    let error = error
        .map(|e| format!(r#"<p class="form-error" role="alert">{}</p>"#, escape(e)))
        .unwrap_or_default();
    format!(
        r#"{head}</head>
<body class="login">
<main class="login-card">
  <div class="brand brand-large"><img src="{icon}" alt="" width="28" height="28"><span>Stratify</span></div>
  <h1>Sign in</h1>
  <p class="muted">Use an API key with the admin, editor, viewer or ops role. The key stays on the server; your browser keeps only a session cookie.</p>
  {error}
  <form method="post" action="/login" autocomplete="off">
    <input type="hidden" name="next" value="{next}">
    <label for="api_key">API key</label>
    <input id="api_key" name="api_key" type="password" required autofocus spellcheck="false" placeholder="sfy_…">
    <button type="submit" class="primary wide">Sign in</button>
  </form>
</main>
</body>
</html>
"#,
        head = head("Sign in"),
        icon = asset_url("favicon.svg"),
        next = escape(next),
    )
}

async fn login_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<NextQuery>,
) -> Response<Body> {
    let next = safe_next(q.next.as_deref());
    if session::of_request(&state.engine, &headers).await.is_some() {
        return redirect(next, None);
    }
    html(StatusCode::OK, login_html(next, None))
}

#[derive(Deserialize)]
struct LoginForm {
    api_key: String,
    next: Option<String>,
}

/// A cross-site form post may not sign a browser in (login CSRF).
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    origin
        .split_once("://")
        .is_some_and(|(_, rest)| rest.trim_end_matches('/') == host)
}

async fn login(State(state): State<AppState>, headers: HeaderMap, body: String) -> Response<Body> {
    if !same_origin(&headers) {
        return html(
            StatusCode::FORBIDDEN,
            login_html("/", Some("Sign-in must come from this site's own page.")),
        );
    }
    let Ok(form) = serde_urlencoded::from_str::<LoginForm>(&body) else {
        return html(
            StatusCode::BAD_REQUEST,
            login_html("/", Some("The sign-in form was incomplete.")),
        );
    };
    let next = safe_next(form.next.as_deref()).to_owned();
    let key = form.api_key.trim();
    match state.engine.keys.authenticate(key) {
        None => html(
            StatusCode::UNAUTHORIZED,
            login_html(&next, Some("That API key is not valid (or was revoked).")),
        ),
        Some(p) if !may_sign_in(p.role) => html(
            StatusCode::FORBIDDEN,
            login_html(
                &next,
                Some(&format!(
                    "Keys with the '{}' role are for applications; the dashboard needs an admin, editor, viewer or ops key.",
                    p.role
                )),
            ),
        ),
        Some(p) => match session::sign_in(&state.engine, &p.key_id).await {
            Some(token) => redirect(&next, Some(session::set_cookie(&token))),
            None => html(
                StatusCode::SERVICE_UNAVAILABLE,
                login_html(&next, Some("Signing in failed; try again in a moment.")),
            ),
        },
    }
}

#[derive(Deserialize)]
struct LogoutForm {
    csrf: Option<String>,
}

async fn logout(State(state): State<AppState>, headers: HeaderMap, body: String) -> Response<Body> {
    if let Some(token) = session::token_from_cookies(&headers) {
        let form = serde_urlencoded::from_str::<LogoutForm>(&body).ok();
        let presented = form.and_then(|f| f.csrf).unwrap_or_default();
        match session::get(&state.engine, token).await {
            Some(signed) if !signed.csrf_matches(&presented) => {
                return html(
                    StatusCode::FORBIDDEN,
                    login_html("/", Some("Sign-out must come from this site's own page.")),
                );
            }
            _ => session::sign_out(&state.engine, token).await,
        }
    }
    redirect("/login", Some(session::clear_cookie()))
}

/// Every page: the shell with the navigation the role allows; the script
/// fills `<main>`.
async fn shell(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: axum::http::Uri,
) -> Response<Body> {
    let Some(signed) = session::of_request(&state.engine, &headers).await else {
        let here = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let next: String = form_urlencoded::byte_serialize(here.as_bytes()).collect();
        return redirect(&format!("/login?next={next}"), None);
    };
    let role = signed.principal.role;
    let caps = capability_names(role);
    let nav = [
        ("/", "Overview", None),
        ("/segments", "Segments", Some(Capability::Read)),
        ("/users", "Users", Some(Capability::Read)),
        ("/experiments", "Experiments", Some(Capability::Read)),
        ("/ingest", "Ingestion", Some(Capability::ReadIngest)),
        ("/keys", "API keys", Some(Capability::ManageKeys)),
        ("/audit", "Audit log", Some(Capability::ReadAudit)),
    ]
    .into_iter()
    .filter(|(_, _, need)| need.is_none_or(|c| role.can(c)))
    .map(|(href, label, _)| format!(r#"<a href="{href}" data-nav="{href}">{label}</a>"#))
    .collect::<String>();
    let body = format!(
        r#"{head}<meta name="csrf-token" content="{csrf}">
<script src="{js}" defer></script>
</head>
<body data-role="{role}" data-caps="{caps}" data-key-id="{key_id}">
<header class="topbar">
  <a class="brand" href="/"><img src="{icon}" alt="" width="22" height="22"><span>Stratify</span></a>
  <nav class="nav">{nav}</nav>
  <div class="who"><span class="role-badge">{role}</span>
    <form method="post" action="/logout"><input type="hidden" name="csrf" value="{csrf}"><button type="submit" class="link">Sign out</button></form>
  </div>
</header>
<main id="app" class="page"><p class="muted">Loading…</p></main>
<div id="toast" class="toast" role="status" aria-live="polite"></div>
</body>
</html>
"#,
        head = head("Dashboard"),
        csrf = escape(&signed.csrf),
        js = asset_url("app.js"),
        icon = asset_url("favicon.svg"),
        caps = caps.join(" "),
        key_id = escape(&signed.principal.key_id),
    );
    html(StatusCode::OK, body)
}

async fn serve_asset(Path(name): Path<String>, headers: HeaderMap) -> Response<Body> {
    let Some((_, asset)) = ASSETS.iter().find(|(n, _)| *n == name) else {
        return crate::ApiError::for_status(StatusCode::NOT_FOUND).into_response();
    };
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == asset.etag);
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        asset.body.into_response()
    };
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(v) = HeaderValue::from_str(&asset.etag) {
        h.insert(header::ETAG, v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_this_site() {
        assert_eq!(safe_next(Some("/segments/abc")), "/segments/abc");
        assert_eq!(safe_next(Some("//evil.example")), "/");
        assert_eq!(safe_next(Some("https://evil.example")), "/");
        assert_eq!(safe_next(Some("/\\evil.example")), "/");
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn escaping_covers_attribute_and_text_contexts() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn applications_keys_cannot_sign_in() {
        assert!(may_sign_in(Role::Admin));
        assert!(may_sign_in(Role::Ops));
        assert!(may_sign_in(Role::Viewer));
        assert!(!may_sign_in(Role::Sdk));
        assert!(!may_sign_in(Role::Ingest));
        assert_eq!(
            capability_names(Role::Viewer),
            ["read", "read_schemas", "ingest", "evaluate"]
        );
    }
}

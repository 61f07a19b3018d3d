//! Dashboard sessions: signing in with an API key gives the browser an
//! opaque token in a `Secure; HttpOnly; SameSite=Strict` cookie. Sessions
//! live in the store (shared by every node of a cluster, so a load balancer
//! may send the browser anywhere; kept across restarts), as the SHA-256 of
//! the token and the id of the key, which is checked again on every request:
//! a revoked key ends its sessions at once. The key itself is never kept.
//!
//! Requests that change something with a session must also carry the
//! session's CSRF token in `X-CSRF-Token` (the page gets it in a `<meta>`).

use rand::RngCore;
use sha2::{Digest, Sha256};
use stratify_core::time::Millis;
use stratify_engine::keys::Principal;
use stratify_engine::model::SessionRecord;
use stratify_engine::Engine;
use subtle::ConstantTimeEq;

pub const COOKIE: &str = "stratify_session";
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lasts from sign-in.
pub const LIFETIME_MS: Millis = 12 * 3600 * 1000;
/// At most this many sessions are kept; signing in past it drops the one
/// that ends first.
const MAX_SESSIONS: u32 = 10_000;

/// A signed-in browser, as a request sees it.
#[derive(Debug, Clone)]
pub struct Signed {
    pub principal: Principal,
    pub csrf: String,
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn digest(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Starts a session for the key `key_id` (authenticated by the caller);
/// returns the cookie's token, or `None` when the store failed.
pub async fn sign_in(engine: &Engine, key_id: &str) -> Option<String> {
    let token = random_token();
    let now = engine.now();
    let session = SessionRecord {
        token_hash: digest(&token),
        key_id: key_id.to_owned(),
        csrf: random_token(),
        expires_at: now + LIFETIME_MS,
    };
    match engine
        .store()
        .create_session(session, now, MAX_SESSIONS)
        .await
    {
        Ok(()) => Some(token),
        Err(e) => {
            tracing::error!(error = %e, "cannot store a dashboard session");
            None
        }
    }
}

/// The session of a cookie token, if it is live and its key still valid.
pub async fn get(engine: &Engine, token: &str) -> Option<Signed> {
    let hash = digest(token);
    let session = match engine.store().session(hash.clone(), engine.now()).await {
        Ok(s) => s?,
        Err(e) => {
            tracing::error!(error = %e, "cannot read a dashboard session");
            return None;
        }
    };
    let Some(principal) = engine.keys.principal(&session.key_id) else {
        end(engine, hash).await;
        return None;
    };
    Some(Signed {
        principal,
        csrf: session.csrf,
    })
}

/// The session of the request's cookie, if any.
pub async fn of_request(engine: &Engine, headers: &axum::http::HeaderMap) -> Option<Signed> {
    match token_from_cookies(headers) {
        Some(token) => get(engine, token).await,
        None => None,
    }
}

pub async fn sign_out(engine: &Engine, token: &str) {
    end(engine, digest(token)).await;
}

async fn end(engine: &Engine, hash: Vec<u8>) {
    if let Err(e) = engine.store().delete_session(hash).await {
        tracing::error!(error = %e, "cannot delete a dashboard session");
    }
}

impl Signed {
    /// Whether `presented` is this session's CSRF token (constant time).
    pub fn csrf_matches(&self, presented: &str) -> bool {
        presented.len() == self.csrf.len()
            && bool::from(presented.as_bytes().ct_eq(self.csrf.as_bytes()))
    }
}

/// The session token in a `Cookie` header, if any.
pub fn token_from_cookies(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
        .filter(|v| !v.is_empty())
}

/// The `Set-Cookie` value that stores `token`.
pub fn set_cookie(token: &str) -> String {
    format!(
        "{COOKIE}={token}; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age={}",
        LIFETIME_MS / 1000
    )
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0")
}

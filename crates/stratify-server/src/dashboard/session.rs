//! Dashboard sessions: signing in with an API key gives the browser an
//! opaque token in a `Secure; HttpOnly; SameSite=Strict` cookie. The key
//! itself stays on the server and is checked again on every request, so a
//! revoked key ends its sessions at once.
//!
//! Requests that change something with a session must also carry the
//! session's CSRF token in `X-CSRF-Token` (the page gets it in a `<meta>`).

use parking_lot::Mutex;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use stratify_core::time::Millis;
use stratify_engine::keys::Principal;
use stratify_engine::Engine;
use subtle::ConstantTimeEq;

pub const COOKIE: &str = "stratify_session";
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lasts from sign-in.
pub const LIFETIME_MS: Millis = 12 * 3600 * 1000;
/// At most this many sessions are kept; signing in past it drops the
/// oldest.
const MAX_SESSIONS: usize = 10_000;

struct Session {
    /// The key that signed in, re-authenticated on every request.
    key: String,
    csrf: String,
    expires_at: Millis,
}

/// A signed-in browser, as a request sees it.
#[derive(Debug, Clone)]
pub struct Signed {
    pub principal: Principal,
    pub csrf: String,
}

#[derive(Default)]
pub struct Sessions {
    /// By the SHA-256 of the cookie's token: the map never holds a token a
    /// browser could present.
    by_hash: Mutex<HashMap<[u8; 32], Session>>,
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Sessions {
    /// Starts a session for `key` (already authenticated by the caller);
    /// returns the cookie's token.
    pub fn sign_in(&self, key: &str, now: Millis) -> String {
        let token = random_token();
        let mut map = self.by_hash.lock();
        map.retain(|_, s| s.expires_at > now);
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.expires_at)
                .map(|(h, _)| *h)
            {
                map.remove(&oldest);
            }
        }
        map.insert(
            digest(&token),
            Session {
                key: key.to_owned(),
                csrf: random_token(),
                expires_at: now + LIFETIME_MS,
            },
        );
        token
    }

    /// The session of a cookie token, if it is live and its key still valid.
    pub fn get(&self, engine: &Engine, token: &str) -> Option<Signed> {
        let hash = digest(token);
        let now = engine.now();
        let mut map = self.by_hash.lock();
        let session = map.get(&hash)?;
        if session.expires_at <= now {
            map.remove(&hash);
            return None;
        }
        let Some(principal) = engine.keys.authenticate(&session.key) else {
            map.remove(&hash);
            return None;
        };
        Some(Signed {
            principal,
            csrf: session.csrf.clone(),
        })
    }

    pub fn sign_out(&self, token: &str) {
        self.by_hash.lock().remove(&digest(token));
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

//! Webhooks: the change log pushed to registered URLs, at least once.
//!
//! When several nodes share the store, every node keeps a deliverer per
//! webhook but only the holder of the webhook's lease (`webhook:<id>`,
//! renewed every second, taken over [`LEASE`] after its holder stops)
//! delivers, from the cursor in the store: each batch is POSTed by one node.
//! Webhooks created or deleted on another node start or stop here at the
//! next configuration reload.
//!
//! Each webhook has a durable cursor (`delivered_seq`). Its deliverer reads
//! the changes after the cursor (of its segments), POSTs them as one JSON
//! batch signed per Standard Webhooks (`webhook-id`, `webhook-timestamp`,
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`
//! under the `whsec_` secret), and moves the cursor only after a 2xx.
//! Redirects are not followed: a 3xx is a failure. Failures are retried with
//! exponential backoff (1 s doubling to 5 min); every change carries its
//! `seq` so receivers can de-duplicate.
//!
//! Targets: `http://` or `https://` (rustls, the public roots plus
//! `webhook_ca_file`). Loopback, link-local, private, multicast and
//! unspecified addresses are refused unless `webhook_allow_private` is set,
//! when the webhook is created and again at every delivery, on the address
//! the connection is made to (a name that later resolves to 169.254.169.254
//! is refused then: DNS rebinding).

use crate::feed::ChangeView;
use crate::{EngineError, Limits, WebhookPolicy};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::Serialize;
use serde_json::json;
use sha2::Sha256;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use stratify_core::time::Millis;
use stratify_core::ErrorCode;
use stratify_core::ValidationError;
use stratify_store::WebhookRecord;

/// Most changes in one delivery.
pub const MAX_BATCH: u32 = 500;
const MAX_URL: usize = 2048;
/// A secret's key is 24 to 64 bytes (Standard Webhooks).
const MIN_SECRET: usize = 24;
const MAX_SECRET: usize = 64;
const SECRET_PREFIX: &str = "whsec_";
const TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How long a node's hold on a webhook outlives its last renewal.
pub const LEASE: Duration = Duration::from_secs(5);
/// How often a deliverer renews its lease (or tries to take it over).
const RENEW_EVERY: Duration = Duration::from_secs(1);

/// The HMAC key of a secret: the bytes after `whsec_`, base64-decoded.
/// (Webhooks created before Standard Webhooks signing kept a plain text
/// secret; its bytes are the key.)
fn secret_key(secret: &str) -> Vec<u8> {
    secret
        .strip_prefix(SECRET_PREFIX)
        .and_then(|b| BASE64.decode(b).ok())
        .unwrap_or_else(|| secret.as_bytes().to_vec())
}

/// `v1,<base64 of HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`: the
/// `webhook-signature` of a delivery (Standard Webhooks).
pub fn signature(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(&secret_key(secret))
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
}

/// A new secret: `whsec_` and 32 random bytes in base64.
fn generate_secret() -> String {
    use rand::RngCore;
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    format!("{SECRET_PREFIX}{}", BASE64.encode(key))
}

/// Why an address is not a webhook target (unless private targets are
/// allowed): loopback, unspecified, link-local (cloud metadata lives at
/// 169.254.169.254), private and shared ranges, multicast and broadcast.
pub fn refused_address(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_loopback() {
                Some("loopback")
            } else if v4.is_unspecified() || o[0] == 0 {
                Some("unspecified")
            } else if v4.is_link_local() {
                Some("link-local")
            } else if v4.is_private() || (o[0] == 100 && (o[1] & 0xc0) == 64) {
                Some("private")
            } else if v4.is_multicast() || v4.is_broadcast() || o[0] >= 240 {
                Some("multicast or reserved")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return refused_address(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            if v6.is_loopback() {
                Some("loopback")
            } else if v6.is_unspecified() {
                Some("unspecified")
            } else if (first & 0xffc0) == 0xfe80 {
                Some("link-local")
            } else if (first & 0xfe00) == 0xfc00 {
                Some("private")
            } else if v6.is_multicast() {
                Some("multicast or reserved")
            } else {
                None
            }
        }
    }
}

/// Resolves names for deliveries and keeps only addresses that may be
/// targets: the connection is made to an address checked at that moment.
struct GuardedResolver;

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found
                .iter()
                .copied()
                .filter(|a| refused_address(a.ip()).is_none())
                .collect();
            if allowed.is_empty() {
                let why = found
                    .first()
                    .and_then(|a| refused_address(a.ip()))
                    .unwrap_or("no address");
                return Err(format!("'{host}' resolves to a refused address ({why})").into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Checks a target URL's host now: an address literal directly, a name by
/// resolving it (every address must be allowed).
async fn check_target(url: &reqwest::Url, policy: &WebhookPolicy) -> Result<(), String> {
    if policy.allow_private {
        return Ok(());
    }
    let addrs: Vec<IpAddr> = match url.host() {
        Some(url::Host::Ipv4(ip)) => vec![IpAddr::V4(ip)],
        Some(url::Host::Ipv6(ip)) => vec![IpAddr::V6(ip)],
        Some(url::Host::Domain(name)) => tokio::net::lookup_host((name, 0))
            .await
            .map_err(|e| format!("'{name}' does not resolve ({e})"))?
            .map(|a| a.ip())
            .collect(),
        None => return Err("the URL has no host".into()),
    };
    for ip in addrs {
        if let Some(why) = refused_address(ip) {
            return Err(format!(
                "{ip} is a {why} address (set webhook_allow_private to deliver there)"
            ));
        }
    }
    Ok(())
}

/// The HTTP client deliveries use: no redirects, rustls with the public
/// roots (and the configured extra ones), names resolved through
/// [`GuardedResolver`] unless private targets are allowed.
fn delivery_client(policy: &WebhookPolicy) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .use_rustls_tls();
    if !policy.allow_private {
        builder = builder.dns_resolver(Arc::new(GuardedResolver));
    }
    if let Some(pem) = &policy.extra_roots_pem {
        for cert in reqwest::Certificate::from_pem_bundle(pem).map_err(|e| e.to_string())? {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(|e| e.to_string())
}

/// A webhook as the API shows it (never its secret).
#[derive(Debug, Clone, Serialize)]
pub struct WebhookView {
    pub id: String,
    pub url: String,
    pub segment_ids: Option<Vec<String>>,
    pub created_at: String,
    pub delivered_seq: i64,
    pub failures: i64,
    pub last_error: Option<String>,
    pub last_attempt_at: Option<String>,
}

impl From<&WebhookRecord> for WebhookView {
    fn from(w: &WebhookRecord) -> Self {
        Self {
            id: w.id.clone(),
            url: w.url.clone(),
            segment_ids: w.segment_ids.clone(),
            created_at: stratify_core::time::format_rfc3339(w.created_at),
            delivered_seq: w.delivered_seq,
            failures: w.failures,
            last_error: w.last_error.clone(),
            last_attempt_at: w.last_attempt_at.map(stratify_core::time::format_rfc3339),
        }
    }
}

/// Running deliverers, by webhook id (dropping the handle stops one).
#[derive(Default)]
pub(crate) struct Deliverers {
    running: parking_lot::Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
    /// `None` until deliverers start; then `Some(None)` alone, or
    /// `Some(Some(node))` when deliveries go under per-webhook leases.
    holder: parking_lot::Mutex<Option<Option<String>>>,
}

impl Deliverers {
    pub(crate) fn stop_all(&self) {
        for (_, h) in self.running.lock().drain() {
            h.abort();
        }
    }
}

/// What a deliverer's lease call found.
enum Hold {
    /// Still this node's.
    Renewed,
    /// Just taken: deliver from the cursor in the store (another node may
    /// have moved it).
    Taken { cursor: i64, failures: i64 },
    /// Another node's, or the store could not say (or the webhook is gone).
    Elsewhere,
}

fn invalid(code: ErrorCode, message: &str, field: &str) -> EngineError {
    EngineError::Invalid(ValidationError::new(code, message).at(field))
}

/// Webhooks: definitions and their deliverers.
pub struct WebhookService {
    pub(crate) store: Arc<dyn stratify_store::Store>,
    pub(crate) clock: Arc<dyn crate::Clock>,
    pub(crate) deliverers: Arc<Deliverers>,
    pub(crate) segments: Arc<crate::segments::Segments>,
    pub(crate) views: Arc<crate::derived::Views>,
    pub(crate) policy: Arc<WebhookPolicy>,
    pub(crate) limits: Arc<Limits>,
}

/// A webhook just created, with its secret when the server generated it
/// (shown this once).
pub struct CreatedWebhook {
    pub webhook: WebhookView,
    pub generated_secret: Option<String>,
}

impl WebhookService {
    /// Registers a webhook; deliveries start with changes after now. With
    /// no `secret` the server generates one (returned this once).
    pub async fn create_webhook(
        self: &Arc<Self>,
        url: String,
        segment_ids: Option<Vec<String>>,
        secret: Option<String>,
    ) -> Result<CreatedWebhook, EngineError> {
        let parsed = match url.parse::<reqwest::Url>() {
            Ok(u)
                if url.len() <= MAX_URL
                    && matches!(u.scheme(), "http" | "https")
                    && u.host().is_some() =>
            {
                u
            }
            _ => {
                return Err(invalid(
                    ErrorCode::InvalidUrl,
                    "url must be an http:// or https:// URL of at most 2048 bytes",
                    "/url",
                ))
            }
        };
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(invalid(
                ErrorCode::InvalidUrl,
                "url must not carry credentials (the signature authenticates deliveries)",
                "/url",
            ));
        }
        if let Err(why) = check_target(&parsed, &self.policy).await {
            return Err(invalid(ErrorCode::InvalidUrl, &why, "/url"));
        }
        let generated_secret = secret.is_none().then(generate_secret);
        let secret = match secret {
            Some(s) => {
                let key_len = s
                    .strip_prefix(SECRET_PREFIX)
                    .and_then(|b| BASE64.decode(b).ok())
                    .map(|k| k.len());
                if !key_len.is_some_and(|n| (MIN_SECRET..=MAX_SECRET).contains(&n)) {
                    return Err(invalid(
                        ErrorCode::InvalidSecret,
                        "secret must be whsec_ followed by the base64 of 24 to 64 bytes (omit it and the server generates one)",
                        "/secret",
                    ));
                }
                s
            }
            None => generated_secret.clone().unwrap_or_default(),
        };
        if let Some(ids) = &segment_ids {
            if ids.is_empty() || ids.len() > 1000 {
                return Err(invalid(
                    ErrorCode::InvalidSegmentIds,
                    "segment_ids lists 1 to 1000 segments (omit it for all)",
                    "/segment_ids",
                ));
            }
            for (i, id) in ids.iter().enumerate() {
                if self.segments.get(id).is_err() {
                    return Err(EngineError::Invalid(
                        ValidationError::new(
                            ErrorCode::SegmentNotFound,
                            format!("no segment '{id}'"),
                        )
                        .at(format!("/segment_ids/{i}")),
                    ));
                }
            }
        }
        if self.store.webhooks().await?.len() >= self.limits.webhooks {
            return Err(EngineError::Conflict {
                code: ErrorCode::TooManyWebhooks,
                message: format!(
                    "at most {} webhooks (limit `webhooks`)",
                    self.limits.webhooks
                ),
            });
        }
        let record = WebhookRecord {
            id: crate::segments::new_id("whk"),
            url,
            segment_ids,
            secret,
            created_at: self.clock.now(),
            delivered_seq: self.store.last_change_seq().await?,
            failures: 0,
            last_error: None,
            last_attempt_at: None,
        };
        self.store.create_webhook(record.clone()).await?;
        self.start_deliverer(record.clone());
        Ok(CreatedWebhook {
            webhook: WebhookView::from(&record),
            generated_secret,
        })
    }

    pub async fn webhooks(&self) -> Result<Vec<WebhookView>, EngineError> {
        Ok(self
            .store
            .webhooks()
            .await?
            .iter()
            .map(WebhookView::from)
            .collect())
    }

    pub async fn delete_webhook(&self, id: &str) -> Result<(), EngineError> {
        if let Some(h) = self.deliverers.running.lock().remove(id) {
            h.abort();
        }
        if self.store.delete_webhook(id).await? {
            Ok(())
        } else {
            Err(EngineError::NotFound {
                code: ErrorCode::WebhookNotFound,
                message: format!("no webhook '{id}'"),
            })
        }
    }

    /// Starts a deliverer for every stored webhook. `lease_holder` is this
    /// node's id when several nodes share the store (each webhook is then
    /// delivered by whichever node holds its lease), `None` alone.
    pub async fn start_deliverers(
        self: &Arc<Self>,
        lease_holder: Option<String>,
    ) -> Result<(), EngineError> {
        *self.deliverers.holder.lock() = Some(lease_holder);
        self.sync_deliverers().await
    }

    /// Starts deliverers for webhooks that have none and stops those of
    /// webhooks that are gone (after another node changed them).
    pub(crate) async fn sync_deliverers(self: &Arc<Self>) -> Result<(), EngineError> {
        if self.deliverers.holder.lock().is_none() {
            return Ok(());
        }
        let hooks = self.store.webhooks().await?;
        let ids: std::collections::HashSet<&str> = hooks.iter().map(|h| h.id.as_str()).collect();
        self.deliverers.running.lock().retain(|id, task| {
            let keep = ids.contains(id.as_str());
            if !keep {
                task.abort();
            }
            keep
        });
        for hook in hooks {
            if !self.deliverers.running.lock().contains_key(&hook.id) {
                self.start_deliverer(hook);
            }
        }
        Ok(())
    }

    fn start_deliverer(self: &Arc<Self>, hook: WebhookRecord) {
        let Some(holder) = self.deliverers.holder.lock().clone() else {
            return;
        };
        let engine = Arc::clone(self);
        let id = hook.id.clone();
        let task = tokio::spawn(async move { engine.deliver(hook, holder).await });
        if let Some(old) = self.deliverers.running.lock().insert(id, task) {
            old.abort();
        }
    }

    /// Takes or renews `node`'s lease on a webhook.
    async fn hold(&self, hook: &WebhookRecord, node: &str, held: bool) -> Hold {
        let now = self.clock.now();
        let lease = format!("webhook:{}", hook.id);
        match self
            .store
            .hold_lease(&lease, node, now, now + LEASE.as_millis() as i64)
            .await
        {
            Ok(Some(_)) if held => Hold::Renewed,
            Ok(Some(_)) => match self.store.webhooks().await {
                Ok(all) => all
                    .into_iter()
                    .find(|h| h.id == hook.id)
                    .map_or(Hold::Elsewhere, |h| Hold::Taken {
                        cursor: h.delivered_seq,
                        failures: h.failures,
                    }),
                Err(e) => {
                    tracing::warn!(error = %e, "webhooks: cannot read the cursor");
                    Hold::Elsewhere
                }
            },
            Ok(None) => Hold::Elsewhere,
            Err(e) => {
                tracing::warn!(error = %e, "webhooks: cannot take the lease");
                Hold::Elsewhere
            }
        }
    }

    async fn deliver(&self, hook: WebhookRecord, lease_holder: Option<String>) {
        // A redirect is never followed (the POST would turn into a GET
        // elsewhere, and a 2xx there is not a delivery): a 3xx fails and
        // is retried.
        let client = match delivery_client(&self.policy) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "webhooks: no HTTP client");
                return;
            }
        };
        let url = match hook.url.parse::<reqwest::Url>() {
            Ok(u) => u,
            Err(e) => {
                tracing::error!(webhook = %hook.id, error = %e, "webhooks: the stored URL does not parse");
                return;
            }
        };
        // Woken by every committed batch; polls every 5 s as a backstop.
        let mut feed = self.views.live.subscribe();
        let (mut cursor, mut failures) = (hook.delivered_seq, hook.failures);
        let mut backoff = FIRST_BACKOFF;
        let mut held = false;
        let wait = if lease_holder.is_some() {
            RENEW_EVERY
        } else {
            Duration::from_secs(5)
        };
        loop {
            if let Some(node) = &lease_holder {
                match self.hold(&hook, node, held).await {
                    Hold::Renewed => {}
                    Hold::Taken {
                        cursor: c,
                        failures: f,
                    } => {
                        (cursor, failures) = (c, f);
                        held = true;
                    }
                    Hold::Elsewhere => {
                        held = false;
                        tokio::time::sleep(RENEW_EVERY).await;
                        continue;
                    }
                }
            }
            let page = match self
                .store
                .changes(hook.segment_ids.clone(), cursor, MAX_BATCH)
                .await
            {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(error = %e, "webhooks: cannot read the change log");
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            };
            let Some(last) = page.last().map(|c| c.seq) else {
                let _ = tokio::time::timeout(wait, feed.recv()).await;
                continue;
            };
            let changes: Vec<ChangeView> = page.iter().map(ChangeView::from).collect();
            let first = page.first().map_or(last, |c| c.seq);
            let body =
                json!({"webhook_id": hook.id, "last_seq": last, "changes": changes}).to_string();
            // The same batch keeps its id across retries (receivers de-duplicate by it).
            let message_id = format!("msg_{}_{first}_{last}", hook.id);
            let timestamp = self.clock.now().div_euclid(1000);
            // An address literal is checked here; names by the resolver.
            let error = match check_literal(&url, &self.policy) {
                Some(refused) => Some(refused),
                None => {
                    let result = client
                        .post(url.clone())
                        .header("content-type", "application/json")
                        .header("webhook-id", &message_id)
                        .header("webhook-timestamp", timestamp.to_string())
                        .header(
                            "webhook-signature",
                            signature(&hook.secret, &message_id, timestamp, body.as_bytes()),
                        )
                        .header("x-stratify-last-seq", last.to_string())
                        .body(body)
                        .send()
                        .await;
                    match result {
                        Ok(r) if r.status().is_success() => None,
                        Ok(r) => Some(format!("HTTP {}", r.status().as_u16())),
                        Err(e) => Some(error_chain(&e)),
                    }
                }
            };
            let now: Millis = self.clock.now();
            match error {
                None => {
                    cursor = last;
                    failures = 0;
                    backoff = FIRST_BACKOFF;
                    if let Err(e) = self
                        .store
                        .record_delivery(&hook.id, cursor, 0, None, now)
                        .await
                    {
                        tracing::error!(error = %e, "webhooks: cannot record a delivery");
                    }
                }
                Some(err) => {
                    failures += 1;
                    tracing::warn!(webhook = %hook.id, error = %err, failures, "webhook delivery failed; retrying");
                    let _ = self
                        .store
                        .record_delivery(&hook.id, cursor, failures, Some(err), now)
                        .await;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// Why a URL whose host is an address literal may not be delivered to now.
fn check_literal(url: &reqwest::Url, policy: &WebhookPolicy) -> Option<String> {
    if policy.allow_private {
        return None;
    }
    let ip = match url.host()? {
        url::Host::Ipv4(ip) => IpAddr::V4(ip),
        url::Host::Ipv6(ip) => IpAddr::V6(ip),
        url::Host::Domain(_) => return None,
    };
    refused_address(ip).map(|why| format!("refused: {ip} is a {why} address"))
}

/// An error with its causes (reqwest's own message hides the resolver's).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_loopback_link_local_and_unspecified_addresses_are_refused() {
        for ip in [
            "127.0.0.1",
            "127.8.0.1",
            "0.0.0.0",
            "169.254.169.254",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
        ] {
            let ip: IpAddr = ip.parse().unwrap_or_else(|e| unreachable!("{e}"));
            assert!(refused_address(ip).is_some(), "{ip} must be refused");
        }
        for ip in [
            "93.184.216.34",
            "172.32.0.1",
            "100.128.0.1",
            "8.8.8.8",
            "2606:4700::1111",
        ] {
            let ip: IpAddr = ip.parse().unwrap_or_else(|e| unreachable!("{e}"));
            assert_eq!(refused_address(ip), None, "{ip} is public");
        }
    }

    #[test]
    fn the_signature_follows_standard_webhooks() {
        // Expected value from the reference: standardwebhooks 1.1.0 (PyPI),
        // `Webhook(secret).sign(id, datetime.fromtimestamp(1674087231, UTC), body)`.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let body = br#"{"type":"contact.created","timestamp":"2022-11-03T20:26:10.344522Z","data":{"id":"1f81eb52-5198-4599-803e-771906343485","type":"contact"}}"#;
        assert_eq!(
            signature(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1674087231, body),
            "v1,TaTbcxkzXifMspGcoxSprGFR91MImpMvmSrBUjU9YKU="
        );
    }
}

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
//! batch signed with HMAC-SHA256 of the body under the webhook's secret
//! (`X-Stratify-Signature: sha256=<hex>`), and moves the cursor only after a
//! 2xx. Redirects are not followed: a 3xx is a failure. Failures are
//! retried with exponential backoff (1 s doubling to 5 min); every change
//! carries its `seq` so receivers can de-duplicate.

use crate::feed::ChangeView;
use crate::EngineError;
use hmac::{Hmac, Mac};
use serde::Serialize;
use serde_json::json;
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use stratify_core::time::Millis;
use stratify_core::ErrorCode;
use stratify_core::ValidationError;
use stratify_store::WebhookRecord;

/// Most changes in one delivery.
pub const MAX_BATCH: u32 = 500;
/// Most webhooks.
pub const MAX_WEBHOOKS: usize = 100;
const MAX_URL: usize = 2048;
const MIN_SECRET: usize = 16;
const MAX_SECRET: usize = 256;
const TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How long a node's hold on a webhook outlives its last renewal.
pub const LEASE: Duration = Duration::from_secs(5);
/// How often a deliverer renews its lease (or tries to take it over).
const RENEW_EVERY: Duration = Duration::from_secs(1);

pub const SIGNATURE_HEADER: &str = "x-stratify-signature";

/// `sha256=<hex of HMAC-SHA256(secret, body)>`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
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
}

impl WebhookService {
    /// Registers a webhook; deliveries start with changes after now.
    pub async fn create_webhook(
        self: &Arc<Self>,
        url: String,
        segment_ids: Option<Vec<String>>,
        secret: String,
    ) -> Result<WebhookView, EngineError> {
        if url.len() > MAX_URL || !(url.starts_with("http://") && url.len() > 7) {
            return Err(invalid(
                ErrorCode::InvalidUrl,
                "url must be an http:// URL of at most 2048 bytes (https delivery is not built in yet)",
                "/url",
            ));
        }
        if url.parse::<reqwest::Url>().is_err() {
            return Err(invalid(
                ErrorCode::InvalidUrl,
                "url is not a valid URL",
                "/url",
            ));
        }
        if !(MIN_SECRET..=MAX_SECRET).contains(&secret.len()) {
            return Err(invalid(
                ErrorCode::InvalidSecret,
                "secret must be 16 to 256 bytes",
                "/secret",
            ));
        }
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
        if self.store.webhooks().await?.len() >= MAX_WEBHOOKS {
            return Err(EngineError::Conflict {
                code: ErrorCode::TooManyWebhooks,
                message: format!("at most {MAX_WEBHOOKS} webhooks"),
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
        Ok(WebhookView::from(&record))
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
        let client = match reqwest::Client::builder()
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "webhooks: no HTTP client");
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
            let body =
                json!({"webhook_id": hook.id, "last_seq": last, "changes": changes}).to_string();
            let result = client
                .post(&hook.url)
                .header("content-type", "application/json")
                .header(SIGNATURE_HEADER, signature(&hook.secret, body.as_bytes()))
                .header("x-stratify-webhook-id", &hook.id)
                .header("x-stratify-last-seq", last.to_string())
                .body(body)
                .send()
                .await;
            let error = match result {
                Ok(r) if r.status().is_success() => None,
                Ok(r) => Some(format!("HTTP {}", r.status().as_u16())),
                Err(e) => Some(format!("{e}")),
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

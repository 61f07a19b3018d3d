//! Live memberships over HTTP: the change log (pages, Server-Sent Events, a
//! WebSocket), webhooks, membership history and segment size over time.

use super::paging::{paginate, Order, PageQuery};
use super::users::user_id;
use crate::extract::{Body, Params};
use crate::{ApiError, AppState};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use stratify_core::ErrorCode;
use stratify_engine::feed::FeedService;
use stratify_engine::feed::{Bucket, ChangeView, MembershipView, SizePoint, MAX_CHANGES_PAGE};
use stratify_engine::webhooks::WebhookService;
use stratify_engine::webhooks::WebhookView;
use utoipa::{IntoParams, ToSchema};

const DEFAULT_LIMIT: u32 = 100;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ChangesQuery {
    /// Only changes with a larger sequence number (default 0: from the start).
    after: Option<i64>,
    /// 1–10000, default 100.
    limit: Option<u32>,
    /// `asc` (default: oldest first, after `after`) or `desc`: the newest
    /// `limit` changes, newest first (then `next_after` is the newest seq,
    /// to follow on from).
    order: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct ChangeOut {
    seq: i64,
    segment_id: String,
    user_id: String,
    /// `entered` or `exited`.
    change: &'static str,
    /// RFC 3339, milliseconds.
    at: String,
    /// `{"event_id": .., "event_seq": ..}`, `"time"`, `"rule_change"`, `"attribute_change"`, `"refresh"` or `"identify"`.
    #[schema(value_type = Value)]
    cause: serde_json::Value,
}

impl From<ChangeView> for ChangeOut {
    fn from(c: ChangeView) -> Self {
        Self {
            seq: c.seq,
            segment_id: c.segment_id,
            user_id: c.user_id,
            change: c.change,
            at: c.at,
            cause: c.cause,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ChangesPage {
    changes: Vec<ChangeOut>,
    /// Pass as `after` for the next page (the last `seq` returned, or `after` when none).
    next_after: i64,
}

fn after(v: Option<i64>) -> Result<i64, ApiError> {
    match v {
        Some(a) if a < 0 => Err(ApiError::new(
            ErrorCode::InvalidAfter,
            "after is a sequence number, 0 or more",
        )
        .at("/after")),
        v => Ok(v.unwrap_or(0)),
    }
}

/// A segment's entered/exited changes in sequence order.
#[utoipa::path(get, path = "/v1/segments/{id}/changes", tag = "live", security(("api_key" = [])),
    params(("id" = String, Path), ChangesQuery), responses((status = 200, body = ChangesPage), (status = 404), (status = 422)))]
pub async fn segment_changes(
    State(feed): State<Arc<FeedService>>,
    Path(id): Path<String>,
    Params(q): Params<ChangesQuery>,
) -> Result<Json<ChangesPage>, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_CHANGES_PAGE).contains(&limit) {
        return Err(ApiError::new(
            ErrorCode::InvalidLimit,
            format!("limit is 1 to {MAX_CHANGES_PAGE}"),
        )
        .at("/limit"));
    }
    let (changes, next_after) = match q.order.as_deref() {
        None | Some("asc") => feed.segment_changes(&id, after(q.after)?, limit).await?,
        Some("desc") if q.after.is_none() => feed.latest_segment_changes(&id, limit).await?,
        Some("desc") => {
            return Err(ApiError::new(
                ErrorCode::InvalidOrder,
                "order=desc gives the newest changes; it takes no `after`",
            )
            .at("/after"))
        }
        Some(_) => {
            return Err(ApiError::new(ErrorCode::InvalidOrder, "order is asc or desc").at("/order"))
        }
    };
    Ok(Json(ChangesPage {
        changes: changes.into_iter().map(ChangeOut::from).collect(),
        next_after,
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// Only this segment's changes.
    segment_id: Option<String>,
    /// Resume after this sequence number (or send `Last-Event-ID`); default: from now on.
    after: Option<i64>,
}

/// Resolves where a stream starts: `after`, else `Last-Event-ID`, else now.
async fn stream_start(
    state: &AppState,
    q: &StreamQuery,
    headers: &HeaderMap,
) -> Result<(Option<Vec<String>>, i64), ApiError> {
    let segments = match &q.segment_id {
        Some(id) => {
            state.engine.segments.segment(id)?;
            Some(vec![id.clone()])
        }
        None => None,
    };
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok());
    let start = match (q.after, resume) {
        (Some(a), _) => after(Some(a))?,
        (None, Some(r)) => r.max(0),
        (None, None) => state.engine.feed.last_change_seq().await?,
    };
    Ok((segments, start))
}

/// The change log as Server-Sent Events (`id:` = seq, `event: change`, data = the change).
#[utoipa::path(get, path = "/v1/changes/stream", tag = "live", security(("api_key" = [])),
    params(StreamQuery), responses((status = 200, description = "text/event-stream of changes"), (status = 404)))]
pub async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    Params(q): Params<StreamQuery>,
) -> Result<Response, ApiError> {
    let permit = crate::limits::stream_permit(&state.streams, state.config.max_streams)?;
    let (segments, start) = stream_start(&state, &q, &headers).await?;
    let rx = state.engine.feed.follow(segments, start);
    let stopping = state.stopping.clone();
    // The permit lives as long as the stream.
    let events = futures_util::stream::unfold(
        (rx, stopping, permit),
        |(mut rx, mut stopping, permit)| async move {
            let c = tokio::select! {
                c = rx.recv() => c?,
                _ = stopping.wait_for(|s| *s) => return None,
            };
            let data = serde_json::to_string(&ChangeView::from(&c)).unwrap_or_default();
            let event = Event::default()
                .id(c.seq.to_string())
                .event("change")
                .data(data);
            Some((Ok::<_, Infallible>(event), (rx, stopping, permit)))
        },
    );
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// The change log over a WebSocket: one text message (a change as JSON) per change.
#[utoipa::path(get, path = "/v1/changes/ws", tag = "live", security(("api_key" = [])),
    params(StreamQuery), responses((status = 101, description = "WebSocket of changes"), (status = 404)))]
pub async fn websocket(
    State(state): State<AppState>,
    headers: HeaderMap,
    Params(q): Params<StreamQuery>,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let permit = crate::limits::stream_permit(&state.streams, state.config.max_streams)?;
    let (segments, start) = stream_start(&state, &q, &headers).await?;
    let rx = state.engine.feed.follow(segments, start);
    let stopping = state.stopping.clone();
    Ok(ws.on_upgrade(move |socket| async move {
        pump(socket, rx, stopping).await;
        drop(permit);
    }))
}

async fn pump(
    mut socket: WebSocket,
    mut rx: tokio::sync::mpsc::Receiver<stratify_engine::model::ChangeRecord>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = async { drop(stopping.wait_for(|s| *s).await) } => {
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
            change = rx.recv() => {
                let Some(c) = change else { return };
                let text = serde_json::to_string(&ChangeView::from(&c)).unwrap_or_default();
                if socket.send(Message::Text(text.into())).await.is_err() {
                    return;
                }
            }
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct MembershipOut {
    segment_id: String,
    entered_at: String,
    /// `null` while still a member.
    exited_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct Memberships {
    memberships: Vec<MembershipOut>,
    /// The next page's cursor; `null` on the last page.
    next_cursor: Option<String>,
}

impl From<MembershipView> for MembershipOut {
    fn from(m: MembershipView) -> Self {
        Self {
            segment_id: m.segment_id,
            entered_at: m.entered_at,
            exited_at: m.exited_at,
        }
    }
}

/// A user's segment memberships with entered/exited instants, newest first.
#[utoipa::path(get, path = "/v1/users/{id}/memberships", tag = "live", security(("api_key" = [])),
    params(("id" = String, Path), PageQuery), responses((status = 200, body = Memberships), (status = 404)))]
pub async fn memberships(
    State(feed): State<Arc<FeedService>>,
    Path(id): Path<String>,
    Params(q): Params<PageQuery>,
) -> Result<Json<Memberships>, ApiError> {
    let user = user_id(id, "/user_id")?;
    let list = feed.user_memberships(&user).await?;
    let (memberships, next_cursor) = paginate(
        list.into_iter().map(MembershipOut::from).collect(),
        |m| format!("{}{}", m.entered_at, m.segment_id),
        Order::Descending,
        &q,
    )?;
    Ok(Json(Memberships {
        memberships,
        next_cursor,
    }))
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SizeQuery {
    /// `hour` or `day` (default `day`).
    bucket: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct SizeOut {
    /// Start of the bucket (UTC).
    at: String,
    /// Members at the end of the bucket.
    size: u64,
    entered: u64,
    exited: u64,
}

#[derive(Serialize, ToSchema)]
pub struct SizeHistory {
    segment_id: String,
    bucket: String,
    /// Buckets with at least one change, oldest first.
    points: Vec<SizeOut>,
}

impl From<SizePoint> for SizeOut {
    fn from(p: SizePoint) -> Self {
        Self {
            at: p.at,
            size: p.size,
            entered: p.entered,
            exited: p.exited,
        }
    }
}

/// A segment's size over time, from its change log.
#[utoipa::path(get, path = "/v1/segments/{id}/size-history", tag = "live", security(("api_key" = [])),
    params(("id" = String, Path), SizeQuery), responses((status = 200, body = SizeHistory), (status = 404), (status = 422)))]
pub async fn size_history(
    State(feed): State<Arc<FeedService>>,
    Path(id): Path<String>,
    Params(q): Params<SizeQuery>,
) -> Result<Json<SizeHistory>, ApiError> {
    let name = q.bucket.unwrap_or_else(|| "day".into());
    let bucket = Bucket::parse(&name).ok_or_else(|| {
        ApiError::new(ErrorCode::InvalidBucket, "bucket is hour or day").at("/bucket")
    })?;
    let points = feed.size_history(&id, bucket).await?;
    Ok(Json(SizeHistory {
        segment_id: id,
        bucket: name,
        points: points.into_iter().map(SizeOut::from).collect(),
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// An http:// or https:// URL that receives POSTs of change batches.
    /// Loopback, link-local, private and unspecified addresses are refused
    /// unless the server sets `webhook_allow_private`.
    url: String,
    /// Only these segments' changes (default: all).
    segment_ids: Option<Vec<String>>,
    /// `whsec_` followed by the base64 of 24–64 bytes (Standard Webhooks).
    /// Omit it and the server generates one, shown once in the answer.
    /// Each delivery carries `webhook-id`, `webhook-timestamp` and
    /// `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
    secret: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct WebhookOut {
    id: String,
    url: String,
    segment_ids: Option<Vec<String>>,
    created_at: String,
    /// Every change up to this seq has been delivered.
    delivered_seq: i64,
    /// Consecutive failed attempts.
    failures: i64,
    last_error: Option<String>,
    last_attempt_at: Option<String>,
    /// The secret the server generated (only in the create answer, only
    /// when none was given): store it now, it is never shown again.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

impl From<WebhookView> for WebhookOut {
    fn from(w: WebhookView) -> Self {
        Self {
            secret: None,
            id: w.id,
            url: w.url,
            segment_ids: w.segment_ids,
            created_at: w.created_at,
            delivered_seq: w.delivered_seq,
            failures: w.failures,
            last_error: w.last_error,
            last_attempt_at: w.last_attempt_at,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct WebhookList {
    webhooks: Vec<WebhookOut>,
    /// The next page's cursor; `null` on the last page.
    next_cursor: Option<String>,
}

/// Registers a webhook: changes after now are POSTed to it, at least once, in order.
#[utoipa::path(post, path = "/v1/webhooks", tag = "live", security(("api_key" = [])), request_body = CreateWebhook,
    responses((status = 201, body = WebhookOut), (status = 422)))]
pub async fn create_webhook(
    State(webhooks): State<Arc<WebhookService>>,
    Body(req): Body<CreateWebhook>,
) -> Result<(StatusCode, Json<WebhookOut>), ApiError> {
    let created = webhooks
        .create_webhook(req.url, req.segment_ids, req.secret)
        .await?;
    let mut out = WebhookOut::from(created.webhook);
    out.secret = created.generated_secret;
    Ok((StatusCode::CREATED, Json(out)))
}

#[utoipa::path(get, path = "/v1/webhooks", tag = "live", security(("api_key" = [])), params(PageQuery), responses((status = 200, body = WebhookList)))]
pub async fn list_webhooks(
    State(webhooks): State<Arc<WebhookService>>,
    Params(q): Params<PageQuery>,
) -> Result<Json<WebhookList>, ApiError> {
    let all = webhooks
        .webhooks()
        .await?
        .into_iter()
        .map(WebhookOut::from)
        .collect();
    let (webhooks, next_cursor) = paginate(
        all,
        |w| format!("{}{}", w.created_at, w.id),
        Order::Ascending,
        &q,
    )?;
    Ok(Json(WebhookList {
        webhooks,
        next_cursor,
    }))
}

#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "live", security(("api_key" = [])), params(("id" = String, Path)),
    responses((status = 204), (status = 404)))]
pub async fn delete_webhook(
    State(webhooks): State<Arc<WebhookService>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    webhooks.delete_webhook(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

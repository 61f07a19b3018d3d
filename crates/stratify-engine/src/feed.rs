//! Reading the change log: pages per segment, a resumable follower for
//! streams (backlog from the store, then live batches, falling back to the
//! store when a follower lags), membership history, and size over time.

use crate::EngineError;
use serde::Serialize;
use serde_json::Value;
use stratify_core::ids::UserId;
use stratify_core::time::{format_rfc3339, Millis};
use stratify_core::ErrorCode;
use stratify_store::ChangeRecord;
use tokio::sync::{broadcast, mpsc};

/// Most points a size history answers with (the newest ones).
pub const MAX_SIZE_POINTS: usize = 1000;

/// Largest page of changes.
pub const MAX_CHANGES_PAGE: u32 = 10_000;
/// Most membership rows shown for one user.
pub const MAX_MEMBERSHIPS: u32 = 10_000;
/// Changes a stream follower buffers before it waits for its client.
const FOLLOW_BUFFER: usize = 4_096;

/// A change as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChangeView {
    pub seq: i64,
    pub segment_id: String,
    pub user_id: String,
    /// `entered` or `exited`.
    pub change: &'static str,
    pub at: String,
    /// `{"event_id": .., "event_seq": ..}`, `"time"`, `"rule_change"`,
    /// `"attribute_change"`, `"refresh"` or `"identify"`.
    pub cause: Value,
}

impl From<&ChangeRecord> for ChangeView {
    fn from(c: &ChangeRecord) -> Self {
        Self {
            seq: c.seq,
            segment_id: c.segment_id.clone(),
            user_id: c.user_id.clone(),
            change: if c.entered { "entered" } else { "exited" },
            at: format_rfc3339(c.at),
            cause: c.cause.to_json(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MembershipView {
    pub segment_id: String,
    pub entered_at: String,
    pub exited_at: Option<String>,
}

/// Bucket width of a size history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bucket {
    Hour,
    Day,
}

impl Bucket {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "hour" => Some(Self::Hour),
            "day" => Some(Self::Day),
            _ => None,
        }
    }

    fn millis(self) -> Millis {
        match self {
            Self::Hour => 3_600_000,
            Self::Day => 86_400_000,
        }
    }
}

/// The size of a segment at the end of a bucket, and what changed in it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SizePoint {
    pub at: String,
    pub size: u64,
    pub entered: u64,
    pub exited: u64,
}

/// The change log read back: pages, followers, memberships, size history.
pub struct FeedService {
    pub(crate) store: std::sync::Arc<dyn stratify_store::Store>,
    pub(crate) segments: std::sync::Arc<crate::segments::Segments>,
    pub(crate) views: std::sync::Arc<crate::derived::Views>,
}

impl FeedService {
    pub async fn last_change_seq(&self) -> Result<i64, EngineError> {
        Ok(self.store.last_change_seq().await?)
    }

    /// One page of a segment's changes after `after`.
    pub async fn segment_changes(
        &self,
        id: &str,
        after: i64,
        limit: u32,
    ) -> Result<(Vec<ChangeView>, i64), EngineError> {
        self.segments.get(id)?;
        let page = self
            .store
            .changes(
                Some(vec![id.to_owned()]),
                after,
                limit.min(MAX_CHANGES_PAGE),
            )
            .await?;
        let next = page.last().map_or(after, |c| c.seq);
        Ok((page.iter().map(ChangeView::from).collect(), next))
    }

    /// A segment's newest `limit` changes, newest first; the second value is
    /// the newest sequence number (to follow on with `after`).
    pub async fn latest_segment_changes(
        &self,
        id: &str,
        limit: u32,
    ) -> Result<(Vec<ChangeView>, i64), EngineError> {
        self.segments.get(id)?;
        let page = self
            .store
            .latest_changes(id, limit.min(MAX_CHANGES_PAGE))
            .await?;
        let next = page.first().map_or(0, |c| c.seq);
        Ok((page.iter().map(ChangeView::from).collect(), next))
    }

    /// Follows the change log from `after`: the backlog first, then changes
    /// as they are committed, with no gap and no repeat. Stops when the
    /// receiver is dropped.
    pub fn follow(
        &self,
        segments: Option<Vec<String>>,
        after: i64,
    ) -> mpsc::Receiver<ChangeRecord> {
        let (tx, rx) = mpsc::channel(FOLLOW_BUFFER);
        let mut live = self.views.live.subscribe();
        let store = self.store.clone();
        tokio::spawn(async move {
            let wanted =
                |c: &ChangeRecord| segments.as_ref().is_none_or(|s| s.contains(&c.segment_id));
            let mut cursor = after;
            'catch_up: loop {
                // Backlog from the store until it is exhausted.
                loop {
                    let page = match store
                        .changes(segments.clone(), cursor, MAX_CHANGES_PAGE)
                        .await
                    {
                        Ok(p) => p,
                        Err(e) => {
                            tracing::error!(error = %e, "change stream: cannot read the log");
                            return;
                        }
                    };
                    let Some(last) = page.last().map(|c| c.seq) else {
                        break;
                    };
                    for c in page {
                        if tx.send(c).await.is_err() {
                            return;
                        }
                    }
                    cursor = last;
                }
                // Then live batches; anything already sent is skipped.
                loop {
                    // A client that went away ends the follower even when
                    // nothing changes (it holds the store).
                    let next = tokio::select! {
                        next = live.recv() => next,
                        () = tx.closed() => return,
                    };
                    match next {
                        Ok(batch) => {
                            for c in batch.iter() {
                                if c.seq <= cursor {
                                    continue;
                                }
                                cursor = c.seq;
                                if wanted(c) && tx.send(c.clone()).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(_)) => continue 'catch_up,
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            }
        });
        rx
    }

    /// A user's memberships, current and past, newest first.
    pub async fn user_memberships(
        &self,
        user_id: &UserId,
    ) -> Result<Vec<MembershipView>, EngineError> {
        let user_id = &*self.views.aliases.resolve(user_id);
        if self.store.get_user(user_id).await?.is_none() {
            return Err(EngineError::NotFound {
                code: ErrorCode::UserNotFound,
                message: format!("no user '{user_id}'"),
            });
        }
        Ok(self
            .store
            .user_memberships(user_id.as_str(), MAX_MEMBERSHIPS)
            .await?
            .into_iter()
            .map(|m| MembershipView {
                segment_id: m.segment_id,
                entered_at: format_rfc3339(m.entered_at),
                exited_at: m.exited_at.map(format_rfc3339),
            })
            .collect())
    }

    /// Segment size at the end of each bucket that saw a change, oldest first.
    /// A segment's size per bucket: the newest [`MAX_SIZE_POINTS`] buckets
    /// in which members entered or left.
    pub async fn size_history(
        &self,
        id: &str,
        bucket: Bucket,
    ) -> Result<Vec<SizePoint>, EngineError> {
        self.segments.get(id)?;
        let mut size: i64 = 0;
        let buckets = self.store.change_buckets(id, bucket.millis()).await?;
        // Sizes add up from the first bucket; only the newest are shown.
        let skip = buckets.len().saturating_sub(MAX_SIZE_POINTS);
        let mut points: Vec<SizePoint> = buckets
            .into_iter()
            .map(|b| {
                size += b.entered as i64 - b.exited as i64;
                SizePoint {
                    at: format_rfc3339(b.start),
                    size: size.max(0) as u64,
                    entered: b.entered,
                    exited: b.exited,
                }
            })
            .collect();
        points.drain(..skip);
        Ok(points)
    }
}

//! The audit log: every configuration change, with the key that made it,
//! the action, the target, the time and what changed. The HTTP layer
//! records each successful configuration request ([`AuditService::record`]);
//! admins read it newest first.

use crate::EngineError;
use serde::Serialize;
use serde_json::Value;
use std::sync::Arc;
use stratify_core::time::format_rfc3339;
use stratify_core::ErrorCode;
use stratify_core::ValidationError;
use stratify_store::AuditRecord;

/// Most entries in one page.
pub const MAX_PAGE: u32 = 1000;

/// An entry as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub seq: i64,
    pub at: String,
    pub key_id: String,
    pub action: String,
    pub target_kind: String,
    pub target_id: Option<String>,
    pub changes: Value,
}

/// One page of entries and the cursor of the next (older) one.
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    pub next_cursor: Option<String>,
}

/// What one configuration change was.
pub struct Change {
    pub key_id: String,
    pub action: String,
    pub target_kind: String,
    pub target_id: Option<String>,
    pub changes: Value,
}

pub struct AuditService {
    pub(crate) store: Arc<dyn stratify_store::AuditLog>,
    pub(crate) clock: Arc<dyn crate::Clock>,
}

impl AuditService {
    pub async fn record(&self, change: Change) -> Result<(), EngineError> {
        self.store
            .append_audit(AuditRecord {
                seq: 0,
                at: self.clock.now(),
                key_id: change.key_id,
                action: change.action,
                target_kind: change.target_kind,
                target_id: change.target_id,
                changes: change.changes,
            })
            .await?;
        Ok(())
    }

    /// Entries newest first, about `target` (an id or a kind) when given.
    pub async fn entries(
        &self,
        target: Option<String>,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<AuditPage, EngineError> {
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(EngineError::Invalid(
                ValidationError::new(ErrorCode::InvalidLimit, format!("limit is 1–{MAX_PAGE}"))
                    .at("/limit"),
            ));
        }
        let before = match cursor {
            None => None,
            Some(c) => Some(c.parse::<i64>().ok().filter(|s| *s > 0).ok_or_else(|| {
                EngineError::Invalid(
                    ValidationError::new(
                        ErrorCode::InvalidCursor,
                        "the cursor is not one this list gave",
                    )
                    .at("/cursor"),
                )
            })?),
        };
        let mut rows = self.store.audit_entries(target, before, limit + 1).await?;
        let more = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let next_cursor = more
            .then(|| rows.last().map(|r| r.seq.to_string()))
            .flatten();
        Ok(AuditPage {
            entries: rows
                .into_iter()
                .map(|r| AuditEntry {
                    seq: r.seq,
                    at: format_rfc3339(r.at),
                    key_id: r.key_id,
                    action: r.action,
                    target_kind: r.target_kind,
                    target_id: r.target_id,
                    changes: r.changes,
                })
                .collect(),
            next_cursor,
        })
    }
}

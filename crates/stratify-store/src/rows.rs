//! Row mapping, written once: each record is read from a row of either
//! backend through [`Columns`] (the shared statements in [`crate::sql`]
//! select the same columns in the same order on both).

use crate::model::*;
use crate::{Result, StoreError};

/// A value both drivers can read from a column.
pub(crate) trait Column:
    rusqlite::types::FromSql + for<'a> tokio_postgres::types::FromSql<'a>
{
}

impl<T> Column for T where T: rusqlite::types::FromSql + for<'a> tokio_postgres::types::FromSql<'a> {}

/// A result row of either backend.
pub(crate) trait Columns {
    fn col<T: Column>(&self, i: usize) -> Result<T>;

    /// A column holding JSON as text.
    fn json<T: serde::de::DeserializeOwned>(&self, i: usize) -> Result<T> {
        Ok(serde_json::from_str(&self.col::<String>(i)?)?)
    }

    /// A nullable column holding JSON as text.
    fn json_opt<T: serde::de::DeserializeOwned>(&self, i: usize) -> Result<Option<T>> {
        Ok(self
            .col::<Option<String>>(i)?
            .map(|t| serde_json::from_str(&t))
            .transpose()?)
    }
}

impl Columns for rusqlite::Row<'_> {
    fn col<T: Column>(&self, i: usize) -> Result<T> {
        Ok(self.get(i)?)
    }
}

impl Columns for tokio_postgres::Row {
    fn col<T: Column>(&self, i: usize) -> Result<T> {
        Ok(self.try_get(i)?)
    }
}

/// `sql::EVENT_TYPES`
pub(crate) fn event_type(r: &impl Columns) -> Result<EventTypeRecord> {
    Ok(EventTypeRecord {
        schema: r.json(0)?,
        created_at: r.col(1)?,
        updated_at: r.col(2)?,
    })
}

fn count(r: &impl Columns, i: usize) -> Result<u64> {
    Ok(r.col::<i64>(i)?.max(0) as u64)
}

/// `sql::INGEST_STATUS`
pub(crate) fn ingest_status(r: &impl Columns) -> Result<IngestStatus> {
    let code: i64 = r.col(0)?;
    Ok(IngestStatus {
        source: Source::from_code(code)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown ingest source code {code}")))?,
        received: count(r, 1)?,
        accepted: count(r, 2)?,
        duplicates: count(r, 3)?,
        rejected: count(r, 4)?,
        last_event_at: r.col::<Option<i64>>(5)?.filter(|&t| t > 0),
        last_error: r.col(6)?,
        last_error_at: r.col(7)?,
        updated_at: r.col(8)?,
        forwarded: count(r, 9)?,
    })
}

/// `sql::SEGMENTS`
pub(crate) fn segment(r: &impl Columns) -> Result<SegmentRecord> {
    Ok(SegmentRecord {
        id: r.col(0)?,
        name: r.col(1)?,
        description: r.col(2)?,
        kind: r.col(3)?,
        rules: r.json_opt(4)?,
        version: r.col(5)?,
        created_at: r.col(6)?,
        updated_at: r.col(7)?,
        created_by: r.col(8)?,
        updated_by: r.col(9)?,
    })
}

/// `sql::SEGMENT_VERSIONS`
pub(crate) fn segment_version(r: &impl Columns) -> Result<SegmentVersion> {
    Ok(SegmentVersion {
        version: r.col(0)?,
        name: r.col(1)?,
        description: r.col(2)?,
        rules: r.json_opt(3)?,
        created_at: r.col(4)?,
        created_by: r.col(5)?,
    })
}

/// `sql::EXPERIMENTS`
pub(crate) fn experiment(r: &impl Columns) -> Result<ExperimentRecord> {
    Ok(ExperimentRecord {
        id: r.col(0)?,
        key: r.col(1)?,
        name: r.col(2)?,
        status: r.col(3)?,
        definition: r.json(4)?,
        version: r.col(5)?,
        created_at: r.col(6)?,
        updated_at: r.col(7)?,
        created_by: r.col(8)?,
        updated_by: r.col(9)?,
    })
}

/// An experiment's transitions: `from_status, to_status, at, by`.
pub(crate) fn transition(r: &impl Columns) -> Result<TransitionRecord> {
    Ok(TransitionRecord {
        from: r.col(0)?,
        to: r.col(1)?,
        at: r.col(2)?,
        by: r.col(3)?,
    })
}

/// `sql::METRICS`
pub(crate) fn metric(r: &impl Columns) -> Result<MetricRecord> {
    Ok(MetricRecord {
        key: r.col(0)?,
        definition: r.json(1)?,
        created_at: r.col(2)?,
        updated_at: r.col(3)?,
    })
}

/// `sql::WEBHOOKS`
pub(crate) fn webhook(r: &impl Columns) -> Result<WebhookRecord> {
    Ok(WebhookRecord {
        id: r.col(0)?,
        url: r.col(1)?,
        segment_ids: r.json_opt(2)?,
        secret: r.col(3)?,
        created_at: r.col(4)?,
        delivered_seq: r.col(5)?,
        failures: r.col(6)?,
        last_error: r.col(7)?,
        last_attempt_at: r.col(8)?,
    })
}

/// `sql::PARTITIONS`
pub(crate) fn partition(r: &impl Columns) -> Result<PartitionProgress> {
    Ok(PartitionProgress {
        topic: r.col(0)?,
        partition: r.col(1)?,
        committed: r.col(2)?,
        high_water: r.col(3)?,
        node: r.col(4)?,
        updated_at: r.col(5)?,
    })
}

/// `sql::API_KEYS`
pub(crate) fn api_key(r: &impl Columns) -> Result<ApiKeyRecord> {
    Ok(ApiKeyRecord {
        id: r.col(0)?,
        name: r.col(1)?,
        role: r.col(2)?,
        key_hash: r.col(3)?,
        created_at: r.col(4)?,
        revoked_at: r.col(5)?,
    })
}

/// A change: `seq, segment_id, user_id, entered, at, cause, event_seq, event_id`.
pub(crate) fn change(r: &impl Columns) -> Result<ChangeRecord> {
    Ok(ChangeRecord {
        seq: r.col(0)?,
        segment_id: r.col(1)?,
        user_id: r.col(2)?,
        entered: r.col(3)?,
        at: r.col(4)?,
        cause: Cause::from_row(r.col(5)?, r.col(6)?, r.col(7)?),
    })
}

/// `sql::USER_ASSIGNMENTS`: one packed record (seq, at, entries).
pub(crate) fn assignment_record(r: &impl Columns) -> Result<crate::packed::UserRecord> {
    Ok((r.col(0)?, r.col(1)?, r.col(2)?))
}

/// `sql::AUDIT_ENTRIES`
pub(crate) fn audit(r: &impl Columns) -> Result<AuditRecord> {
    Ok(AuditRecord {
        seq: r.col(0)?,
        at: r.col(1)?,
        key_id: r.col(2)?,
        action: r.col(3)?,
        target_kind: r.col(4)?,
        target_id: r.col(5)?,
        changes: r.json(6)?,
    })
}

/// `sql::SESSION`
pub(crate) fn session(r: &impl Columns) -> Result<SessionRecord> {
    Ok(SessionRecord {
        token_hash: r.col(0)?,
        key_id: r.col(1)?,
        csrf: r.col(2)?,
        expires_at: r.col(3)?,
    })
}

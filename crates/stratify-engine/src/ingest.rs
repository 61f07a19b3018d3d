//! Ingest: validate each event at the edge, check it against its declared
//! event type, append the valid ones in one durable write, and count every
//! item in the source's status. One bad item never sinks the batch: it is
//! reported with its index, code and reason.

use crate::EngineError;
use serde::Serialize;
use serde_json::Value;
use stratify_core::event::NewEvent;
use stratify_core::ErrorCode;
use stratify_core::ValidationError;
use stratify_store::{Appended, EventBatch, IngestReport, Source};

/// What happened to a batch. Duplicates (an `event_id` seen before) count as
/// accepted, since the event is in the log, but are not stored twice.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct IngestOutcome {
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: Vec<Rejection>,
    /// Sequence numbers of the appended events, in input order (`None` for
    /// duplicates and rejected items). Not serialised.
    #[serde(skip)]
    pub seqs: Vec<Option<i64>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rejection {
    pub index: usize,
    pub code: ErrorCode,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl Rejection {
    pub fn new(index: usize, e: ValidationError) -> Self {
        Self {
            index,
            code: e.code,
            message: e.message,
            field: e.field,
        }
    }
}

/// A durable batch whose derived views are still to be told.
pub(crate) struct AppendedBatch {
    events: std::sync::Arc<Vec<NewEvent>>,
    appended: Vec<Appended>,
}

impl AppendedBatch {
    pub(crate) fn apply(&self, derive: &dyn crate::derived::Derive) {
        derive.events_appended(&self.events, &self.appended);
    }
}

/// Ingest: events over HTTP and Kafka, orders, and bulk import.
pub struct IngestService {
    pub(crate) store: std::sync::Arc<dyn stratify_store::Store>,
    pub(crate) clock: std::sync::Arc<dyn crate::Clock>,
    pub(crate) schemas: std::sync::Arc<crate::schemas::Schemas>,
    pub(crate) derive: std::sync::Arc<dyn crate::derived::Derive>,
    pub(crate) views: std::sync::Arc<crate::derived::Views>,
    pub(crate) routing: std::sync::Arc<crate::cluster::Routing>,
}

impl IngestService {
    /// Ingests already-parsed items; an `Err` item (say, an NDJSON line that
    /// is not JSON) is rejected at its index.
    pub async fn ingest_values(
        &self,
        items: Vec<Result<Value, ValidationError>>,
        source: Source,
    ) -> Result<IngestOutcome, EngineError> {
        self.ingest_records(items, source, 0).await
    }

    /// [`IngestService::ingest_values`] for a consumer that has already
    /// handed `handed_over` more records to their users' owners (Kafka
    /// records on a partition not their user's): they are counted as
    /// received and forwarded in the same report.
    pub async fn ingest_records(
        &self,
        items: Vec<Result<Value, ValidationError>>,
        source: Source,
        handed_over: u64,
    ) -> Result<IngestOutcome, EngineError> {
        let now = self.clock.now();
        let events = items
            .into_iter()
            .map(|item| item.and_then(|v| NewEvent::from_json(v, now)))
            .collect();
        self.ingest_counted(events, source, handed_over).await
    }

    /// Ingests one order as an `order_placed` event.
    pub async fn ingest_order(&self, order: Value) -> Result<IngestOutcome, EngineError> {
        let event = NewEvent::from_order_json(order, self.clock.now());
        self.ingest_counted(vec![event], Source::Http, 0).await
    }

    async fn ingest_counted(
        &self,
        items: Vec<Result<NewEvent, ValidationError>>,
        source: Source,
        handed_over: u64,
    ) -> Result<IngestOutcome, EngineError> {
        let (outcome, derived) = self.ingest_deferred(items, source, handed_over).await?;
        if let Some(derived) = derived {
            derived.apply(self.derive.as_ref());
        }
        Ok(outcome)
    }

    /// [`Self::ingest_counted`], leaving the durable batch's derived views
    /// to the caller (an import tells them while the next batch is written).
    pub(crate) async fn ingest_deferred(
        &self,
        items: Vec<Result<NewEvent, ValidationError>>,
        source: Source,
        handed_over: u64,
    ) -> Result<(IngestOutcome, Option<AppendedBatch>), EngineError> {
        let types = self.schemas.event_types();
        let received = items.len() as u64 + handed_over;
        let mut events = Vec::with_capacity(items.len());
        let mut positions = Vec::with_capacity(items.len());
        let mut outcome = IngestOutcome {
            seqs: vec![None; items.len()],
            ..Default::default()
        };
        for (index, item) in items.into_iter().enumerate() {
            let checked = item.and_then(|e| match types.get(e.name.as_str()) {
                Some(t) => t
                    .schema
                    .check(e.properties.as_ref(), "/properties")
                    .map(|()| e),
                None => Ok(e),
            });
            match checked {
                Ok(e) => {
                    events.push(e);
                    positions.push(index);
                }
                Err(e) => outcome.rejected.push(Rejection::new(index, e)),
            }
        }
        // An id merged into a known user (identity stitching) is that user.
        let resolved = self.resolve_aliases(&mut events);
        // Events of users another node owns go to that node. Kafka records
        // arrive on their user's partition (the consumer hands the others
        // over itself, counted in `handed_over`): no check per record here,
        // unless an alias moved a record to another user.
        let forwarded = handed_over
            + if source == Source::Kafka && resolved == 0 {
                0
            } else {
                self.forward_others(&mut events, &mut positions, &mut outcome)
                    .await?
            };
        let report = IngestReport {
            source,
            received,
            rejected: outcome.rejected.len() as u64,
            forwarded,
            last_error: outcome
                .rejected
                .last()
                .map(|r| format!("{}: {}", r.code, r.message)),
            now: self.clock.now(),
        };
        if events.is_empty() {
            if received > 0 {
                self.store.record_ingest(report).await?;
            }
            return Ok((outcome, None));
        }
        self.views.live.admit().await;
        let mut events = std::sync::Arc::new(events);
        let mut report = report;
        let mut attempts = 0;
        let appended = loop {
            let batch = EventBatch {
                events: events.clone(),
                report: report.clone(),
                on_commit: Some(self.derive.commit_hook(events.clone())),
            };
            match self.store.append_events(batch).await {
                Ok(appended) => break appended,
                // Users merged (or erased) since they were resolved: the
                // store refused the whole batch; resolve again and retry.
                Err(stratify_store::StoreError::UsersMoved(moved)) if attempts < 3 => {
                    attempts += 1;
                    let known: Vec<(String, String)> = moved
                        .into_iter()
                        .filter_map(|(alias, user)| user.map(|u| (alias, u)))
                        .collect();
                    self.views.aliases.learn(&known);
                    let mut list = std::sync::Arc::try_unwrap(events)
                        .unwrap_or_else(|shared| (*shared).clone());
                    if self.resolve_aliases(&mut list) > 0 {
                        let moved_away = self
                            .forward_others(&mut list, &mut positions, &mut outcome)
                            .await?;
                        report.forwarded += moved_away;
                    }
                    if list.is_empty() {
                        self.store.record_ingest(report).await?;
                        return Ok((outcome, None));
                    }
                    events = std::sync::Arc::new(list);
                }
                Err(e) => return Err(e.into()),
            }
        };
        for (index, a) in positions.into_iter().zip(appended.iter().copied()) {
            match a {
                Appended::New(seq) => {
                    outcome.accepted += 1;
                    outcome.seqs[index] = Some(seq);
                }
                Appended::Duplicate => {
                    outcome.accepted += 1;
                    outcome.duplicates += 1;
                }
            }
        }
        Ok((outcome, Some(AppendedBatch { events, appended })))
    }

    /// Rewrites the user of every event sent under an alias to the user it
    /// resolves to; returns how many were rewritten.
    fn resolve_aliases(&self, events: &mut [NewEvent]) -> usize {
        self.views
            .aliases
            .rewrite(events.iter_mut().map(|e| &mut e.user_id))
    }

    /// On a cluster node: hands the events of users another node owns to
    /// that node (they count as accepted once it has them durably) and keeps
    /// the rest, with their input positions.
    async fn forward_others(
        &self,
        events: &mut Vec<NewEvent>,
        positions: &mut Vec<usize>,
        outcome: &mut IngestOutcome,
    ) -> Result<u64, EngineError> {
        // One node (no forwarder), or every user is this node's: nothing to do.
        let Some(forward) = self.routing.forward.read().clone() else {
            return Ok(0);
        };
        if events
            .iter()
            .all(|e| self.routing.owned(e.user_id.as_str()))
        {
            return Ok(0);
        }
        let (mine, theirs): (Vec<_>, Vec<_>) = events
            .drain(..)
            .zip(positions.drain(..))
            .partition(|(e, _)| self.routing.owned(e.user_id.as_str()));
        let theirs: Vec<NewEvent> = theirs.into_iter().map(|(e, _)| e).collect();
        forward.events(&theirs).await?;
        outcome.accepted += theirs.len() as u64;
        (*events, *positions) = mine.into_iter().unzip();
        Ok(theirs.len() as u64)
    }
}

use super::instant;
use crate::{ApiError, AppState};
use axum::extract::State;
use axum::Json;
use serde::Serialize;
use stratify_engine::model::{IngestStatus, Source};
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub struct Health {
    status: &'static str,
    version: &'static str,
    uptime_seconds: u64,
    /// The server's clock (RFC 3339): the instant "now" means in rules.
    now: String,
}

/// Liveness: answers while the process serves requests.
#[utoipa::path(get, path = "/health", tag = "ops", responses((status = 200, body = Health)))]
pub async fn health(State(state): State<AppState>) -> Json<Health> {
    Json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
        uptime_seconds: state.started.elapsed().as_secs(),
        now: instant(state.engine.now()),
    })
}

#[derive(Serialize, ToSchema)]
pub struct SourceStatus {
    /// `http`, `import` or `kafka`.
    source: &'static str,
    received: u64,
    accepted: u64,
    /// Accepted events whose idempotency key was seen before (not stored twice).
    duplicates: u64,
    rejected: u64,
    /// Events handed to the node that owns their user instead of stored by
    /// this source (HTTP writes for another node's users; Kafka records on
    /// a partition that is not their user's, as producers with a
    /// partitioner other than murmur2 send them). The owner counts them
    /// again under `kafka`, so `received = accepted + rejected + forwarded`.
    forwarded: u64,
    last_event_at: Option<String>,
    last_error: Option<String>,
    last_error_at: Option<String>,
    updated_at: Option<String>,
}

/// One partition of the Kafka events topic, as its consumer last reported.
#[derive(Serialize, ToSchema)]
pub struct PartitionStatus {
    topic: String,
    partition: i32,
    /// The next offset to consume: every record before it is durable.
    committed_offset: i64,
    /// The partition's end when last seen.
    high_watermark: i64,
    /// Records not yet durable: `high_watermark - committed_offset`.
    lag: i64,
    /// The node consuming it.
    node: String,
    updated_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct IngestStatusResponse {
    sources: Vec<SourceStatus>,
    /// Kafka partitions, whichever node consumes them (empty without Kafka).
    kafka_partitions: Vec<PartitionStatus>,
}

/// Ingestion progress per source: counts, the last event time, the last error.
#[utoipa::path(get, path = "/v1/ingest/status", tag = "ingest", security(("api_key" = [])),
    responses((status = 200, body = IngestStatusResponse)))]
pub async fn ingest_status(
    State(state): State<AppState>,
) -> Result<Json<IngestStatusResponse>, ApiError> {
    let stored = state
        .engine
        .store()
        .ingest_status()
        .await
        .map_err(stratify_engine::EngineError::from)?;
    let sources = [Source::Http, Source::Import, Source::Kafka]
        .into_iter()
        .map(|source| {
            let s = stored.iter().find(|s| s.source == source);
            let s: IngestStatus = s.cloned().unwrap_or(IngestStatus {
                source,
                received: 0,
                accepted: 0,
                duplicates: 0,
                rejected: 0,
                forwarded: 0,
                last_event_at: None,
                last_error: None,
                last_error_at: None,
                updated_at: 0,
            });
            SourceStatus {
                source: source.as_str(),
                received: s.received,
                accepted: s.accepted,
                duplicates: s.duplicates,
                rejected: s.rejected,
                forwarded: s.forwarded,
                last_event_at: s.last_event_at.map(instant),
                last_error: s.last_error,
                last_error_at: s.last_error_at.map(instant),
                updated_at: (s.updated_at > 0).then(|| instant(s.updated_at)),
            }
        })
        .collect();
    let kafka_partitions = state
        .engine
        .store()
        .partition_progress()
        .await
        .map_err(stratify_engine::EngineError::from)?
        .into_iter()
        .map(|p| PartitionStatus {
            lag: (p.high_water - p.committed).max(0),
            topic: p.topic,
            partition: p.partition,
            committed_offset: p.committed,
            high_watermark: p.high_water,
            node: p.node,
            updated_at: instant(p.updated_at),
        })
        .collect();
    Ok(Json(IngestStatusResponse {
        sources,
        kafka_partitions,
    }))
}

//! The engine's copy of the columnar population index: loaded from the store
//! at start, kept current by every write the engine makes, and read by
//! population queries. It is derived state: the store remains the source of
//! truth. A restart reads the index saved at the last shutdown when it still
//! matches the store (see [`crate::checkpoint`]), else rebuilds it.

use crate::checkpoint::{self, Header, Refused};
use crate::scan::{self, ByUid};
use crate::EngineError;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use stratify_core::population::PopulationIndex;
use stratify_core::time::Millis;
use stratify_store::Store;

pub type SharedIndex = Arc<RwLock<PopulationIndex>>;

const KIND: &str = "population";

/// The index saved in `dir` when it matches the store (with the events
/// appended after it), else every user, event and static membership read
/// into a fresh index.
pub(crate) async fn load(
    store: &dyn Store,
    dir: Option<&Path>,
) -> Result<SharedIndex, EngineError> {
    if let Some(index) = restore(store, dir).await? {
        return Ok(Arc::new(RwLock::new(index)));
    }
    let mut index = PopulationIndex::new();
    let by_uid = scan::users(store, |user| {
        index.set_attributes(&user.user_id, &user.attributes);
        index.index_of(&user.user_id)
    })
    .await?;
    let names = event_names(store).await?;
    scan::events(store, |e| {
        if let (Some(name), Some(user)) = (names.get(&e.name_id), by_uid.get(e.uid)) {
            index.add_event_deferred_at(user, name, e.timestamp, e.properties.as_ref());
        }
    })
    .await?;
    index.settle_all();
    index.shrink_to_fit();
    for segment in store.segments().await? {
        if segment.rules.is_none() {
            let members = store.static_members(&segment.id).await?;
            index.set_static_members(&segment.id, &members);
        }
    }
    tracing::info!(
        users = index.user_count(),
        events = index.event_count(),
        "population index loaded"
    );
    Ok(Arc::new(RwLock::new(index)))
}

async fn event_names(store: &dyn Store) -> Result<HashMap<i64, String>, EngineError> {
    Ok(store.event_names().await?.into_iter().collect())
}

async fn restore(
    store: &dyn Store,
    dir: Option<&Path>,
) -> Result<Option<PopulationIndex>, EngineError> {
    let (Some(dir), Some(stamp)) = (dir, store.derived_stamp().await?) else {
        return Ok(None);
    };
    let last = store.last_event_seq().await?;
    let path = checkpoint::path(dir, KIND);
    let read = tokio::task::spawn_blocking(move || {
        checkpoint::read(
            &path,
            |h| h.matches(KIND, &stamp, last),
            |_, d| Ok((ByUid::decode(d)?, PopulationIndex::decode(d)?)),
        )
    })
    .await
    .map_err(|e| EngineError::Store(stratify_store::StoreError::Task(e)))?;
    let (header, (by_uid, mut index)) = match read {
        Ok(loaded) => loaded,
        Err(Refused::Absent) => return Ok(None),
        Err(e) => {
            tracing::warn!(reason = %e, "population index checkpoint not used; rebuilding");
            return Ok(None);
        }
    };
    let names = event_names(store).await?;
    let mut after = 0u64;
    scan::events_after(store, header.event_seq, |e| {
        if let (Some(name), Some(user)) = (names.get(&e.name_id), by_uid.get(e.uid)) {
            index.add_event_deferred_at(user, name, e.timestamp, e.properties.as_ref());
            after += 1;
        }
    })
    .await?;
    index.settle_all();
    tracing::info!(
        users = index.user_count(),
        events = index.event_count(),
        appended_since = after,
        "population index restored from its checkpoint"
    );
    Ok(Some(index))
}

/// Saves the index in `dir` (at shutdown, when nothing writes any more).
pub(crate) async fn save(
    index: &SharedIndex,
    store: &dyn Store,
    dir: &Path,
    now: Millis,
) -> Result<(), EngineError> {
    let Some(stamp) = store.derived_stamp().await? else {
        return Ok(());
    };
    let last = store.last_event_seq().await?;
    // Store uid → index, for reading the events appended after the file.
    let mut by_uid = ByUid::default();
    {
        let mut after = 0;
        loop {
            let page = store.user_ids_after(after, 50_000).await?;
            let Some((last, _)) = page.last() else { break };
            after = *last;
            let index = index.read();
            for (uid, id) in page {
                if let Some(i) = index.index_of(&id) {
                    by_uid.set(uid, i);
                }
            }
        }
    }
    let header = Header::new(KIND, &stamp, last, now);
    let (index, path) = (index.clone(), checkpoint::path(dir, KIND));
    let started = std::time::Instant::now();
    let written = tokio::task::spawn_blocking(move || {
        let mut index = index.write();
        checkpoint::write(&path, &header, |e| {
            by_uid.encode(e)?;
            index.encode(e)
        })
    })
    .await
    .map_err(|e| EngineError::Store(stratify_store::StoreError::Task(e)))?;
    match written {
        Ok(bytes) => tracing::info!(
            bytes,
            ms = started.elapsed().as_millis() as u64,
            "population index saved"
        ),
        Err(e) => tracing::warn!(error = %e, "population index not saved"),
    }
    Ok(())
}

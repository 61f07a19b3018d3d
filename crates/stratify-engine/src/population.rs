//! The engine's copy of the columnar population index: loaded from the store
//! at start, kept current by every write the engine makes, and read by
//! population queries. It is derived state: the store remains the source of
//! truth, and a restart rebuilds it.

use crate::{scan, EngineError};
use parking_lot::RwLock;
use std::sync::Arc;
use stratify_core::population::PopulationIndex;
use stratify_store::Store;

pub type SharedIndex = Arc<RwLock<PopulationIndex>>;

/// Reads every user, event and static membership into a fresh index.
pub(crate) async fn load(store: &dyn Store) -> Result<SharedIndex, EngineError> {
    let t0 = std::time::Instant::now();
    let mut index = PopulationIndex::new();
    let by_uid = scan::users(store, |user| {
        index.set_attributes(&user.user_id, &user.attributes);
        index.index_of(&user.user_id)
    })
    .await?;
    eprintln!("TIMING pop users {:?}", t0.elapsed());
    let names: std::collections::HashMap<i64, String> =
        store.event_names().await?.into_iter().collect();
    scan::events(store, |e| {
        if let (Some(name), Some(user)) = (names.get(&e.name_id), by_uid.get(e.uid)) {
            index.add_event_deferred_at(user, name, e.timestamp, e.properties.as_ref());
        }
    })
    .await?;
    eprintln!("TIMING pop events {:?}", t0.elapsed());
    index.settle_all();
    eprintln!("TIMING pop settle {:?}", t0.elapsed());
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

//! The engine's copy of the columnar population index: loaded from the store
//! at start, kept current by every write the engine makes, and read by
//! population queries. It is derived state: the store remains the source of
//! truth, and a restart rebuilds it.

use crate::EngineError;
use parking_lot::RwLock;
use std::sync::Arc;
use stratify_core::population::PopulationIndex;
use stratify_store::Store;

/// Rows read per page while loading.
const LOAD_PAGE: u32 = 50_000;

pub type SharedIndex = Arc<RwLock<PopulationIndex>>;

/// Reads every user, event and static membership into a fresh index.
pub(crate) async fn load(store: &dyn Store) -> Result<SharedIndex, EngineError> {
    let mut index = PopulationIndex::new();
    // Users in creation order; remember each one's index by store uid so the
    // event scan below needs no joins and no string lookups.
    let mut by_uid: Vec<u32> = Vec::new();
    let mut after = 0;
    loop {
        let page = store.users_page(after, LOAD_PAGE).await?;
        let Some((last, _)) = page.last() else { break };
        after = *last;
        for (uid, user) in &page {
            index.set_attributes(&user.user_id, &user.attributes);
            let slot = usize::try_from(*uid).unwrap_or(usize::MAX);
            if slot != usize::MAX {
                if by_uid.len() <= slot {
                    by_uid.resize(slot + 1, u32::MAX);
                }
                by_uid[slot] = index.index_of(&user.user_id).unwrap_or(u32::MAX);
            }
        }
    }
    let names: std::collections::HashMap<i64, String> =
        store.event_names().await?.into_iter().collect();
    let mut after_seq = 0;
    loop {
        let page = store.scan_events(after_seq, LOAD_PAGE).await?;
        let Some(last) = page.last() else { break };
        after_seq = last.seq;
        for e in &page {
            let user = usize::try_from(e.uid)
                .ok()
                .and_then(|u| by_uid.get(u))
                .copied()
                .unwrap_or(u32::MAX);
            if let (Some(name), true) = (names.get(&e.name_id), user != u32::MAX) {
                index.add_event_deferred_at(user, name, e.timestamp, e.properties.as_ref());
            }
        }
    }
    index.settle_all();
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

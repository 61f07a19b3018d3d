//! The engine's copy of the columnar population index: loaded from the store
//! at start, kept current by every write the engine makes, and read by
//! population queries. It is derived state: the store remains the source of
//! truth, and a restart rebuilds it.

use crate::EngineError;
use parking_lot::RwLock;
use std::sync::Arc;
use stratify_core::population::PopulationIndex;
use stratify_store::{EventQuery, Store};

/// Rows read per page while loading.
const LOAD_PAGE: u32 = 50_000;

pub type SharedIndex = Arc<RwLock<PopulationIndex>>;

/// Reads every user, event and static membership into a fresh index.
pub(crate) async fn load(store: &dyn Store) -> Result<SharedIndex, EngineError> {
    let mut index = PopulationIndex::new();
    let mut after = 0;
    loop {
        let page = store.users_page(after, LOAD_PAGE).await?;
        let Some((last, _)) = page.last() else { break };
        after = *last;
        for (_, user) in &page {
            index.set_attributes(&user.user_id, &user.attributes);
        }
    }
    let mut after_seq = None;
    loop {
        let page = store
            .query_events(EventQuery {
                after_seq,
                limit: LOAD_PAGE,
                ..Default::default()
            })
            .await?;
        let Some(last) = page.last() else { break };
        after_seq = Some(last.seq);
        index.add_events_deferred(page.iter().map(|e| {
            (
                e.user_id.as_str(),
                e.name.as_str(),
                e.timestamp,
                e.properties.as_ref(),
            )
        }));
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

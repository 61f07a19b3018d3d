//! Paging through the whole store at start-up (the population index and the
//! live state are both loaded this way), with store uids mapped to dense
//! in-memory indexes so that the event scan needs no joins and no string
//! lookups.

use crate::EngineError;
use stratify_store::{RawEvent, Store, UserRecord};

/// Rows read per page.
const PAGE: u32 = 50_000;

/// Store uid → in-memory index.
#[derive(Default)]
pub(crate) struct ByUid(Vec<u32>);

impl ByUid {
    pub fn set(&mut self, uid: i64, index: u32) {
        if let Ok(slot) = usize::try_from(uid) {
            if self.0.len() <= slot {
                self.0.resize(slot + 1, u32::MAX);
            }
            self.0[slot] = index;
        }
    }

    pub fn encode<W: std::io::Write>(
        &self,
        e: &mut stratify_core::codec::Encoder<W>,
    ) -> std::io::Result<()> {
        e.u32s(&self.0)
    }

    pub fn decode<R: std::io::Read>(
        d: &mut stratify_core::codec::Decoder<R>,
    ) -> stratify_core::codec::Decoded<Self> {
        Ok(Self(d.u32s()?))
    }

    pub fn get(&self, uid: i64) -> Option<u32> {
        usize::try_from(uid)
            .ok()
            .and_then(|u| self.0.get(u))
            .copied()
            .filter(|i| *i != u32::MAX)
    }
}

/// Calls `f` with every user in creation order; `f` returns the user's
/// in-memory index, remembered by uid.
pub(crate) async fn users(
    store: &dyn Store,
    mut f: impl FnMut(UserRecord) -> Option<u32>,
) -> Result<ByUid, EngineError> {
    let mut by_uid = ByUid::default();
    let mut after = 0;
    loop {
        let page = store.users_page(after, PAGE).await?;
        let Some((last, _)) = page.last() else { break };
        after = *last;
        for (uid, user) in page {
            if let Some(i) = f(user) {
                by_uid.set(uid, i);
            }
        }
    }
    Ok(by_uid)
}

/// Calls `f` with every event in log order; returns the last sequence number.
pub(crate) async fn events(store: &dyn Store, f: impl FnMut(RawEvent)) -> Result<i64, EngineError> {
    events_after(store, 0, f).await
}

/// Calls `f` with every event after sequence number `after`, in log order;
/// returns the last sequence number (`after` when there is none).
pub(crate) async fn events_after(
    store: &dyn Store,
    mut after: i64,
    mut f: impl FnMut(RawEvent),
) -> Result<i64, EngineError> {
    loop {
        let page = store.scan_events(after, PAGE).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        page.into_iter().for_each(&mut f);
    }
    Ok(after)
}

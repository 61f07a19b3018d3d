//! Paging for list endpoints over configuration (segments, experiments,
//! metrics, keys, event types, webhooks, versions, memberships): `limit`
//! (1–1000, default 1000) and an opaque `cursor`; the answer's
//! `next_cursor` is `null` on the last page. Items are ordered by a key
//! (creation time then id, a name, a version); the cursor is the last key
//! seen, so items created or deleted between two pages neither repeat nor
//! shift the others.

use crate::ApiError;
use serde::Deserialize;
use stratify_core::ErrorCode;
use utoipa::IntoParams;

pub const MAX_LIMIT: u32 = 1000;

#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PageQuery {
    /// 1–1000, default 1000.
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Which way the key runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Ascending,
    /// Newest first (versions, memberships).
    Descending,
}

/// One page of `items`, ordered by `key` (unique per item), and the cursor
/// of the next page.
pub fn paginate<T>(
    mut items: Vec<T>,
    key: impl Fn(&T) -> String,
    order: Order,
    q: &PageQuery,
) -> Result<(Vec<T>, Option<String>), ApiError> {
    let limit = q.limit.unwrap_or(MAX_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(
            ApiError::new(ErrorCode::InvalidLimit, format!("limit is 1–{MAX_LIMIT}")).at("/limit"),
        );
    }
    let after = match &q.cursor {
        None => None,
        Some(c) => Some(
            hex::decode(c)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::InvalidCursor,
                        "the cursor is not one this list gave",
                    )
                    .at("/cursor")
                })?,
        ),
    };
    items.sort_by_cached_key(|i| key(i));
    if order == Order::Descending {
        items.reverse();
    }
    let start = match &after {
        None => 0,
        Some(a) => items.partition_point(|i| match order {
            Order::Ascending => key(i) <= *a,
            Order::Descending => key(i) >= *a,
        }),
    };
    let mut page: Vec<T> = items.into_iter().skip(start).collect();
    let next = if page.len() > limit as usize {
        page.truncate(limit as usize);
        page.last().map(|i| hex::encode(key(i)))
    } else {
        None
    };
    Ok((page, next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all_pages(items: &[u32], limit: u32, order: Order) -> Vec<u32> {
        let mut out = Vec::new();
        let mut cursor = None;
        loop {
            let q = PageQuery {
                limit: Some(limit),
                cursor,
            };
            let (page, next) = paginate(items.to_vec(), |i| format!("{i:08}"), order, &q)
                .unwrap_or_else(|e| unreachable!("{e:?}"));
            out.extend(page);
            match next {
                Some(n) => cursor = Some(n),
                None => return out,
            }
        }
    }

    proptest! {
        #[test]
        fn pages_cover_every_item_once_in_order(
            items in proptest::collection::hash_set(0u32..10_000, 0..60),
            limit in 1u32..20,
            descending in any::<bool>(),
        ) {
            let items: Vec<u32> = items.into_iter().collect();
            let order = if descending { Order::Descending } else { Order::Ascending };
            let mut expected = items.clone();
            expected.sort_unstable();
            if descending {
                expected.reverse();
            }
            prop_assert_eq!(all_pages(&items, limit, order), expected);
        }
    }

    #[test]
    fn bad_limits_and_cursors_are_422() {
        for (q, code) in [
            (
                PageQuery {
                    limit: Some(0),
                    cursor: None,
                },
                "invalid_limit",
            ),
            (
                PageQuery {
                    limit: Some(1001),
                    cursor: None,
                },
                "invalid_limit",
            ),
            (
                PageQuery {
                    limit: None,
                    cursor: Some("zz".into()),
                },
                "invalid_cursor",
            ),
        ] {
            let err = paginate(vec![1u32], |i| i.to_string(), Order::Ascending, &q)
                .err()
                .unwrap_or_else(|| unreachable!("{q:?} must be refused"));
            assert_eq!(err.code.as_str(), code);
        }
    }
}

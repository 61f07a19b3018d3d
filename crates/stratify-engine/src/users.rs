//! Users: attribute writes validated at the edge (limits, then the attribute
//! schema), reads with the built-in computed fields and current segments,
//! both evaluated by the rule engine over the user's events.

use crate::segments::MAX_USER_EVENTS;
use crate::EngineError;
use serde::Serialize;
use serde_json::{json, Map, Value};
use stratify_core::attributes;
use stratify_core::ids::UserId;
use stratify_core::rules::{self, Facts, NoSegments, Seen, Source};
use stratify_core::ErrorCode;
use stratify_store::{Attributes, UserRecord, WriteMode};

/// A user as `GET /v1/users/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserView {
    #[serde(flatten)]
    pub record: UserRecord,
    /// Built-in fields over `order_placed` events (API.md, "Rule formats").
    pub computed: Map<String, Value>,
    /// Ids of the segments the user is in now.
    pub segments: Vec<String>,
}

/// The built-in fields shown on a user, each read exactly as a rule reads it.
const COMPUTED: [&str; 5] = [
    "total_orders",
    "ltv",
    "seconds_since_last_order",
    "city",
    "is_new_user",
];

/// Users: attribute writes, reads with computed fields and segments, erasure.
pub struct UserService {
    pub(crate) store: std::sync::Arc<dyn stratify_store::Store>,
    pub(crate) clock: std::sync::Arc<dyn crate::Clock>,
    pub(crate) schemas: std::sync::Arc<crate::schemas::Schemas>,
    pub(crate) derive: std::sync::Arc<dyn crate::derived::Derive>,
    pub(crate) routing: std::sync::Arc<crate::cluster::Routing>,
    pub(crate) segments: std::sync::Arc<crate::segments::SegmentService>,
    pub(crate) aliases: std::sync::Arc<crate::identity::Aliases>,
}

impl UserService {
    pub async fn write_user(
        &self,
        user_id: UserId,
        attrs: Attributes,
        mode: WriteMode,
    ) -> Result<UserRecord, EngineError> {
        let user_id = self.aliases.resolve(&user_id).into_owned();
        attributes::check(&attrs, "/attributes")?;
        self.schemas.attributes().check(&attrs, "/attributes")?;
        let record = self
            .store
            .write_user(user_id, attrs, mode, self.clock.now())
            .await
            .map_err(|e| match EngineError::from(e) {
                EngineError::Conflict { message, .. } => EngineError::Conflict {
                    code: ErrorCode::UserExists,
                    message,
                },
                EngineError::NotFound { message, .. } => EngineError::NotFound {
                    code: ErrorCode::UserNotFound,
                    message,
                },
                other => other,
            })?;
        self.derive
            .user_written(&record.user_id, &record.attributes, false, self.clock.now());
        if let Some(forward) = self.routing.forward_for(&record.user_id) {
            forward.refresh(&record.user_id).await?;
        }
        Ok(record)
    }

    pub async fn user(&self, user_id: &UserId) -> Result<UserView, EngineError> {
        let user_id = &self.aliases.resolve(user_id);
        let record = self
            .store
            .get_user(user_id)
            .await?
            .ok_or_else(|| not_found(user_id))?;
        let now = self.clock.now();
        let events = self
            .store
            .user_events(user_id, now, MAX_USER_EVENTS)
            .await?;
        let computed = computed_fields(&record, &events, now);
        let segments = self
            .segments
            .user_segment_ids(&record, user_id, &events)
            .await?;
        Ok(UserView {
            record,
            computed,
            segments,
        })
    }

    /// Erases a user (an alias names its user: the person is erased, with
    /// every alias).
    pub async fn delete_user(&self, user_id: &UserId) -> Result<(), EngineError> {
        let user_id = &self.aliases.resolve(user_id);
        if self.store.delete_user(user_id, self.clock.now()).await? {
            self.derive.user_erased(user_id.as_str());
            if let Some(forward) = self.routing.forward_for(user_id.as_str()) {
                forward.refresh(user_id.as_str()).await?;
            }
            Ok(())
        } else {
            Err(not_found(user_id))
        }
    }
}

fn computed_fields(
    record: &UserRecord,
    events: &[stratify_store::StoredEvent],
    now: i64,
) -> Map<String, Value> {
    let facts_events = crate::segments::facts_events(events);
    let facts = Facts {
        attributes: &record.attributes,
        events: &facts_events,
        segments: &NoSegments,
        now,
    };
    let mut computed = Map::new();
    for field in COMPUTED {
        let seen = match rules::parse(&json!({"field": field, "op": "exists"})) {
            Ok(rules::Rule::Leaf(
                leaf @ rules::Leaf {
                    source: Source::Aggregate(_),
                    ..
                },
            )) => rules::leaf_value(&leaf, &facts).to_json(),
            _ => Seen::Missing.to_json(),
        };
        computed.insert(field.to_owned(), seen);
    }
    computed
}

fn not_found(user_id: &UserId) -> EngineError {
    EngineError::NotFound {
        code: ErrorCode::UserNotFound,
        message: format!("no user '{user_id}'"),
    }
}

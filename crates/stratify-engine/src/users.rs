//! Users: attribute writes validated at the edge (limits, then the attribute
//! schema), reads with the built-in computed fields over `order_placed` events.

use crate::{Engine, EngineError};
use serde::Serialize;
use serde_json::{Map, Value};
use stratify_core::attributes;
use stratify_core::event::ORDER_PLACED;
use stratify_core::ids::UserId;
use stratify_store::{Attributes, UserRecord, WriteMode};

/// A user as `GET /v1/users/{id}` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserView {
    #[serde(flatten)]
    pub record: UserRecord,
    /// Built-in fields over the user's orders (API.md, "Rule formats").
    pub computed: Map<String, Value>,
    /// Ids of the segments the user is in (filled in by the segment engine).
    pub segments: Vec<String>,
}

impl Engine {
    pub async fn write_user(
        &self,
        user_id: UserId,
        attrs: Attributes,
        mode: WriteMode,
    ) -> Result<UserRecord, EngineError> {
        attributes::check(&attrs, "/attributes")?;
        self.attribute_schema().check(&attrs, "/attributes")?;
        self.store
            .write_user(user_id, attrs, mode, self.now())
            .await
            .map_err(|e| match EngineError::from(e) {
                EngineError::Conflict { message, .. } => EngineError::Conflict {
                    code: "user_exists",
                    message,
                },
                EngineError::NotFound { message, .. } => EngineError::NotFound {
                    code: "user_not_found",
                    message,
                },
                other => other,
            })
    }

    pub async fn user(&self, user_id: &UserId) -> Result<UserView, EngineError> {
        let record = self
            .store
            .get_user(user_id)
            .await?
            .ok_or_else(|| not_found(user_id))?;
        let orders = self.store.event_summary(user_id, ORDER_PLACED).await?;
        let now = self.now();
        let mut computed = Map::new();
        computed.insert("total_orders".into(), orders.count.into());
        computed.insert(
            "ltv".into(),
            serde_json::Number::from_f64(orders.amount_sum).map_or(Value::Null, Value::Number),
        );
        let last = orders.last_at;
        computed.insert(
            "last_order_at".into(),
            last.map_or(Value::Null, |t| {
                Value::String(stratify_core::time::format_rfc3339(t))
            }),
        );
        computed.insert(
            "seconds_since_last_order".into(),
            last.map_or(Value::Null, |t| ((now - t) / 1000).into()),
        );
        computed.insert(
            "city".into(),
            orders.last_city.map_or(Value::Null, Value::String),
        );
        Ok(UserView {
            record,
            computed,
            segments: Vec::new(),
        })
    }

    pub async fn delete_user(&self, user_id: &UserId) -> Result<(), EngineError> {
        if self.store.delete_user(user_id).await? {
            Ok(())
        } else {
            Err(not_found(user_id))
        }
    }
}

fn not_found(user_id: &UserId) -> EngineError {
    EngineError::NotFound {
        code: "user_not_found",
        message: format!("no user '{user_id}'"),
    }
}

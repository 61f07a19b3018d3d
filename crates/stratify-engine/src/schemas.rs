//! The schema registry: event types and the attribute schema, read from the
//! store at start and kept in memory, because every ingested event is checked
//! against it. Writes go to the store first, then replace the cached copy.

use crate::EngineError;
use parking_lot::RwLock;
use std::collections::HashMap;
use std::sync::Arc;
use stratify_core::schema::{AttributeSchema, EventTypeSchema};
use stratify_core::ErrorCode;
use stratify_store::{Configuration, EventTypeRecord};

pub struct Schemas {
    event_types: RwLock<Arc<HashMap<String, EventTypeRecord>>>,
    attributes: RwLock<Arc<AttributeSchema>>,
}

impl Schemas {
    pub(crate) async fn load(store: &dyn Configuration) -> Result<Self, EngineError> {
        let types = store
            .list_event_types()
            .await?
            .into_iter()
            .map(|r| (r.schema.name.clone(), r))
            .collect();
        Ok(Self {
            event_types: RwLock::new(Arc::new(types)),
            attributes: RwLock::new(Arc::new(store.attribute_schema().await?)),
        })
    }

    /// Takes over another load's contents (a reload).
    pub(crate) fn replace(&self, fresh: Schemas) {
        *self.event_types.write() = fresh.event_types.into_inner();
        *self.attributes.write() = fresh.attributes.into_inner();
    }

    /// A snapshot of the declared event types (cheap: one `Arc` clone).
    pub fn event_types(&self) -> Arc<HashMap<String, EventTypeRecord>> {
        self.event_types.read().clone()
    }

    pub fn attributes(&self) -> Arc<AttributeSchema> {
        self.attributes.read().clone()
    }
}

/// Event types and the attribute schema.
pub struct SchemaService {
    pub(crate) store: Arc<dyn stratify_store::Configuration>,
    pub(crate) clock: Arc<dyn crate::Clock>,
    pub(crate) schemas: Arc<Schemas>,
    pub(crate) limits: Arc<crate::Limits>,
}

impl SchemaService {
    pub async fn put_event_type(
        &self,
        schema: EventTypeSchema,
    ) -> Result<(EventTypeRecord, bool), EngineError> {
        schema.validate_definition()?;
        let types = self.schemas.event_types();
        if !types.contains_key(&schema.name) {
            crate::Limits::check(
                "event types",
                "event_types",
                types.len(),
                self.limits.event_types,
            )?;
        }
        let record = self.store.put_event_type(schema, self.clock.now()).await?;
        let mut guard = self.schemas.event_types.write();
        let mut next = HashMap::clone(&guard);
        let created = next
            .insert(record.schema.name.clone(), record.clone())
            .is_none();
        *guard = Arc::new(next);
        Ok((record, created))
    }

    pub fn event_types(&self) -> Vec<EventTypeRecord> {
        let mut all: Vec<_> = self.schemas.event_types().values().cloned().collect();
        all.sort_by(|a, b| a.schema.name.cmp(&b.schema.name));
        all
    }

    pub fn event_type(&self, name: &str) -> Result<EventTypeRecord, EngineError> {
        self.schemas
            .event_types()
            .get(name)
            .cloned()
            .ok_or_else(|| EngineError::NotFound {
                code: ErrorCode::EventTypeNotFound,
                message: format!("no event type named '{name}'"),
            })
    }

    pub async fn delete_event_type(&self, name: &str) -> Result<(), EngineError> {
        if !self.store.delete_event_type(name).await? {
            return Err(EngineError::NotFound {
                code: ErrorCode::EventTypeNotFound,
                message: format!("no event type named '{name}'"),
            });
        }
        let mut guard = self.schemas.event_types.write();
        let mut next = HashMap::clone(&guard);
        next.remove(name);
        *guard = Arc::new(next);
        Ok(())
    }

    pub async fn put_attribute_schema(
        &self,
        schema: AttributeSchema,
    ) -> Result<AttributeSchema, EngineError> {
        schema.validate_definition()?;
        self.store
            .put_attribute_schema(schema.clone(), self.clock.now())
            .await?;
        *self.schemas.attributes.write() = Arc::new(schema.clone());
        Ok(schema)
    }

    pub fn attribute_schema(&self) -> Arc<AttributeSchema> {
        self.schemas.attributes()
    }
}

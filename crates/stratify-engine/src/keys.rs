//! API keys: `sfy_<id>_<secret>`, stored as SHA-256, compared in constant time.
//!
//! The id part is not secret; it finds the record. The whole key is hashed
//! and compared with `subtle`, so timing tells nothing about the secret. The
//! active keys are cached in memory (every request authenticates); creating
//! and revoking update the store first, then the cache, so a revoked key stops
//! working at once.

use crate::EngineError;
use parking_lot::RwLock;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::str::FromStr;
use stratify_core::access::Role;
use stratify_core::time::Millis;
use stratify_core::ErrorCode;
use stratify_core::ValidationError;
use stratify_store::{ApiKeyRecord, Keys};
use subtle::ConstantTimeEq;

const PREFIX: &str = "sfy_";
/// The id under which the `STRATIFY_ADMIN_KEY` secret authenticates.
pub const ENV_ADMIN_KEY_ID: &str = "env-admin";

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub key_id: String,
    pub role: Role,
}

struct ActiveKey {
    hash: [u8; 32],
    role: Role,
}

pub struct KeyRing {
    active: RwLock<HashMap<String, ActiveKey>>,
    env_admin: Option<[u8; 32]>,
}

/// A key as listed (no secret).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KeyInfo {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub created_at: Millis,
    pub revoked_at: Option<Millis>,
}

fn sha256(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

impl KeyRing {
    pub(crate) async fn load(
        store: &dyn Keys,
        admin_secret: Option<String>,
    ) -> Result<Self, EngineError> {
        let mut active = HashMap::new();
        for rec in store.list_api_keys().await? {
            if rec.revoked_at.is_some() {
                continue;
            }
            let (Ok(role), Ok(hash)) = (
                Role::from_str(&rec.role),
                <[u8; 32]>::try_from(rec.key_hash.as_slice()),
            ) else {
                tracing::warn!(key_id = %rec.id, "skipping an unreadable api key record");
                continue;
            };
            active.insert(rec.id, ActiveKey { hash, role });
        }
        let env_admin = admin_secret.filter(|s| !s.is_empty()).map(|s| sha256(&s));
        Ok(Self {
            active: RwLock::new(active),
            env_admin,
        })
    }

    /// Re-reads the stored keys (created or revoked on another node).
    pub(crate) async fn reload(&self, store: &dyn Keys) -> Result<(), EngineError> {
        let fresh = Self::load(store, None).await?;
        *self.active.write() = fresh.active.into_inner();
        Ok(())
    }

    /// The caller behind a presented key, if any.
    pub fn authenticate(&self, presented: &str) -> Option<Principal> {
        let hash = sha256(presented);
        if let Some(admin) = &self.env_admin {
            if bool::from(admin.ct_eq(&hash)) {
                return Some(Principal {
                    key_id: ENV_ADMIN_KEY_ID.into(),
                    role: Role::Admin,
                });
            }
        }
        let id = presented.strip_prefix(PREFIX)?.split_once('_')?.0;
        let active = self.active.read();
        let key = active.get(id)?;
        bool::from(key.hash.ct_eq(&hash)).then(|| Principal {
            key_id: id.to_owned(),
            role: key.role,
        })
    }

    /// The caller behind a key that authenticated earlier (a dashboard
    /// session holds its id, never the key), while the key is active.
    pub fn principal(&self, key_id: &str) -> Option<Principal> {
        if key_id == ENV_ADMIN_KEY_ID {
            return self.env_admin.is_some().then(|| Principal {
                key_id: ENV_ADMIN_KEY_ID.into(),
                role: Role::Admin,
            });
        }
        self.active.read().get(key_id).map(|k| Principal {
            key_id: key_id.to_owned(),
            role: k.role,
        })
    }
}

/// API keys: authentication, creation, listing, revocation.
pub struct KeyService {
    pub(crate) store: std::sync::Arc<dyn stratify_store::Keys>,
    pub(crate) clock: std::sync::Arc<dyn crate::Clock>,
    pub(crate) ring: std::sync::Arc<KeyRing>,
    pub(crate) limits: std::sync::Arc<crate::Limits>,
}

impl KeyService {
    pub fn authenticate(&self, presented: &str) -> Option<Principal> {
        self.ring.authenticate(presented)
    }

    /// See [`KeyRing::principal`].
    pub fn principal(&self, key_id: &str) -> Option<Principal> {
        self.ring.principal(key_id)
    }

    /// Creates a key; the returned secret is shown once and never stored.
    pub async fn create_api_key(
        &self,
        name: &str,
        role: Role,
    ) -> Result<(KeyInfo, String), EngineError> {
        let name = name.trim();
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Err(ValidationError::new(
                ErrorCode::InvalidName,
                "name is 1–128 characters of text",
            )
            .at("/name")
            .into());
        }
        let active = self.ring.active.read().len();
        crate::Limits::check("active API keys", "api_keys", active, self.limits.api_keys)?;
        let (id, key) = new_key();
        let hash = sha256(&key);
        let record = ApiKeyRecord {
            id: id.clone(),
            name: name.to_owned(),
            role: role.as_str().to_owned(),
            key_hash: hash.to_vec(),
            created_at: self.clock.now(),
            revoked_at: None,
        };
        self.store.create_api_key(record.clone()).await?;
        self.ring
            .active
            .write()
            .insert(id, ActiveKey { hash, role });
        Ok((info(record, role), key))
    }

    pub async fn list_api_keys(&self) -> Result<Vec<KeyInfo>, EngineError> {
        Ok(self
            .store
            .list_api_keys()
            .await?
            .into_iter()
            .filter_map(|r| Role::from_str(&r.role).ok().map(|role| info(r, role)))
            .collect())
    }

    pub async fn revoke_api_key(&self, id: &str) -> Result<(), EngineError> {
        if !self.store.revoke_api_key(id, self.clock.now()).await? {
            return Err(EngineError::NotFound {
                code: ErrorCode::ApiKeyNotFound,
                message: format!("no active api key '{id}'"),
            });
        }
        self.ring.active.write().remove(id);
        Ok(())
    }

    /// On first start with no admin key at all (none stored, none from the
    /// environment), creates one and returns its secret to print once.
    pub async fn bootstrap_admin_key(&self) -> Result<Option<String>, EngineError> {
        if self.ring.env_admin.is_some()
            || self
                .ring
                .active
                .read()
                .values()
                .any(|k| k.role == Role::Admin)
        {
            return Ok(None);
        }
        let (_, secret) = self.create_api_key("bootstrap admin", Role::Admin).await?;
        Ok(Some(secret))
    }
}

/// A fresh id and secret from the OS-seeded CSPRNG (secrets are not a place
/// for the seeded generators used elsewhere).
fn new_key() -> (String, String) {
    let mut rng = rand::rng();
    let mut id = [0u8; 8];
    let mut secret = [0u8; 24];
    rng.fill_bytes(&mut id);
    rng.fill_bytes(&mut secret);
    let id = hex::encode(id);
    let key = format!("{PREFIX}{id}_{}", hex::encode(secret));
    (id, key)
}

fn info(r: ApiKeyRecord, role: Role) -> KeyInfo {
    KeyInfo {
        id: r.id,
        name: r.name,
        role,
        created_at: r.created_at,
        revoked_at: r.revoked_at,
    }
}

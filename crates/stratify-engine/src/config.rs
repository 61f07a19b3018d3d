//! What an operator sets for the engine. The binary reads it from the
//! config file, the environment and flags; [`EngineConfig::default`] is what
//! a server gets when it sets nothing.

/// Engine settings.
#[derive(Debug, Clone, Default)]
pub struct EngineConfig {
    pub limits: Limits,
    pub webhooks: WebhookPolicy,
    /// This node's name when it is one of several on a shared store (a
    /// Kafka consumer group): its live engine owns nobody until the group
    /// assigns it partitions, and keeps its own watermark.
    pub cluster_node: Option<String>,
    /// Where derived state is saved between runs (metric event copies), so
    /// that a restart reads the log only after it. `None`: nowhere.
    pub checkpoint_dir: Option<std::path::PathBuf>,
}

/// Caps on configuration objects: creating one more past a cap is refused
/// with 409 `limit_reached`. They bound what one key holder can make every
/// node hold in memory and evaluate per event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    pub segments: usize,
    pub experiments: usize,
    pub metrics: usize,
    pub api_keys: usize,
    pub event_types: usize,
    pub webhooks: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            segments: 1000,
            experiments: 1000,
            metrics: 500,
            api_keys: 1000,
            event_types: 1000,
            webhooks: 100,
        }
    }
}

impl Limits {
    /// Refuses one more `what` when `count` already reach `cap` (409
    /// `limit_reached`, naming the setting).
    pub(crate) fn check(
        what: &str,
        setting: &str,
        count: usize,
        cap: usize,
    ) -> Result<(), crate::EngineError> {
        if count >= cap {
            return Err(crate::EngineError::Conflict {
                code: stratify_core::ErrorCode::LimitReached,
                message: format!(
                    "at most {cap} {what} (the server's limits.{setting}); delete one first"
                ),
            });
        }
        Ok(())
    }
}

/// Where webhooks may deliver.
#[derive(Debug, Clone, Default)]
pub struct WebhookPolicy {
    /// Deliver to loopback, link-local, private and unspecified addresses
    /// too (refused by default; `webhook_allow_private`).
    pub allow_private: bool,
    /// PEM certificates trusted for `https://` targets besides the public
    /// roots (an internal CA; `webhook_ca_file`).
    pub extra_roots_pem: Option<Vec<u8>>,
}

//! Settings: defaults < TOML file < `STRATIFY_*` environment < flags.
//!
//! The file and the defaults are merged here; environment variables and flags
//! are both read by clap (`#[arg(long, env)]`, where a flag wins over its
//! variable) and applied on top by each command.

use anyhow::Context;
use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub addr: String,
    pub data_dir: PathBuf,
    pub max_body_bytes: usize,
    pub max_ingest_body_bytes: usize,
    /// A request still unanswered after this many seconds gets a 408.
    pub request_timeout_seconds: u64,
    /// A tracing filter, e.g. `info` or `stratify=debug`.
    pub log: String,
}

impl Default for Settings {
    fn default() -> Self {
        let server = stratify_server::ServerConfig::default();
        Self {
            addr: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("./data"),
            max_body_bytes: server.max_body_bytes,
            max_ingest_body_bytes: server.max_ingest_body_bytes,
            request_timeout_seconds: server.request_timeout.as_secs(),
            log: "info".into(),
        }
    }
}

impl Settings {
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        let Some(file) = file else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read config file {}", file.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config file {}", file.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_file_overrides_defaults_and_rejects_unknown_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.toml");
        std::fs::write(&path, "addr = \"0.0.0.0:9\"\n").expect("write");
        let s = Settings::load(Some(&path)).expect("load");
        assert_eq!(s.addr, "0.0.0.0:9");
        assert_eq!(s.data_dir, PathBuf::from("./data"));
        std::fs::write(&path, "adr = \"x\"\n").expect("write");
        assert!(Settings::load(Some(&path)).is_err());
    }
}

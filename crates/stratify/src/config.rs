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
    /// Serve HTTPS with this certificate chain (PEM); needs `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// The private key of `tls_cert` (PEM).
    pub tls_key: Option<PathBuf>,
    /// Let webhooks deliver to loopback, link-local, private and
    /// unspecified addresses (refused by default).
    pub webhook_allow_private: bool,
    /// Extra certificates (PEM) trusted for `https://` webhook targets.
    pub webhook_ca_file: Option<PathBuf>,
    /// Most concurrent SSE and WebSocket streams; the next is answered 429.
    pub max_streams: usize,
    /// Most ingest requests per second per API key (0: no limit).
    pub ingest_rate_per_key: u32,
    /// Most serving requests per second per API key (0: no limit).
    pub serving_rate_per_key: u32,
    /// `[limits]`: how many of each configuration object may exist.
    pub limits: stratify_engine::Limits,
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
            tls_cert: None,
            tls_key: None,
            webhook_allow_private: false,
            webhook_ca_file: None,
            max_streams: server.max_streams,
            ingest_rate_per_key: 0,
            serving_rate_per_key: 0,
            limits: stratify_engine::Limits::default(),
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
        std::fs::write(
            &path,
            "webhook_allow_private = true\nmax_streams = 3\n[limits]\nsegments = 7\n",
        )
        .expect("write");
        let s = Settings::load(Some(&path)).expect("load");
        assert!(s.webhook_allow_private);
        assert_eq!(
            (s.max_streams, s.limits.segments, s.limits.webhooks),
            (3, 7, 100)
        );
        std::fs::write(&path, "[limits]\nsegmentz = 7\n").expect("write");
        assert!(Settings::load(Some(&path)).is_err());
    }
}

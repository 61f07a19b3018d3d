use crate::config::Settings;
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;
use stratify_engine::{Engine, SystemClock};
use stratify_server::{AppState, ServerConfig};

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "STRATIFY_ADDR")]
    addr: Option<String>,
    /// Directory of the embedded store.
    #[arg(long, env = "STRATIFY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Load the demo data set if the store is empty.
    #[arg(long)]
    demo: bool,
    /// A secret that is accepted as an admin key (never stored).
    #[arg(long = "admin-key", env = "STRATIFY_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<String>,
    /// Store everything in this PostgreSQL database instead of the data
    /// directory (`postgres://user@host:port/db`). Several nodes may share it
    /// only as members of one Kafka group (`--kafka-brokers`): each node's
    /// live engine must own a disjoint set of users.
    #[arg(long, env = "STRATIFY_POSTGRES_URL", hide_env_values = true)]
    postgres_url: Option<String>,
    /// Consume events from Kafka (`host:port[,…]`) as a member of a consumer group.
    #[arg(long, env = "STRATIFY_KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    /// The consumer group of the Stratify nodes.
    #[arg(long, env = "STRATIFY_KAFKA_GROUP", default_value = "stratify")]
    kafka_group: String,
    /// The topic events are read from (records keyed by user id).
    #[arg(
        long,
        env = "STRATIFY_KAFKA_EVENTS_TOPIC",
        default_value = "stratify-events"
    )]
    kafka_events_topic: String,
    /// The topic membership changes are produced to (keyed by user id).
    #[arg(
        long,
        env = "STRATIFY_KAFKA_CHANGES_TOPIC",
        default_value = "stratify-changes"
    )]
    kafka_changes_topic: String,
    /// This node's name (Kafka client id, ingestion status); default: the address.
    #[arg(long, env = "STRATIFY_NODE_ID")]
    node_id: Option<String>,
    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "STRATIFY_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "STRATIFY_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Let webhooks deliver to loopback, link-local, private and unspecified addresses.
    #[arg(long, env = "STRATIFY_WEBHOOK_ALLOW_PRIVATE", num_args = 0..=1, default_missing_value = "true")]
    webhook_allow_private: Option<bool>,
    /// Most concurrent SSE and WebSocket streams.
    #[arg(long, env = "STRATIFY_MAX_STREAMS")]
    max_streams: Option<usize>,
}

pub async fn run(mut settings: Settings, args: ServeArgs) -> anyhow::Result<()> {
    if let Some(addr) = args.addr {
        settings.addr = addr;
    }
    if let Some(dir) = args.data_dir {
        settings.data_dir = dir;
    }
    if let Some(cert) = args.tls_cert {
        settings.tls_cert = Some(cert);
    }
    if let Some(key) = args.tls_key {
        settings.tls_key = Some(key);
    }
    if let Some(allow) = args.webhook_allow_private {
        settings.webhook_allow_private = allow;
    }
    if let Some(n) = args.max_streams {
        settings.max_streams = n;
    }
    // Read the certificate before anything starts: a bad one stops here.
    let tls = match (&settings.tls_cert, &settings.tls_key) {
        (Some(cert), Some(key)) => Some(stratify_server::tls::server_config(cert, key)?),
        (None, None) => None,
        _ => anyhow::bail!("TLS needs both --tls-cert and --tls-key"),
    };
    let extra_roots_pem = match &settings.webhook_ca_file {
        Some(path) => Some(
            std::fs::read(path)
                .with_context(|| format!("cannot read webhook_ca_file {}", path.display()))?,
        ),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(&settings.addr)
        .await
        .with_context(|| format!("cannot listen on {}", settings.addr))?;
    let local = listener.local_addr()?;
    // One of several nodes when it joins a Kafka group: named by
    // `--node-id`, else by the address it listens on.
    let node = args
        .kafka_brokers
        .as_ref()
        .map(|_| args.node_id.clone().unwrap_or_else(|| local.to_string()));
    let engine_config = stratify_engine::EngineConfig {
        cluster_node: node.clone(),
        checkpoint_dir: Some(settings.data_dir.join("checkpoints")),
        limits: settings.limits.clone(),
        webhooks: stratify_engine::WebhookPolicy {
            allow_private: settings.webhook_allow_private,
            extra_roots_pem,
        },
    };
    let backend =
        crate::backend::Backend::open(&settings.data_dir, args.postgres_url.as_deref()).await?;
    let engine = Engine::start_with(
        backend.store.clone(),
        Arc::new(SystemClock),
        args.admin_key.clone(),
        engine_config,
    )
    .await?;
    if let Some(secret) = engine.keys.bootstrap_admin_key().await? {
        println!("Created the first admin API key (shown once, store it now):\n  {secret}");
    }
    if args.demo {
        crate::demo::load_if_empty(&engine).await?;
    }
    if args.postgres_url.is_some() && args.kafka_brokers.is_none() {
        // Alone on PostgreSQL: this node delivers every webhook (with Kafka,
        // the cluster member starts deliverers under per-webhook leases).
        engine.webhooks.start_deliverers(None).await?;
    }
    if let Some(brokers) = &args.kafka_brokers {
        let opts = stratify_kafka::KafkaOptions {
            brokers: brokers.clone(),
            group: args.kafka_group.clone(),
            events_topic: args.kafka_events_topic.clone(),
            changes_topic: args.kafka_changes_topic.clone(),
            node: node.clone().unwrap_or_default(),
        };
        let engine = engine.clone();
        let (ready, joined) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            if let Err(e) = stratify_kafka::run_member(engine, opts, ready).await {
                // Without its consumer a node would silently stop ingesting.
                tracing::error!(error = %e, "the Kafka consumer stopped; exiting");
                std::process::exit(1);
            }
        });
        // Serve once the node knows what it owns and where the rest goes.
        if joined.await.is_err() {
            anyhow::bail!("the Kafka consumer stopped before joining");
        }
    }
    if args.demo {
        // The scenario goes through the public API, with a key that lives
        // only while it loads.
        let engine = engine.clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut at = local;
        if at.ip().is_unspecified() {
            at.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        tokio::spawn(async move {
            let (info, secret) = match engine
                .keys
                .create_api_key("demo scenario loader", stratify_core::access::Role::Admin)
                .await
            {
                Ok(k) => k,
                Err(e) => return tracing::error!(error = %e, "cannot load the demo scenario"),
            };
            match crate::scenario::apply(&format!("{scheme}://{at}"), &secret).await {
                Ok(s) => println!(
                    "Demo: scenario loaded ({} segments, {} experiments, {} users added; {} orders sent)",
                    s.segments, s.experiments, s.users, s.orders
                ),
                Err(e) => tracing::error!(error = %e, "cannot load the demo scenario"),
            }
            if let Err(e) = engine.keys.revoke_api_key(&info.id).await {
                tracing::error!(error = %e, "cannot revoke the demo loader's key");
            }
        });
    }
    let config = ServerConfig {
        max_body_bytes: settings.max_body_bytes,
        max_ingest_body_bytes: settings.max_ingest_body_bytes,
        request_timeout: std::time::Duration::from_secs(settings.request_timeout_seconds),
        max_streams: settings.max_streams,
        ingest_rate_per_key: (settings.ingest_rate_per_key > 0)
            .then_some(settings.ingest_rate_per_key),
        serving_rate_per_key: (settings.serving_rate_per_key > 0)
            .then_some(settings.serving_rate_per_key),
    };
    let data = match &args.postgres_url {
        Some(_) => "PostgreSQL".to_owned(),
        None => settings.data_dir.display().to_string(),
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!(
        "Stratify listening on {scheme}://{local} (docs: {scheme}://{local}/docs, data: {data})"
    );
    if args.admin_key.is_some() {
        println!("Admin key: the value of STRATIFY_ADMIN_KEY");
    }
    let state = AppState::new(engine.clone(), config);
    match tls {
        Some(tls) => {
            let listener = stratify_server::tls::TlsListener::new(listener, tls)?;
            stratify_server::serve(listener, state, shutdown_signal()).await?
        }
        None => stratify_server::serve(listener, state, shutdown_signal()).await?,
    }
    // Commit the live engine's pending changes and stop its worker.
    engine.shutdown().await;
    drop(engine);
    // Every request has finished: let the writer commit what is queued.
    backend.close();
    tracing::info!("stopped cleanly");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            return std::future::pending().await;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down: finishing in-flight requests");
}

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
}

pub async fn run(mut settings: Settings, args: ServeArgs) -> anyhow::Result<()> {
    if let Some(addr) = args.addr {
        settings.addr = addr;
    }
    if let Some(dir) = args.data_dir {
        settings.data_dir = dir;
    }
    let backend =
        crate::backend::Backend::open(&settings.data_dir, args.postgres_url.as_deref()).await?;
    let engine = Engine::start(
        backend.store.clone(),
        Arc::new(SystemClock),
        args.admin_key.clone(),
    )
    .await?;
    if let Some(secret) = engine.keys.bootstrap_admin_key().await? {
        println!("Created the first admin API key (shown once, store it now):\n  {secret}");
    }
    if args.demo {
        crate::demo::load_if_empty(&engine).await?;
    }
    let listener = tokio::net::TcpListener::bind(&settings.addr)
        .await
        .with_context(|| format!("cannot listen on {}", settings.addr))?;
    let local = listener.local_addr()?;
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
            node: args.node_id.clone().unwrap_or_else(|| local.to_string()),
        };
        let engine = engine.clone();
        tokio::spawn(async move {
            if let Err(e) = stratify_kafka::run_member(engine, opts).await {
                // Without its consumer a node would silently stop ingesting.
                tracing::error!(error = %e, "the Kafka consumer stopped; exiting");
                std::process::exit(1);
            }
        });
    }
    if args.demo {
        // The scenario goes through the public API, with a key that lives
        // only while it loads.
        let engine = engine.clone();
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
            match crate::scenario::apply(&format!("http://{at}"), &secret).await {
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
    };
    let data = match &args.postgres_url {
        Some(_) => "PostgreSQL".to_owned(),
        None => settings.data_dir.display().to_string(),
    };
    println!("Stratify listening on http://{local} (docs: http://{local}/docs, data: {data})");
    if args.admin_key.is_some() {
        println!("Admin key: the value of STRATIFY_ADMIN_KEY");
    }
    stratify_server::serve(
        listener,
        AppState::new(engine.clone(), config),
        shutdown_signal(),
    )
    .await?;
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

//! Kafka for Stratify nodes at scale (ARCHITECTURE, Scale-out).
//!
//! [`run_member`] makes a node one member of a consumer group on the events
//! topic (records keyed by user id, partitioned with Kafka's default murmur2
//! partitioner, so every event of a user lands in one partition):
//!
//! - **Ownership.** The node owns the users of its assigned partitions
//!   ([`partition_of`]). On every assignment it rebuilds their live state
//!   from the shared log ([`ClusterService::own`](stratify_engine::cluster::ClusterService::own)); a revocation takes effect at
//!   once (the worker stops recording changes for those users).
//! - **Nothing lost.** A batch of records is appended to the store in one
//!   durable transaction, and only then are its offsets committed. A crash
//!   between the two redelivers the batch to whoever owns the partition next;
//!   a refused append rewinds the partitions and reads the batch again.
//! - **Nothing counted twice.** A redelivered record is a duplicate in the
//!   store: records carry an `event_id`, and a record without one gets
//!   `kafka-<topic>-<partition>-<offset>`, the same on every delivery.
//! - **Progress.** Per partition: the committed offset and the partition's
//!   end (high watermark), saved to the store every second, so any node's
//!   `GET /v1/ingest/status` shows every partition and its lag.
//! - **Changes out.** One node at a time relays the shared change log to
//!   the changes topic, keyed by user id, in sequence order, at least once
//!   (a cursor saved after each acknowledged page, and a lease another node
//!   takes over when the relay stops).
//! - **Writes for other nodes' users.** Events sent over HTTP
//!   for a user this node does not own are produced to the events topic,
//!   keyed by user id, and the owner stores them like any record. An
//!   attribute write or erasure is stored here; a refresh record (header
//!   [`REFRESH_HEADER`], value `{"user_id": …}`) then makes the owner
//!   re-read the user.

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use stratify_core::error::ValidationError;
use stratify_core::event::NewEvent;
use stratify_core::ErrorCode;
use stratify_engine::cluster::Forward;
use stratify_engine::{Engine, EngineError};
use stratify_store::{PartitionProgress, Source};

/// Most records appended in one transaction.
const MAX_BATCH: usize = 5_000;
/// How long a batch waits for more records once it has one.
const BATCH_WAIT: Duration = Duration::from_millis(5);
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// The changes relay: how long its lease lasts without renewal, how often
/// it reads the change log, and how many changes it sends at once.
const RELAY_LEASE: Duration = Duration::from_secs(5);
const RELAY_EVERY: Duration = Duration::from_millis(100);
const RELAY_PAGE: u32 = 5_000;
/// First wait before reading a batch the store refused again (doubling to 5 s).
const RETRY_FIRST: Duration = Duration::from_millis(50);

#[derive(Debug, Clone)]
pub struct KafkaOptions {
    /// `host:port[,host:port…]`
    pub brokers: String,
    pub group: String,
    pub events_topic: String,
    pub changes_topic: String,
    /// This node's name in the group and in the ingestion status.
    pub node: String,
}

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("kafka: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error("the topic '{0}' does not exist (create it first)")]
    NoTopic(String),
    #[error(transparent)]
    Engine(#[from] stratify_engine::EngineError),
    #[error("storing a batch failed: {0}")]
    Abandoned(String),
}

/// Kafka's default partitioner for a keyed record (Java's
/// `Utils.toPositive(Utils.murmur2(key)) % partitions`; kafka-python and
/// librdkafka's `murmur2_random` agree).
pub fn partition_of(key: &str, partitions: i32) -> i32 {
    ((murmur2(key.as_bytes()) & 0x7fff_ffff) as i32) % partitions.max(1)
}

fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partitions this node owns, shared with the rebalance callback.
#[derive(Default)]
struct Assignment {
    owned: parking_lot::RwLock<BTreeSet<i32>>,
    /// Set on a new assignment: the live state must be rebuilt.
    reassigned: AtomicBool,
}

struct Context {
    topic: String,
    assignment: Arc<Assignment>,
}

impl ClientContext for Context {}

impl ConsumerContext for Context {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut owned = self.assignment.owned.write();
            for e in tpl.elements_for_topic(&self.topic) {
                owned.remove(&e.partition());
            }
            tracing::info!(owned = ?*owned, "kafka partitions revoked");
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let mut owned = self.assignment.owned.write();
                owned.extend(
                    tpl.elements_for_topic(&self.topic)
                        .iter()
                        .map(|e| e.partition()),
                );
                self.assignment.reassigned.store(true, Ordering::Release);
                tracing::info!(owned = ?*owned, "kafka partitions assigned");
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::error!(error = %e, "kafka rebalance failed"),
        }
    }
}

/// Marks a record that asks the user's owner to re-read the user.
pub const REFRESH_HEADER: &str = "stratify-refresh";

/// One record, copied out of the consumer's buffer.
struct Record {
    partition: i32,
    offset: i64,
    item: Item,
    /// Sent by a node (a hand-over): applied where it lands, never handed
    /// over again (so a change of the topic's partition count cannot loop).
    handed_over: bool,
}

enum Item {
    Event(Result<Value, ValidationError>),
    /// Re-read this user from the store (another node changed it).
    Refresh(String),
}

/// A producer that waits for every replica and never writes a record twice;
/// records are keyed by user id and partitioned as Kafka's default does, so
/// a user's records land in the partition its owner consumes.
fn producer(opts: &KafkaOptions, role: &str) -> Result<FutureProducer, KafkaError> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", &opts.brokers)
        .set("client.id", format!("{}-{role}", opts.node))
        .set("partitioner", "murmur2_random")
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "25")
        .create()?)
}

/// Hands writes for users another node owns to the events topic.
struct Forwarder {
    producer: FutureProducer,
    topic: String,
}

impl Forwarder {
    fn new(opts: &KafkaOptions) -> Result<Self, KafkaError> {
        Ok(Self {
            producer: producer(opts, "forward")?,
            topic: opts.events_topic.clone(),
        })
    }

    async fn send(
        &self,
        key: &str,
        payload: &str,
        headers: Option<OwnedHeaders>,
    ) -> Result<(), EngineError> {
        let mut record = FutureRecord::to(&self.topic).key(key).payload(payload);
        if let Some(h) = headers {
            record = record.headers(h);
        }
        self.producer
            .send(record, Duration::from_secs(10))
            .await
            .map(|_| ())
            .map_err(|(e, _)| {
                EngineError::Unavailable(format!(
                    "the cluster's broker did not take the write: {e}"
                ))
            })
    }
}

impl Forwarder {
    /// Re-produces records `(user, payload)` keyed by their user, so each
    /// lands on its user's partition; returns once the broker has them all.
    async fn records(&self, records: &[(String, String)]) -> Result<(), EngineError> {
        let sends = records
            .iter()
            .map(|(user, payload)| self.send(user, payload, Some(handed_over())));
        for result in futures_util::future::join_all(sends).await {
            result?;
        }
        Ok(())
    }
}

/// Marks a record one node sent another (see [`Record::handed_over`]).
const HANDED_OVER_HEADER: &str = "stratify-handed-over";

fn handed_over() -> OwnedHeaders {
    OwnedHeaders::new().insert(Header {
        key: HANDED_OVER_HEADER,
        value: Some("1"),
    })
}

/// The user of an event record that arrived on `partition` although its
/// user's partition (murmur2, as Kafka's default partitioner) is another.
fn misrouted_user(event: &Value, partition: i32, partitions: i32) -> Option<String> {
    let user = event.get("user_id")?.as_str()?;
    (partition_of(user, partitions) != partition).then(|| user.to_owned())
}

#[async_trait::async_trait]
impl Forward for Forwarder {
    async fn events(&self, events: &[NewEvent]) -> Result<(), EngineError> {
        let sends = events.iter().map(|e| {
            let payload = e.to_json().to_string();
            async move {
                self.send(e.user_id.as_str(), &payload, Some(handed_over()))
                    .await
            }
        });
        for result in futures_util::future::join_all(sends).await {
            result?;
        }
        Ok(())
    }

    async fn refresh(&self, user: &str) -> Result<(), EngineError> {
        let headers = OwnedHeaders::new().insert(Header {
            key: REFRESH_HEADER,
            value: Some("1"),
        });
        let payload = serde_json::json!({ "user_id": user }).to_string();
        self.send(user, &payload, Some(headers)).await
    }
}

/// Runs this node as a member of the consumer group until the process ends.
/// `ready` is told once the node knows which users it owns (none, until
/// the group assigns it partitions) and where writes for the others go:
/// before that, an HTTP write would be taken as this node's own and applied
/// by no live state, so the server answers nothing until then.
pub async fn run_member(
    engine: Engine,
    opts: KafkaOptions,
    ready: tokio::sync::oneshot::Sender<()>,
) -> Result<(), KafkaError> {
    let assignment = Arc::new(Assignment::default());
    let consumer: Arc<StreamConsumer<Context>> = Arc::new(
        ClientConfig::new()
            .set("bootstrap.servers", &opts.brokers)
            .set("group.id", &opts.group)
            .set("client.id", &opts.node)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            // A killed node's partitions move within seconds.
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "500")
            .set("max.poll.interval.ms", "10000")
            .create_with_context(Context {
                topic: opts.events_topic.clone(),
                assignment: assignment.clone(),
            })?,
    );
    let partitions = partition_count(&consumer, &opts.events_topic).await?;
    consumer.subscribe(&[&opts.events_topic])?;
    let owns: stratify_engine::live::Owns = {
        let assignment = assignment.clone();
        Arc::new(move |user: &str| {
            assignment
                .owned
                .read()
                .contains(&partition_of(user, partitions))
        })
    };
    // Until the first assignment this node owns nobody.
    engine.cluster.own(owns.clone()).await?;
    let forwarder = Arc::new(Forwarder::new(&opts)?);
    engine.cluster.forward_to(forwarder.clone());
    engine.cluster.follow_cluster().await?;
    let _ = ready.send(());
    // One of several nodes: each webhook is delivered by its lease's holder.
    engine
        .webhooks
        .start_deliverers(Some(opts.node.clone()))
        .await?;
    tokio::spawn(relay_changes(engine.clone(), opts.clone()));
    let committed: Arc<parking_lot::Mutex<BTreeMap<i32, i64>>> = Arc::default();
    tokio::spawn(report_progress(
        engine.clone(),
        consumer.clone(),
        assignment.clone(),
        committed.clone(),
        opts.clone(),
    ));
    // One batch is stored while the next is read (pipelined); offsets are
    // committed in batch order, each once its batch is durable.
    let mut inflight: Option<tokio::task::JoinHandle<Stored>> = None;
    let mut batches = Settle {
        consumer: &consumer,
        topic: &opts.events_topic,
        committed: &committed,
        retry: RETRY_FIRST,
    };
    let mut batch: Vec<Record> = Vec::with_capacity(MAX_BATCH);
    loop {
        if assignment.reassigned.swap(false, Ordering::AcqRel) {
            // What is in flight is stored (and applied) by the old live
            // state before the new one is built from the log.
            if let Some(previous) = inflight.take() {
                let _ = batches.settle(previous).await?;
            }
            // Offsets of partitions owned before are another node's now.
            let owned = assignment.owned.read().clone();
            committed.lock().retain(|p, _| owned.contains(p));
            engine.cluster.own(owns.clone()).await?;
        }
        batch.clear();
        match tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await {
            Err(_) => {
                if let Some(previous) = inflight.take() {
                    let _ = batches.settle(previous).await?;
                }
                continue;
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "kafka receive failed");
                continue;
            }
            Ok(Ok(m)) => batch.push(record(&opts.events_topic, &m)),
        }
        while batch.len() < MAX_BATCH {
            // What the client has already fetched is taken without a timer;
            // only an empty queue waits (up to BATCH_WAIT).
            use futures_util::FutureExt;
            let ready = match consumer.recv().now_or_never() {
                Some(r) => Ok(r),
                None => tokio::time::timeout(BATCH_WAIT, consumer.recv()).await,
            };
            match ready {
                Ok(Ok(m)) => batch.push(record(&opts.events_topic, &m)),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "kafka receive failed");
                    break;
                }
                Err(_) => break,
            }
        }
        let mut first: BTreeMap<i32, i64> = BTreeMap::new();
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        let mut refresh = Vec::new();
        // Records a producer put on a partition that is not their user's
        // (another partitioner) go back to the topic on the right one, so
        // the user's owner applies them; they count as forwarded.
        let mut misrouted: Vec<(String, String)> = Vec::new();
        let items = batch
            .drain(..)
            .filter_map(|r| {
                first.entry(r.partition).or_insert(r.offset);
                next.insert(r.partition, r.offset + 1);
                match r.item {
                    Item::Event(Ok(v)) if r.handed_over => Some(Ok(v)),
                    Item::Event(Ok(v)) => match misrouted_user(&v, r.partition, partitions) {
                        Some(user) => {
                            misrouted.push((user, v.to_string()));
                            None
                        }
                        None => Some(Ok(v)),
                    },
                    Item::Event(e) => Some(e),
                    Item::Refresh(user) => {
                        refresh.push(user);
                        None
                    }
                }
            })
            .collect::<Vec<_>>();
        // The batch before this one must be durable first: a failed one
        // rewinds its partitions, and this batch (read past it) is dropped
        // to be read again.
        if let Some(previous) = inflight.take() {
            if let Err(rewound) = batches.settle(previous).await? {
                first.retain(|p, _| !rewound.contains_key(p));
                rewind(batches.consumer, batches.topic, &first);
                continue;
            }
        }
        let engine = engine.clone();
        let forwarder = forwarder.clone();
        inflight = Some(tokio::spawn(async move {
            let result = async {
                forwarder.records(&misrouted).await?;
                engine
                    .ingest
                    .ingest_records(items, Source::Kafka, misrouted.len() as u64)
                    .await?;
                // The store is current for these users now: re-read them.
                refresh_all(&engine, &refresh).await
            }
            .await;
            Stored {
                result,
                first,
                next,
            }
        }));
    }
}

/// A batch's outcome, with the offsets it read from and up to.
struct Stored {
    result: Result<(), EngineError>,
    first: BTreeMap<i32, i64>,
    next: BTreeMap<i32, i64>,
}

/// Where stored batches' offsets go, and the pause before a refused batch
/// is read again (doubling to 5 s, reset by a stored one).
struct Settle<'a> {
    consumer: &'a StreamConsumer<Context>,
    topic: &'a str,
    committed: &'a parking_lot::Mutex<BTreeMap<i32, i64>>,
    retry: Duration,
}

impl Settle<'_> {
    /// Waits for a batch being stored; commits its offsets when it is
    /// durable, else rewinds its partitions (after a growing pause) so it is
    /// read again and returns where they were rewound to (a batch read after
    /// it must not rewind those partitions past it).
    async fn settle(
        &mut self,
        batch: tokio::task::JoinHandle<Stored>,
    ) -> Result<Result<(), BTreeMap<i32, i64>>, KafkaError> {
        // A panic in the store path: stop the member, so its uncommitted
        // offsets are read again (by the next owner, or after a restart).
        let stored = batch
            .await
            .map_err(|e| KafkaError::Abandoned(e.to_string()))?;
        if let Err(e) = stored.result {
            // Not durable, so not committed: rewind and read the batch again.
            tracing::error!(error = %e, "cannot append kafka records; reading them again");
            tokio::time::sleep(self.retry).await;
            self.retry = (self.retry * 2).min(Duration::from_secs(5));
            rewind(self.consumer, self.topic, &stored.first);
            return Ok(Err(stored.first));
        }
        self.retry = RETRY_FIRST;
        // Durable: now the offsets may move.
        let mut tpl = TopicPartitionList::new();
        for (&p, &o) in &stored.next {
            if let Err(e) = tpl.add_partition_offset(self.topic, p, Offset::Offset(o)) {
                tracing::warn!(error = %e, "cannot commit kafka offsets");
            }
        }
        if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
            // Redelivered later and de-duplicated: nothing is lost.
            tracing::warn!(error = %e, "cannot commit kafka offsets");
        }
        self.committed.lock().extend(stored.next);
        Ok(Ok(()))
    }
}

/// Re-reads users another node changed (refresh records).
async fn refresh_all(engine: &Engine, users: &[String]) -> Result<(), EngineError> {
    for user in users {
        match engine.cluster.refresh_user(user).await {
            // A bad user id in a refresh record: nothing to re-read.
            Err(EngineError::Invalid(e)) => {
                tracing::warn!(error = %e, "a refresh record was ignored")
            }
            other => other?,
        }
    }
    Ok(())
}

/// Moves each partition back to `offsets` (a batch that was not stored).
fn rewind(consumer: &StreamConsumer<Context>, topic: &str, offsets: &BTreeMap<i32, i64>) {
    for (&p, &o) in offsets {
        if let Err(e) = consumer.seek(topic, p, Offset::Offset(o), Duration::from_secs(1)) {
            // A partition revoked meanwhile: its next owner starts from the
            // committed offset, which this batch never moved.
            tracing::warn!(partition = p, error = %e, "cannot rewind a kafka partition");
        }
    }
}

fn record<M: Message>(topic: &str, m: &M) -> Record {
    let refresh = m
        .headers()
        .is_some_and(|h| h.iter().any(|h| h.key == REFRESH_HEADER));
    let item = match m.payload().map(serde_json::from_slice::<Value>) {
        Some(Ok(Value::Object(o))) if refresh => match o.get("user_id") {
            Some(Value::String(user)) => Item::Refresh(user.clone()),
            _ => Item::Event(Err(ValidationError::new(
                ErrorCode::InvalidRefresh,
                "a refresh record names a user_id",
            ))),
        },
        other => Item::Event(event(topic, m, other)),
    };
    Record {
        partition: m.partition(),
        offset: m.offset(),
        item,
        handed_over: m
            .headers()
            .is_some_and(|h| h.iter().any(|h| h.key == HANDED_OVER_HEADER)),
    }
}

fn event<M: Message>(
    topic: &str,
    m: &M,
    payload: Option<Result<Value, serde_json::Error>>,
) -> Result<Value, ValidationError> {
    match payload {
        None => Err(ValidationError::new(
            ErrorCode::EmptyRecord,
            "the record has no payload",
        )),
        Some(Err(e)) => Err(ValidationError::new(
            ErrorCode::MalformedJson,
            e.to_string(),
        )),
        Some(Ok(Value::Object(mut o))) => {
            if !o.contains_key("event_id") {
                let id = format!("kafka-{topic}-{}-{}", m.partition(), m.offset());
                o.insert("event_id".into(), Value::String(id));
            }
            Ok(Value::Object(o))
        }
        Some(Ok(_)) => Err(ValidationError::new(
            ErrorCode::InvalidEvent,
            "an event is a JSON object",
        )),
    }
}

async fn partition_count(
    consumer: &Arc<StreamConsumer<Context>>,
    topic: &str,
) -> Result<i32, KafkaError> {
    let consumer = consumer.clone();
    let name = topic.to_owned();
    let metadata = tokio::task::spawn_blocking(move || {
        consumer.fetch_metadata(Some(&name), Duration::from_secs(10))
    })
    .await
    .map_err(|_| KafkaError::NoTopic(topic.to_owned()))??;
    let n = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len());
    if n == 0 {
        return Err(KafkaError::NoTopic(topic.to_owned()));
    }
    Ok(n as i32)
}

/// Saves each owned partition's committed offset and end to the store.
async fn report_progress(
    engine: Engine,
    consumer: Arc<StreamConsumer<Context>>,
    assignment: Arc<Assignment>,
    committed: Arc<parking_lot::Mutex<BTreeMap<i32, i64>>>,
    opts: KafkaOptions,
) {
    loop {
        tokio::time::sleep(PROGRESS_EVERY).await;
        let owned: Vec<i32> = assignment.owned.read().iter().copied().collect();
        let unknown: Vec<i32> = {
            let known = committed.lock();
            owned
                .iter()
                .copied()
                .filter(|p| !known.contains_key(p))
                .collect()
        };
        let consumer = consumer.clone();
        let topic = opts.events_topic.clone();
        let (ends, group) = tokio::task::spawn_blocking(move || {
            let ends = owned
                .into_iter()
                .filter_map(|p| {
                    consumer
                        .fetch_watermarks(&topic, p, Duration::from_secs(2))
                        .ok()
                        .map(|(_, high)| (p, high))
                })
                .collect::<Vec<_>>();
            (ends, group_offsets(&consumer, &topic, &unknown))
        })
        .await
        .unwrap_or_default();
        // A partition this node has not committed yet: the group's offset
        // (the previous owner's last commit).
        for (p, o) in group {
            committed.lock().entry(p).or_insert(o);
        }
        let now = engine.now();
        let progress = ends
            .into_iter()
            .filter_map(|(p, high)| {
                // Never committed by anyone: unknown.
                let done = committed.lock().get(&p).copied()?;
                Some(PartitionProgress {
                    topic: opts.events_topic.clone(),
                    partition: p,
                    committed: done,
                    high_water: high.max(done),
                    node: opts.node.clone(),
                    updated_at: now,
                })
            })
            .collect::<Vec<_>>();
        if !progress.is_empty() {
            if let Err(e) = engine.store().save_partition_progress(progress).await {
                tracing::warn!(error = %e, "cannot save kafka progress");
            }
        }
    }
}

/// The group's committed offsets of `partitions` (those with one).
fn group_offsets(
    consumer: &StreamConsumer<Context>,
    topic: &str,
    partitions: &[i32],
) -> Vec<(i32, i64)> {
    if partitions.is_empty() {
        return Vec::new();
    }
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        tpl.add_partition(topic, p);
    }
    match consumer.committed_offsets(tpl, Duration::from_secs(2)) {
        Ok(tpl) => tpl
            .elements_for_topic(topic)
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the group's committed offsets");
            Vec::new()
        }
    }
}

/// Relays the shared change log to the changes topic, keyed by user id, in
/// sequence order: one node at a time (a lease in the store, taken over
/// [`RELAY_LEASE`] after its holder stops), from the cursor the previous
/// relay saved after its last acknowledged page. At least once: a relay
/// that stops between a page's acknowledgement and its cursor write leaves
/// that page to be sent again; each record carries its `seq`.
async fn relay_changes(engine: Engine, opts: KafkaOptions) {
    let producer = match producer(&opts, "changes") {
        Ok(p) => p,
        Err(e) => return tracing::error!(error = %e, "cannot create the changes producer"),
    };
    let lease = format!("changes-relay:{}", opts.changes_topic);
    let store = engine.store();
    loop {
        let now = engine.now();
        let ttl = RELAY_LEASE.as_millis() as i64;
        let cursor = match store.hold_lease(&lease, &opts.node, now, now + ttl).await {
            Ok(Some(cursor)) => cursor,
            Ok(None) => {
                tokio::time::sleep(RELAY_EVERY).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot take the changes relay lease");
                tokio::time::sleep(RELAY_EVERY).await;
                continue;
            }
        };
        let page = match store.changes(None, cursor, RELAY_PAGE).await {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the change log");
                tokio::time::sleep(RELAY_EVERY).await;
                continue;
            }
        };
        let Some(last) = page.last().map(|c| c.seq) else {
            tokio::time::sleep(RELAY_EVERY).await;
            continue;
        };
        let sends = page.iter().map(|c| {
            let payload = serde_json::json!({
                "seq": c.seq,
                "segment_id": c.segment_id,
                "user_id": c.user_id,
                "entered": c.entered,
                "at": stratify_core::time::format_rfc3339(c.at),
                "cause": c.cause.to_json(),
            })
            .to_string();
            let producer = &producer;
            let topic = &opts.changes_topic;
            async move {
                let record = FutureRecord::to(topic).key(&c.user_id).payload(&payload);
                producer.send(record, Duration::from_secs(10)).await
            }
        });
        let failed = futures_util::future::join_all(sends)
            .await
            .into_iter()
            .find_map(Result::err);
        if let Some((e, _)) = failed {
            // The cursor stays: the page is sent again.
            tracing::error!(error = %e, "cannot produce membership changes; retrying");
            tokio::time::sleep(RELAY_EVERY).await;
            continue;
        }
        match store.advance_lease(&lease, &opts.node, last).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!("the changes relay lease moved to another node"),
            Err(e) => tracing::warn!(error = %e, "cannot save the changes relay cursor"),
        }
        if page.len() < RELAY_PAGE as usize {
            tokio::time::sleep(RELAY_EVERY).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(payload: Option<&str>, refresh: bool) -> rdkafka::message::OwnedMessage {
        let headers = refresh.then(|| {
            OwnedHeaders::new().insert(Header {
                key: REFRESH_HEADER,
                value: Some("1"),
            })
        });
        rdkafka::message::OwnedMessage::new(
            payload.map(|p| p.as_bytes().to_vec()),
            Some(b"u1".to_vec()),
            "events".into(),
            rdkafka::Timestamp::NotAvailable,
            3,
            41,
            headers,
        )
    }

    fn code(item: Item) -> &'static str {
        match item {
            Item::Event(Err(e)) => e.code.as_str(),
            Item::Event(Ok(_)) => "event",
            Item::Refresh(_) => "refresh",
        }
    }

    #[test]
    fn records_become_events_refreshes_or_rejections() {
        // An event without an id gets one from its place in the topic.
        match record(
            "events",
            &message(Some(r#"{"user_id":"u1","name":"LOGIN"}"#), false),
        )
        .item
        {
            Item::Event(Ok(v)) => assert_eq!(v["event_id"], "kafka-events-3-41"),
            _ => panic!("an event"),
        }
        match record("events", &message(Some(r#"{"user_id":"u1"}"#), true)).item {
            Item::Refresh(user) => assert_eq!(user, "u1"),
            _ => panic!("a refresh"),
        }
        let bad = [
            (message(None, false), "empty_record"),
            (message(Some("{"), false), "malformed_json"),
            (message(Some("[1]"), false), "invalid_event"),
            (message(Some(r#"{"user_id": 7}"#), true), "invalid_refresh"),
            (message(Some("{}"), true), "invalid_refresh"),
            // A refresh header on something that is not an object: as any record.
            (message(Some("7"), true), "invalid_event"),
        ];
        for (m, expected) in bad {
            assert_eq!(code(record("events", &m).item), expected);
        }
    }

    #[test]
    fn partitions_match_kafkas_default_partitioner() {
        // Reference values from Kafka's Java client (Utils.murmur2).
        assert_eq!(murmur2(b"21") as i32, -973_932_308);
        assert_eq!(murmur2(b"foobar") as i32, -790_332_482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985_981_536);
        assert_eq!(
            murmur2(b"a-little-bit-longer-string") as i32,
            -1_486_304_829
        );
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32,
            -58_897_971
        );
        assert_eq!(murmur2(b"abc") as i32, 479_470_107);
        let p = partition_of("u1", 4);
        assert!((0..4).contains(&p));
    }
}

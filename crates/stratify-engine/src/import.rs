//! Bulk import of CSV and NDJSON files (`stratify import`).
//!
//! A parser thread reads the file and sends batches to the store while the
//! next batch is parsed, so parsing and the durable writes overlap. A bad row
//! is reported with its line number and skipped; the import goes on. Every
//! row has an idempotency key (its `event_id`/`order_id`, or its content and
//! line number), so importing the same file again adds nothing twice.
//!
//! Users files: a `user_id` column; every other column is an attribute whose
//! type is inferred (numbers, booleans, ISO dates). Events files: `user_id`,
//! `event_name` (or `name`), `timestamp`, optional `event_id`; other columns
//! become properties. Orders files: `order_id, user_id, amount, city, timestamp`,
//! stored as `order_placed` events exactly as `POST /v1/orders` would.

use crate::ingest::IngestOutcome;
use crate::EngineError;
use serde::Serialize;
use serde_json::{Map, Value};
use std::io::Read;
use stratify_core::attributes::infer_csv_value;
use stratify_core::event::{import_row_key, NewEvent};
use stratify_core::ids::{EventId, EventName, UserId};
use stratify_core::time::{self, Millis};
use stratify_core::ErrorCode;
use stratify_core::ValidationError;
use stratify_store::{Attributes, Source};
use tokio::sync::mpsc;

/// Events per durable write: large, so that one fsync serves many rows,
/// and small enough that a file of a million rows is several batches, so
/// that its parsing, writing and deriving overlap (measured: 1 M orders in
/// one batch took 11.0–11.8 s, in four 7.0–9.3 s; 10 M events took
/// 27–32 s with either size).
const BATCH_ROWS: usize = 250_000;
/// Users per durable write: smaller, because each row carries an attribute
/// map; a batch this size is reused by the allocator instead of faulting in
/// fresh pages (measured: 100 000 users went from 47 000 to over 65 000
/// rows/s; events keep the large batch, whose fsyncs it amortises).
const USER_BATCH_ROWS: usize = 20_000;

fn batch_rows(kind: FileKind) -> usize {
    match kind {
        FileKind::Users => USER_BATCH_ROWS,
        _ => BATCH_ROWS,
    }
}
/// Bad rows kept in the report (all are counted).
const MAX_REPORTED_BAD_ROWS: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Users,
    EventsCsv,
    EventsNdjson,
    Orders,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ImportReport {
    pub rows: u64,
    /// New rows written (users created or changed; events appended).
    pub written: u64,
    /// Rows already in the store (imported before).
    pub unchanged: u64,
    pub bad_rows: u64,
    /// The first bad rows, with 1-based line numbers.
    pub errors: Vec<BadRow>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BadRow {
    pub line: u64,
    pub message: String,
}

enum Batch {
    Users(Vec<(UserId, Attributes)>),
    Events(Vec<Result<NewEvent, ValidationError>>, Vec<u64>),
}

struct Parsed {
    batch: Batch,
    bad: Vec<BadRow>,
    rows: u64,
    bytes: u64,
}

/// Events an import must bring at least for a bulk append (below this the
/// per-row index upkeep is cheap whatever the log holds).
const BULK_MIN_EVENTS: u64 = 50_000;

impl crate::ingest::IngestService {
    /// Before importing about `events` events (events and orders files):
    /// when they are at least as many as the log holds, the store may build
    /// its per-user indexes once at the end instead of row by row (the
    /// rebuild costs about as much per stored event as upkeep costs per new
    /// one). Returns whether it does; call [`Self::end_bulk_import`] after
    /// the last file either way, also when an import failed.
    pub async fn begin_bulk_import(&self, events: u64) -> Result<bool, EngineError> {
        if events < BULK_MIN_EVENTS {
            return Ok(false);
        }
        let held = u64::try_from(self.store.last_event_seq().await?).unwrap_or(0);
        if events < held {
            return Ok(false);
        }
        Ok(self.store.begin_bulk_append().await?)
    }

    /// Ends what [`Self::begin_bulk_import`] began: the indexes are whole
    /// when this returns.
    pub async fn end_bulk_import(&self) -> Result<(), EngineError> {
        Ok(self.store.end_bulk_append().await?)
    }

    /// Imports one file. `progress` is called with the bytes read so far.
    pub async fn import<R>(
        &self,
        kind: FileKind,
        reader: R,
        progress: impl Fn(u64),
    ) -> Result<ImportReport, EngineError>
    where
        R: Read + Send + 'static,
    {
        let (tx, mut rx) = mpsc::channel::<Result<Parsed, String>>(2);
        let now = self.clock.now();
        let parser = std::thread::spawn(move || parse(kind, reader, now, &tx));
        let mut report = ImportReport::default();
        // The derived views of the last durable batch, told on a blocking
        // thread while the next batch is written; one at a time, in order.
        let mut deriving: Option<tokio::task::JoinHandle<()>> = None;
        while let Some(parsed) = rx.recv().await {
            let parsed = parsed.map_err(|message| {
                EngineError::Invalid(ValidationError::new(ErrorCode::UnreadableFile, message))
            })?;
            report.rows += parsed.rows;
            report.bad_rows += parsed.bad.len() as u64;
            let room = MAX_REPORTED_BAD_ROWS.saturating_sub(report.errors.len());
            report.errors.extend(parsed.bad.iter().take(room).cloned());
            match parsed.batch {
                Batch::Users(mut users) => {
                    self.views
                        .aliases
                        .rewrite(users.iter_mut().map(|(id, _)| id));
                    let n = users.len() as u64;
                    let users = std::sync::Arc::new(users);
                    let changed = self
                        .store
                        .merge_users(users.clone(), self.clock.now())
                        .await?;
                    let (derive, clock) = (self.derive.clone(), self.clock.clone());
                    let tell = move || {
                        for (id, attributes) in users.iter() {
                            derive.user_written(id.as_str(), attributes, true, clock.now());
                        }
                    };
                    derive_after(&mut deriving, tell).await?;
                    report.written += changed;
                    report.unchanged += n - changed;
                }
                Batch::Events(events, lines) => {
                    if let Some(bad) = parsed.bad.last() {
                        self.record_bad_rows(parsed.bad.len() as u64, bad).await?;
                    }
                    let (outcome, appended): (IngestOutcome, _) =
                        self.ingest_deferred(events, Source::Import, 0).await?;
                    if let Some(appended) = appended {
                        let derive = self.derive.clone();
                        derive_after(&mut deriving, move || appended.apply(derive.as_ref()))
                            .await?;
                    }
                    report.written += outcome.accepted - outcome.duplicates;
                    report.unchanged += outcome.duplicates;
                    report.bad_rows += outcome.rejected.len() as u64;
                    for r in outcome.rejected {
                        if report.errors.len() < MAX_REPORTED_BAD_ROWS {
                            let line = lines.get(r.index).copied().unwrap_or(0);
                            report.errors.push(BadRow {
                                line,
                                message: format!("{}: {}", r.code, r.message),
                            });
                        }
                    }
                }
            }
            progress(parsed.bytes);
        }
        if let Some(last) = deriving.take() {
            last.await.map_err(derive_failed)?;
        }
        parser.join().map_err(|_| {
            EngineError::Invalid(ValidationError::new(
                ErrorCode::UnreadableFile,
                "the parser failed",
            ))
        })?;
        Ok(report)
    }

    async fn record_bad_rows(&self, count: u64, last: &BadRow) -> Result<(), EngineError> {
        let report = stratify_store::IngestReport {
            source: Source::Import,
            received: count,
            rejected: count,
            forwarded: 0,
            last_error: Some(format!("line {}: {}", last.line, last.message)),
            now: self.clock.now(),
        };
        Ok(self.store.record_ingest(report).await?)
    }
}

/// Waits for the views to have taken the batch before, then hands them
/// this one.
async fn derive_after(
    deriving: &mut Option<tokio::task::JoinHandle<()>>,
    tell: impl FnOnce() + Send + 'static,
) -> Result<(), EngineError> {
    if let Some(before) = deriving.take() {
        before.await.map_err(derive_failed)?;
    }
    *deriving = Some(tokio::task::spawn_blocking(tell));
    Ok(())
}

fn derive_failed(e: tokio::task::JoinError) -> EngineError {
    // A panic in a derived view: the same as a failed store task.
    EngineError::Store(stratify_store::StoreError::Task(e))
}

fn parse<R: Read>(
    kind: FileKind,
    mut reader: R,
    now: Millis,
    tx: &mpsc::Sender<Result<Parsed, String>>,
) {
    let result = match kind {
        FileKind::EventsNdjson => parse_ndjson(&mut reader, now, tx),
        _ => parse_csv(kind, &mut reader, now, tx),
    };
    if let Err(message) = result {
        let _ = tx.blocking_send(Err(message));
    }
}

struct Columns {
    user_id: usize,
    name: Option<usize>,
    timestamp: Option<usize>,
    event_id: Option<usize>,
    order_id: Option<usize>,
    amount: Option<usize>,
    city: Option<usize>,
}

fn parse_csv<R: Read>(
    kind: FileKind,
    reader: &mut R,
    now: Millis,
    tx: &mpsc::Sender<Result<Parsed, String>>,
) -> Result<(), String> {
    let mut csv = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(reader as &mut dyn Read);
    let headers: Vec<String> = csv
        .headers()
        .map_err(|e| format!("cannot read the header row: {e}"))?
        .iter()
        .map(|h| h.trim().to_owned())
        .collect();
    let col = |names: &[&str]| headers.iter().position(|h| names.contains(&h.as_str()));
    let cols = Columns {
        user_id: col(&["user_id"]).ok_or("the header row has no user_id column")?,
        name: col(&["event_name", "name"]),
        timestamp: col(&["timestamp"]),
        event_id: col(&["event_id"]),
        order_id: col(&["order_id"]),
        amount: col(&["amount"]),
        city: col(&["city"]),
    };
    match kind {
        FileKind::EventsCsv if cols.name.is_none() || cols.timestamp.is_none() => {
            return Err("an events file needs user_id, event_name and timestamp columns".into())
        }
        FileKind::Orders
            if cols.amount.is_none() || cols.city.is_none() || cols.timestamp.is_none() =>
        {
            return Err(
                "an orders file needs order_id, user_id, amount, city and timestamp columns".into(),
            )
        }
        _ => {}
    }
    let mut record = csv::StringRecord::new();
    let mut parsed = new_parsed(kind);
    let mut lines: Vec<u64> = Vec::new();
    loop {
        let line = csv.position().line() + 1;
        match csv.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                // A row the CSV reader cannot read at all (say, invalid UTF-8).
                parsed.rows += 1;
                parsed.bad.push(BadRow {
                    line,
                    message: e.to_string(),
                });
                continue;
            }
        }
        let line = record.position().map_or(line, |p| p.line());
        parsed.rows += 1;
        let row = match kind {
            FileKind::Users => user_row(&headers, &cols, &record).map(|u| {
                if let Batch::Users(v) = &mut parsed.batch {
                    v.push(u);
                }
            }),
            FileKind::EventsCsv => event_row(&headers, &cols, &record, line)
                .map(|e| push_event(&mut parsed, &mut lines, e, line)),
            FileKind::Orders => {
                order_row(&cols, &record, now).map(|e| push_event(&mut parsed, &mut lines, e, line))
            }
            FileKind::EventsNdjson => Ok(()),
        };
        if let Err(e) = row {
            parsed.bad.push(BadRow {
                line,
                message: e.to_string(),
            });
        }
        if parsed.rows as usize >= batch_rows(kind) {
            parsed.bytes = csv.position().byte();
            let full = std::mem::replace(&mut parsed, new_parsed(kind));
            send(tx, full, &mut lines)?;
        }
    }
    parsed.bytes = csv.position().byte();
    send(tx, parsed, &mut lines)
}

fn new_parsed(kind: FileKind) -> Parsed {
    let batch = match kind {
        FileKind::Users => Batch::Users(Vec::with_capacity(USER_BATCH_ROWS)),
        _ => Batch::Events(Vec::with_capacity(BATCH_ROWS), Vec::new()),
    };
    Parsed {
        batch,
        bad: Vec::new(),
        rows: 0,
        bytes: 0,
    }
}

fn push_event(parsed: &mut Parsed, lines: &mut Vec<u64>, event: NewEvent, line: u64) {
    if let Batch::Events(v, _) = &mut parsed.batch {
        v.push(Ok(event));
        lines.push(line);
    }
}

fn send(
    tx: &mpsc::Sender<Result<Parsed, String>>,
    mut parsed: Parsed,
    lines: &mut Vec<u64>,
) -> Result<(), String> {
    if let Batch::Events(_, l) = &mut parsed.batch {
        *l = std::mem::take(lines);
    }
    tx.blocking_send(Ok(parsed))
        .map_err(|_| "the import was stopped".to_owned())
}

fn field<'r>(
    record: &'r csv::StringRecord,
    index: Option<usize>,
    name: &str,
) -> Result<&'r str, ValidationError> {
    index
        .and_then(|i| record.get(i))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ValidationError::new(ErrorCode::MissingField, format!("{name} is empty")))
}

fn user_row(
    headers: &[String],
    cols: &Columns,
    record: &csv::StringRecord,
) -> Result<(UserId, Attributes), ValidationError> {
    let user_id = UserId::parse(field(record, Some(cols.user_id), "user_id")?)?;
    let mut attrs = Map::new();
    for (i, cell) in record.iter().enumerate() {
        if i == cols.user_id {
            continue;
        }
        let Some(name) = headers.get(i) else {
            return Err(ValidationError::new(
                ErrorCode::ExtraColumn,
                format!("column {} has no header", i + 1),
            ));
        };
        if let Some(v) = infer_csv_value(cell) {
            attrs.insert(name.clone(), v);
        }
    }
    stratify_core::attributes::check(&attrs, "")?;
    Ok((user_id, attrs))
}

fn event_row(
    headers: &[String],
    cols: &Columns,
    record: &csv::StringRecord,
    line: u64,
) -> Result<NewEvent, ValidationError> {
    let user = field(record, Some(cols.user_id), "user_id")?;
    let name = field(record, cols.name, "event_name")?;
    let ts_text = field(record, cols.timestamp, "timestamp")?;
    let timestamp = time::parse_flexible(ts_text)?;
    let event_id = match cols
        .event_id
        .and_then(|i| record.get(i))
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        Some(id) => Some(EventId::parse(id)?),
        None => None,
    };
    let known = [Some(cols.user_id), cols.name, cols.timestamp, cols.event_id];
    let mut props = Map::new();
    for (i, cell) in record.iter().enumerate() {
        if known.contains(&Some(i)) {
            continue;
        }
        if let (Some(h), Some(v)) = (headers.get(i), infer_csv_value(cell)) {
            props.insert(h.clone(), v);
        }
    }
    let dedupe_key = Some(match &event_id {
        Some(id) => stratify_core::hash::event_id_key(id.as_str()),
        None => import_row_key("events", line, &record.iter().collect::<Vec<_>>()),
    });
    Ok(NewEvent {
        event_id,
        user_id: UserId::parse(user)?,
        name: EventName::parse(name)?,
        timestamp,
        properties: (!props.is_empty()).then_some(props),
        dedupe_key,
    })
}

fn order_row(
    cols: &Columns,
    record: &csv::StringRecord,
    now: Millis,
) -> Result<NewEvent, ValidationError> {
    let amount: f64 = field(record, cols.amount, "amount")?
        .parse()
        .map_err(|_| ValidationError::new(ErrorCode::InvalidAmount, "amount is not a number"))?;
    let ts = time::parse_flexible(field(record, cols.timestamp, "timestamp")?)?;
    let mut order = Map::new();
    order.insert(
        "user_id".into(),
        Value::String(field(record, Some(cols.user_id), "user_id")?.to_owned()),
    );
    order.insert(
        "amount".into(),
        serde_json::Number::from_f64(amount)
            .map(Value::Number)
            .ok_or_else(|| {
                ValidationError::new(ErrorCode::InvalidAmount, "amount is not a finite number")
            })?,
    );
    order.insert(
        "city".into(),
        Value::String(field(record, cols.city, "city")?.to_owned()),
    );
    order.insert("timestamp".into(), Value::Number(ts.into()));
    if let Ok(id) = field(record, cols.order_id, "order_id") {
        order.insert("order_id".into(), Value::String(id.to_owned()));
    }
    NewEvent::from_order_json(Value::Object(order), now)
}

fn parse_ndjson<R: Read>(
    reader: &mut R,
    now: Millis,
    tx: &mpsc::Sender<Result<Parsed, String>>,
) -> Result<(), String> {
    use std::io::BufRead;
    let mut buf = std::io::BufReader::with_capacity(1 << 20, reader);
    let mut parsed = new_parsed(FileKind::EventsNdjson);
    let mut lines = Vec::new();
    let mut text = String::new();
    let mut line = 0u64;
    let mut bytes = 0u64;
    loop {
        text.clear();
        let n = buf
            .read_line(&mut text)
            .map_err(|e| format!("cannot read line {}: {e}", line + 1))?;
        if n == 0 {
            break;
        }
        line += 1;
        bytes += n as u64;
        let trimmed = text.trim();
        if trimmed.is_empty() {
            continue;
        }
        parsed.rows += 1;
        let event = serde_json::from_str::<Value>(trimmed)
            .map_err(|e| ValidationError::new(ErrorCode::MalformedJson, e.to_string()))
            .and_then(|v| NewEvent::from_json(v, now))
            .map(|mut e| {
                if e.dedupe_key.is_none() {
                    e.dedupe_key = Some(import_row_key("ndjson", line, &[trimmed]));
                }
                e
            });
        match event {
            Ok(e) => push_event(&mut parsed, &mut lines, e, line),
            Err(e) => parsed.bad.push(BadRow {
                line,
                message: e.to_string(),
            }),
        }
        if parsed.rows as usize >= BATCH_ROWS {
            parsed.bytes = bytes;
            let full = std::mem::replace(&mut parsed, new_parsed(FileKind::EventsNdjson));
            send(tx, full, &mut lines)?;
        }
    }
    parsed.bytes = bytes;
    send(tx, parsed, &mut lines)
}

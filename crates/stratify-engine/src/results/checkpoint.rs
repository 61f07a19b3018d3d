//! Metric event copies saved to disk, so that a restart reads the log only
//! after them instead of from its start.
//!
//! One file per (event, property), `<dir>/<hash>.col`, little-endian:
//! the magic `STRCOL01`, the header's length (u32) and the header (JSON:
//! event, property, log position, erasure position, when written, how many
//! events), then one 24-byte record per event (uid, time, value bits; a
//! missing value is [`NONE_BITS`]), then the CRC-32 of everything before it.
//! It is written to a temporary file, synced and renamed over the old one:
//! a crash leaves either, and a stray temporary file is removed at load.
//!
//! A file is trusted only when all of these hold, and is deleted otherwise
//! (the copy is then read from the log, as without a checkpoint):
//! - it is whole: its length matches its header and its checksum matches;
//! - its log position is not past the store's (a store restored from an
//!   older backup, or another store);
//! - no erasure or merge was logged after it was written (the erasure log's
//!   newest number is the one it recorded), and it is younger than the
//!   erasure log's memory (an older file could have outlived an erasure the
//!   log has since forgotten).
//!
//! A file behind the log is fine: the copy reads the events after it.

use serde::{Deserialize, Serialize};
use sha2::Digest;
use std::io::Write;
use std::path::{Path, PathBuf};
use stratify_core::time::Millis;
use stratify_store::MetricEvent;

const MAGIC: &[u8; 8] = b"STRCOL01";
/// A missing value (a NaN no JSON number can produce).
pub const NONE_BITS: u64 = u64::MAX;
const RECORD: usize = 24;
/// Largest header accepted (an event name and a property are short).
const MAX_HEADER: usize = 64 * 1024;

/// What a file says about itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub event: String,
    pub property: Option<String>,
    /// The log's sequence number the events are complete up to.
    pub through_seq: i64,
    /// The erasure log's newest number when written.
    pub erasure_seq: i64,
    pub written_at: Millis,
    pub events: u64,
}

/// The file for one (event, property) in `dir`.
pub fn path(dir: &Path, event: &str, property: Option<&str>) -> PathBuf {
    let mut h = sha2::Sha256::new();
    h.update(event.as_bytes());
    h.update([0]);
    if let Some(p) = property {
        h.update([1]);
        h.update(p.as_bytes());
    }
    let digest = h.finalize();
    let name: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    dir.join(format!("{name}.col"))
}

/// Writes a copy (temporary file, sync, rename, sync of the directory).
pub fn write(dir: &Path, header: &Header, events: &[MetricEvent]) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let target = path(dir, &header.event, header.property.as_deref());
    let tmp = target.with_extension("tmp");
    let head = serde_json::to_vec(header).map_err(std::io::Error::other)?;
    let mut crc = crc32fast::Hasher::new();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp)?);
    let mut put = |bytes: &[u8], out: &mut std::io::BufWriter<std::fs::File>| {
        crc.update(bytes);
        out.write_all(bytes)
    };
    put(MAGIC, &mut out)?;
    put(&(head.len() as u32).to_le_bytes(), &mut out)?;
    put(&head, &mut out)?;
    let mut chunk = Vec::with_capacity(RECORD * 4096);
    for batch in events.chunks(4096) {
        chunk.clear();
        for e in batch {
            chunk.extend_from_slice(&e.uid.to_le_bytes());
            chunk.extend_from_slice(&e.ts.to_le_bytes());
            chunk.extend_from_slice(&e.value.map_or(NONE_BITS, f64::to_bits).to_le_bytes());
        }
        put(&chunk, &mut out)?;
    }
    let sum = crc.finalize();
    out.write_all(&sum.to_le_bytes())?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, &target)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Why a file was not trusted.
#[derive(Debug, Clone, PartialEq)]
pub enum Refused {
    /// Too short, another format, a length or checksum that does not match.
    Damaged(&'static str),
    /// Past the store's log, older than the erasure log's memory, or an
    /// erasure or merge was logged after it.
    Stale(&'static str),
}

/// Reads a file's header and events, checking that it is whole.
pub fn read(file: &Path) -> Result<(Header, Vec<MetricEvent>), Refused> {
    let bytes = std::fs::read(file).map_err(|_| Refused::Damaged("unreadable"))?;
    if bytes.len() < MAGIC.len() + 4 + 4 || &bytes[..MAGIC.len()] != MAGIC {
        return Err(Refused::Damaged("not a checkpoint"));
    }
    let (body, sum) = bytes.split_at(bytes.len() - 4);
    let sum = u32::from_le_bytes(sum.try_into().expect("4 bytes"));
    if crc32fast::hash(body) != sum {
        return Err(Refused::Damaged("checksum"));
    }
    let head_len = u32::from_le_bytes(body[8..12].try_into().expect("4 bytes")) as usize;
    if head_len > MAX_HEADER || 12 + head_len > body.len() {
        return Err(Refused::Damaged("header length"));
    }
    let header: Header =
        serde_json::from_slice(&body[12..12 + head_len]).map_err(|_| Refused::Damaged("header"))?;
    let records = &body[12 + head_len..];
    if records.len() % RECORD != 0 || (records.len() / RECORD) as u64 != header.events {
        return Err(Refused::Damaged("length"));
    }
    let events = records
        .chunks_exact(RECORD)
        .map(|r| {
            let word =
                |k: usize| u64::from_le_bytes(r[k * 8..k * 8 + 8].try_into().expect("8 bytes"));
            MetricEvent {
                uid: word(0) as i64,
                ts: word(1) as i64,
                value: match word(2) {
                    NONE_BITS => None,
                    bits => Some(f64::from_bits(bits)),
                },
            }
        })
        .collect();
    Ok((header, events))
}

/// Whether a whole file still holds for the store as it is now.
pub fn check(
    header: &Header,
    last_event_seq: i64,
    last_erasure_seq: i64,
    now: Millis,
) -> Result<(), Refused> {
    if header.through_seq > last_event_seq {
        return Err(Refused::Stale("past the store's log"));
    }
    if header.erasure_seq != last_erasure_seq {
        return Err(Refused::Stale("an erasure or merge since"));
    }
    if now.saturating_sub(header.written_at) >= stratify_store::ERASURE_MEMORY_MS
        || header.written_at > now
    {
        return Err(Refused::Stale("older than the erasure log's memory"));
    }
    Ok(())
}

/// Every checkpoint file in `dir` (stray temporary files are removed).
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let p = entry.path();
        match p.extension().and_then(|e| e.to_str()) {
            Some("col") => out.push(p),
            Some("tmp") => {
                let _ = std::fs::remove_file(&p);
            }
            _ => {}
        }
    }
    out.sort();
    out
}

/// Deletes every checkpoint in `dir` (an erasure: no copy of the user's
/// events may outlive them, on disk either).
pub fn remove_all(dir: &Path) {
    for p in files(dir) {
        let _ = std::fs::remove_file(p);
    }
}

#[cfg(test)]
mod tests {
    //! The reader takes any bytes without panicking, reads back what was
    //! written, and refuses any file with one byte changed or cut short.
    use super::*;
    use proptest::prelude::*;

    fn written(events: &[MetricEvent]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("dir");
        let header = Header {
            event: "buy".into(),
            property: Some("amount".into()),
            through_seq: 9,
            erasure_seq: 0,
            written_at: 5,
            events: events.len() as u64,
        };
        write(dir.path(), &header, events).expect("write");
        let file = path(dir.path(), "buy", Some("amount"));
        (dir, file)
    }

    fn events(raw: Vec<(i64, i64, Option<f64>)>) -> Vec<MetricEvent> {
        raw.into_iter()
            .map(|(uid, ts, value)| MetricEvent {
                uid,
                ts,
                value: value.filter(|v| v.is_finite()),
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn any_bytes_are_read_or_refused_without_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let dir = tempfile::tempdir().expect("dir");
            let file = dir.path().join("x.col");
            std::fs::write(&file, &bytes).expect("write");
            let _ = read(&file);
        }

        #[test]
        fn a_file_reads_back_and_any_change_is_refused(
            raw in proptest::collection::vec((any::<i64>(), any::<i64>(), any::<Option<f64>>()), 0..40),
            at in any::<prop::sample::Index>(),
            flip in 1_u8..=255,
            cut in any::<prop::sample::Index>(),
        ) {
            let events = events(raw);
            let (_dir, file) = written(&events);
            let (header, back) = read(&file).expect("whole");
            prop_assert_eq!(header.events, events.len() as u64);
            prop_assert_eq!(back, events);
            let bytes = std::fs::read(&file).expect("read");
            let mut changed = bytes.clone();
            changed[at.index(bytes.len())] ^= flip;
            std::fs::write(&file, &changed).expect("write");
            prop_assert!(read(&file).is_err());
            std::fs::write(&file, &bytes[..cut.index(bytes.len())]).expect("write");
            prop_assert!(read(&file).is_err());
        }
    }
}

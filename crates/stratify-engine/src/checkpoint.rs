//! Derived state saved at shutdown, so that a restart reads it instead of
//! rebuilding it from the whole store: the population index and the live
//! state, one file each in the checkpoint directory.
//!
//! A file is the magic `STRDRV01`, then a [`stratify_core::codec`] stream:
//! the header (JSON text), the body, and the CRC-32 of both. It is written
//! to a temporary file, synced and renamed over the old one, so a crash
//! while writing leaves the old file or the new one, never a mixture; a
//! stray temporary file is removed when the directory is next read.
//!
//! A file is trusted only when every one of these holds; otherwise it is
//! deleted and the state is rebuilt from the store, as without one:
//! - it is whole: its magic, header and checksum are right and its body
//!   decodes to the end (a cut or flipped byte fails here);
//! - it was made from this store (the store's name) with nothing written
//!   since to what the state reads besides appended events (the store's
//!   derived generation, kept by triggers: users, static members,
//!   segments, aliases, moved or erased events);
//! - the event log is not behind it (a restored backup), and for the live
//!   state the membership watermark and change log are exactly where it
//!   left them (else changes it never saw were committed since).
//!
//! Events appended after it are read from the log as usual. The state is
//! saved by [`crate::Engine::shutdown`], when nothing writes any more; a
//! process that dies without shutting down leaves a file that no longer
//! matches the store, and the next start rebuilds.

use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use stratify_core::codec::{DecodeError, Decoded, Decoder, Encoder};
use stratify_core::time::Millis;
use stratify_store::DerivedStamp;

const MAGIC: &[u8; 8] = b"STRDRV01";
/// Largest header read (a header is a few short fields).
const MAX_HEADER: usize = 4096;
const BUFFER: usize = 1 << 20;

/// What a file says about the state in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// `population` or `live`.
    pub kind: String,
    pub store_id: String,
    pub generation: i64,
    /// The last event sequence number the state holds.
    pub event_seq: i64,
    /// The live state's watermark instant and last change (`live` only).
    pub mark_at: Option<Millis>,
    pub change_seq: Option<i64>,
    pub written_at: Millis,
}

impl Header {
    pub fn new(kind: &str, stamp: &DerivedStamp, event_seq: i64, written_at: Millis) -> Self {
        Self {
            kind: kind.to_owned(),
            store_id: stamp.store_id.clone(),
            generation: stamp.generation,
            event_seq,
            mark_at: None,
            change_seq: None,
            written_at,
        }
    }

    /// Made from this store as it is now (see the module docs).
    pub fn matches(&self, kind: &str, stamp: &DerivedStamp, last_event_seq: i64) -> bool {
        self.kind == kind
            && self.store_id == stamp.store_id
            && self.generation == stamp.generation
            && self.event_seq <= last_event_seq
    }
}

pub fn path(dir: &Path, kind: &str) -> PathBuf {
    dir.join(format!("{kind}.state"))
}

fn temporary(path: &Path) -> PathBuf {
    path.with_extension("state.tmp")
}

/// Writes `header` and the body `body` writes, replacing the file at `path`
/// only once the new one is durable.
pub fn write(
    path: &Path,
    header: &Header,
    body: impl FnOnce(&mut Encoder<BufWriter<File>>) -> io::Result<()>,
) -> io::Result<u64> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = temporary(path);
    let result = (|| {
        let mut file = BufWriter::with_capacity(BUFFER, File::create(&tmp)?);
        file.write_all(MAGIC)?;
        let mut e = Encoder::new(file);
        let text = serde_json::to_string(header).map_err(io::Error::other)?;
        e.str(&text)?;
        body(&mut e)?;
        let file = e.finish()?.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        let written = file.metadata()?.len();
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(written)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Why a file was not used.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("no checkpoint")]
    Absent,
    #[error("made from another store or an older state of it")]
    Stale,
    #[error("damaged: {0}")]
    Damaged(DecodeError),
}

/// Reads the file at `path`: its header first, which `accept` checks
/// against the store before the body is decoded. A file that is refused
/// for any reason but absence is deleted.
pub fn read<T>(
    path: &Path,
    accept: impl FnOnce(&Header) -> bool,
    body: impl FnOnce(&Header, &mut Decoder<BufReader<File>>) -> Decoded<T>,
) -> Result<(Header, T), Refused> {
    let _ = std::fs::remove_file(temporary(path));
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(Refused::Absent),
        Err(e) => return Err(Refused::Damaged(DecodeError::Io(e))),
    };
    let outcome = (|| {
        let len = file.metadata().map_err(DecodeError::Io)?.len();
        let mut r = BufReader::with_capacity(BUFFER, file);
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(Refused::Damaged(DecodeError::Malformed("magic")));
        }
        let mut d = Decoder::new(r, len.saturating_sub(8))?;
        let text = d.string_at_most(MAX_HEADER)?;
        let header: Header = serde_json::from_str(&text)
            .map_err(|_| Refused::Damaged(DecodeError::Malformed("header")))?;
        if !accept(&header) {
            return Err(Refused::Stale);
        }
        let value = body(&header, &mut d)?;
        d.finish()?;
        Ok((header, value))
    })();
    if outcome.is_err() {
        let _ = std::fs::remove_file(path);
    }
    outcome
}

impl From<DecodeError> for Refused {
    fn from(e: DecodeError) -> Self {
        Refused::Damaged(e)
    }
}

impl From<io::Error> for Refused {
    fn from(e: io::Error) -> Self {
        Refused::Damaged(DecodeError::from(e))
    }
}

//! A compact binary encoding for saving derived state (checkpoints): little-
//! endian integers, length-prefixed strings and arrays, numeric arrays as
//! their raw bytes, and JSON values as tagged trees. Streams through a
//! `Write`/`Read`, with a CRC-32 of everything written appended by
//! [`Encoder::finish`] and checked by [`Decoder::finish`].
//!
//! Decoding assumes nothing about its input: every length is checked
//! against the bytes left before anything is allocated, nesting is bounded,
//! and a malformed input is an error, never a panic. The checksum is only
//! known at the end, so a caller keeps nothing it decoded unless `finish`
//! succeeds.

use serde_json::{Map, Number, Value};
use std::io::{self, Read, Write};

/// Deepest JSON nesting decoded (inputs are validated far below this).
const MAX_DEPTH: usize = 128;
/// Numbers converted per chunk of a numeric array.
const CHUNK: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("truncated")]
    Truncated,
    #[error("malformed: {0}")]
    Malformed(&'static str),
    #[error("checksum mismatch")]
    Checksum,
    #[error(transparent)]
    Io(io::Error),
}

impl From<io::Error> for DecodeError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            DecodeError::Truncated
        } else {
            DecodeError::Io(e)
        }
    }
}

pub type Decoded<T> = Result<T, DecodeError>;

pub struct Encoder<W: Write> {
    w: W,
    crc: crc32fast::Hasher,
}

macro_rules! put_numbers {
    ($name:ident, $t:ty) => {
        /// A length-prefixed array of numbers, as raw little-endian bytes.
        pub fn $name(&mut self, xs: &[$t]) -> io::Result<()> {
            const N: usize = std::mem::size_of::<$t>();
            self.len(xs.len())?;
            let mut buf = Vec::with_capacity(CHUNK * N);
            for chunk in xs.chunks(CHUNK) {
                buf.clear();
                for x in chunk {
                    buf.extend_from_slice(&x.to_le_bytes());
                }
                self.raw(&buf)?;
            }
            Ok(())
        }
    };
}

impl<W: Write> Encoder<W> {
    pub fn new(w: W) -> Self {
        Self {
            w,
            crc: crc32fast::Hasher::new(),
        }
    }

    pub fn raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.crc.update(bytes);
        self.w.write_all(bytes)
    }

    pub fn u8(&mut self, x: u8) -> io::Result<()> {
        self.raw(&[x])
    }

    pub fn bool(&mut self, x: bool) -> io::Result<()> {
        self.u8(u8::from(x))
    }

    pub fn u32(&mut self, x: u32) -> io::Result<()> {
        self.raw(&x.to_le_bytes())
    }

    pub fn u64(&mut self, x: u64) -> io::Result<()> {
        self.raw(&x.to_le_bytes())
    }

    pub fn i64(&mut self, x: i64) -> io::Result<()> {
        self.raw(&x.to_le_bytes())
    }

    pub fn f64(&mut self, x: f64) -> io::Result<()> {
        self.raw(&x.to_le_bytes())
    }

    pub fn len(&mut self, n: usize) -> io::Result<()> {
        self.u64(n as u64)
    }

    pub fn str(&mut self, s: &str) -> io::Result<()> {
        self.len(s.len())?;
        self.raw(s.as_bytes())
    }

    put_numbers!(u32s, u32);
    put_numbers!(u64s, u64);
    put_numbers!(i64s, i64);
    put_numbers!(f64s, f64);

    pub fn value(&mut self, v: &Value) -> io::Result<()> {
        match v {
            Value::Null => self.u8(0),
            Value::Bool(b) => self.u8(1 + u8::from(*b)),
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    self.u8(3)?;
                    self.i64(i)
                } else if let Some(u) = n.as_u64() {
                    self.u8(4)?;
                    self.u64(u)
                } else {
                    self.u8(5)?;
                    self.f64(n.as_f64().unwrap_or(0.0))
                }
            }
            Value::String(s) => {
                self.u8(6)?;
                self.str(s)
            }
            Value::Array(xs) => {
                self.u8(7)?;
                self.len(xs.len())?;
                xs.iter().try_for_each(|x| self.value(x))
            }
            Value::Object(map) => {
                self.u8(8)?;
                self.map(map)
            }
        }
    }

    /// A JSON object's entries, in order.
    pub fn map(&mut self, map: &Map<String, Value>) -> io::Result<()> {
        self.len(map.len())?;
        for (k, v) in map {
            self.str(k)?;
            self.value(v)?;
        }
        Ok(())
    }

    /// Appends the checksum of everything written and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        let crc = self.crc.clone().finalize();
        self.w.write_all(&crc.to_le_bytes())?;
        Ok(self.w)
    }
}

pub struct Decoder<R: Read> {
    r: R,
    crc: crc32fast::Hasher,
    /// Bytes left before the checksum.
    left: u64,
}

macro_rules! get_numbers {
    ($name:ident, $t:ty) => {
        /// An array written by the encoder's method of the same name.
        pub fn $name(&mut self) -> Decoded<Vec<$t>> {
            const N: usize = std::mem::size_of::<$t>();
            let n = self.len(N)?;
            let mut out = Vec::with_capacity(n);
            let mut buf = vec![0u8; CHUNK.min(n.max(1)) * N];
            let mut todo = n;
            while todo > 0 {
                let k = todo.min(CHUNK);
                let bytes = &mut buf[..k * N];
                self.fill(bytes)?;
                out.extend(
                    bytes
                        .chunks_exact(N)
                        .map(|c| <$t>::from_le_bytes(c.try_into().unwrap_or([0; N]))),
                );
                todo -= k;
            }
            Ok(out)
        }
    };
}

impl<R: Read> Decoder<R> {
    /// Decodes `total` bytes of `r`: the encoded body and its 4-byte checksum.
    pub fn new(r: R, total: u64) -> Decoded<Self> {
        let left = total.checked_sub(4).ok_or(DecodeError::Truncated)?;
        Ok(Self {
            r,
            crc: crc32fast::Hasher::new(),
            left,
        })
    }

    fn fill(&mut self, buf: &mut [u8]) -> Decoded<()> {
        if (buf.len() as u64) > self.left {
            return Err(DecodeError::Truncated);
        }
        self.r.read_exact(buf)?;
        self.crc.update(buf);
        self.left -= buf.len() as u64;
        Ok(())
    }

    fn array<const N: usize>(&mut self) -> Decoded<[u8; N]> {
        let mut b = [0u8; N];
        self.fill(&mut b)?;
        Ok(b)
    }

    pub fn u8(&mut self) -> Decoded<u8> {
        Ok(self.array::<1>()?[0])
    }

    pub fn bool(&mut self) -> Decoded<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Malformed("bool")),
        }
    }

    pub fn u32(&mut self) -> Decoded<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Decoded<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    pub fn i64(&mut self) -> Decoded<i64> {
        Ok(i64::from_le_bytes(self.array()?))
    }

    pub fn f64(&mut self) -> Decoded<f64> {
        Ok(f64::from_le_bytes(self.array()?))
    }

    /// A count of items at least `min_size` bytes each: refused when the
    /// bytes left could not hold them.
    pub fn len(&mut self, min_size: usize) -> Decoded<usize> {
        let n = self.u64()?;
        if n.saturating_mul(min_size.max(1) as u64) > self.left {
            return Err(DecodeError::Truncated);
        }
        usize::try_from(n).map_err(|_| DecodeError::Truncated)
    }

    pub fn string(&mut self) -> Decoded<String> {
        self.string_at_most(usize::MAX)
    }

    /// A string, refused when longer than `max` bytes (before reading it).
    pub fn string_at_most(&mut self, max: usize) -> Decoded<String> {
        let n = self.len(1)?;
        if n > max {
            return Err(DecodeError::Malformed("string length"));
        }
        let mut buf = vec![0u8; n];
        self.fill(&mut buf)?;
        String::from_utf8(buf).map_err(|_| DecodeError::Malformed("utf-8"))
    }

    get_numbers!(u32s, u32);
    get_numbers!(u64s, u64);
    get_numbers!(i64s, i64);
    get_numbers!(f64s, f64);

    pub fn value(&mut self) -> Decoded<Value> {
        self.value_at(0)
    }

    fn value_at(&mut self, depth: usize) -> Decoded<Value> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::Malformed("nesting"));
        }
        Ok(match self.u8()? {
            0 => Value::Null,
            1 => Value::Bool(false),
            2 => Value::Bool(true),
            3 => Value::from(self.i64()?),
            4 => Value::from(self.u64()?),
            5 => Value::Number(
                Number::from_f64(self.f64()?).ok_or(DecodeError::Malformed("number"))?,
            ),
            6 => Value::String(self.string()?),
            7 => {
                let n = self.len(1)?;
                let mut xs = Vec::with_capacity(n);
                for _ in 0..n {
                    xs.push(self.value_at(depth + 1)?);
                }
                Value::Array(xs)
            }
            8 => Value::Object(self.map_at(depth + 1)?),
            _ => return Err(DecodeError::Malformed("value tag")),
        })
    }

    /// A JSON object written by [`Encoder::map`].
    pub fn map(&mut self) -> Decoded<Map<String, Value>> {
        self.map_at(0)
    }

    fn map_at(&mut self, depth: usize) -> Decoded<Map<String, Value>> {
        let n = self.len(9)?;
        let mut map = Map::with_capacity(n);
        for _ in 0..n {
            let k = self.string()?;
            let v = self.value_at(depth)?;
            map.insert(k, v);
        }
        Ok(map)
    }

    /// Checks that the body was read to its end and that its checksum matches.
    pub fn finish(mut self) -> Decoded<()> {
        if self.left != 0 {
            return Err(DecodeError::Malformed("trailing bytes"));
        }
        let mut b = [0u8; 4];
        self.r.read_exact(&mut b)?;
        if u32::from_le_bytes(b) != self.crc.finalize() {
            return Err(DecodeError::Checksum);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e300f64..1e300).prop_map(Value::from),
            "\\PC{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec(("\\PC{0,6}", inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    #[derive(Debug)]
    struct Sample {
        values: Vec<Value>,
        u32s: Vec<u32>,
        i64s: Vec<i64>,
        f64s: Vec<f64>,
        s: String,
    }

    fn encode(x: &Sample) -> Vec<u8> {
        let write = || -> io::Result<Vec<u8>> {
            let mut e = Encoder::new(Vec::new());
            e.len(x.values.len())?;
            for v in &x.values {
                e.value(v)?;
            }
            e.u32s(&x.u32s)?;
            e.i64s(&x.i64s)?;
            e.f64s(&x.f64s)?;
            e.str(&x.s)?;
            e.bool(true)?;
            e.finish()
        };
        write().unwrap_or_else(|e| unreachable!("writing to memory: {e}"))
    }

    fn decode(bytes: &[u8]) -> Decoded<Sample> {
        let mut d = Decoder::new(bytes, bytes.len() as u64)?;
        let n = d.len(1)?;
        let values = (0..n).map(|_| d.value()).collect::<Decoded<Vec<_>>>()?;
        let x = Sample {
            values,
            u32s: d.u32s()?,
            i64s: d.i64s()?,
            f64s: d.f64s()?,
            s: d.string()?,
        };
        if !d.bool()? {
            return Err(DecodeError::Malformed("end"));
        }
        d.finish()?;
        Ok(x)
    }

    fn sample() -> impl Strategy<Value = Sample> {
        (
            prop::collection::vec(json(), 0..8),
            prop::collection::vec(any::<u32>(), 0..9000),
            prop::collection::vec(any::<i64>(), 0..50),
            prop::collection::vec(any::<f64>(), 0..50),
            "\\PC{0,20}",
        )
            .prop_map(|(values, u32s, i64s, f64s, s)| Sample {
                values,
                u32s,
                i64s,
                f64s,
                s,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// What is encoded decodes to the same values, bit for bit.
        #[test]
        fn round_trips(x in sample()) {
            let back = decode(&encode(&x)).unwrap_or_else(|e| unreachable!("decodes: {e}"));
            prop_assert_eq!(&back.values, &x.values);
            prop_assert_eq!(&back.u32s, &x.u32s);
            prop_assert_eq!(&back.i64s, &x.i64s);
            let bits = |v: &[f64]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            prop_assert_eq!(bits(&back.f64s), bits(&x.f64s));
            prop_assert_eq!(back.s, x.s);
        }

        /// Any cut or any flipped byte is an error, never a panic or a
        /// wrong answer.
        #[test]
        fn a_damaged_encoding_is_refused(x in sample(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let bytes = encode(&x);
            let cut = at.index(bytes.len());
            prop_assert!(decode(&bytes[..cut]).is_err());
            let mut flipped = bytes.clone();
            flipped[cut] ^= 1 << bit;
            prop_assert!(decode(&flipped).is_err());
        }
    }

    /// Random bytes (as from another file) decode to an error, whatever
    /// lengths they claim.
    #[test]
    fn garbage_is_refused_without_allocating_what_it_claims() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for _ in 0..2000 {
            let n = rng.random_range(0..64);
            let mut bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            // Lengths near the top of the range.
            if n > 8 && rng.random_bool(0.5) {
                bytes[..8].copy_from_slice(&u64::MAX.to_le_bytes());
            }
            assert!(decode(&bytes).is_err());
        }
    }
}

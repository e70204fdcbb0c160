//! Avro binary encoding primitives for the hand-written datum codecs (`datum.rs`).
//!
//! Writing: zig-zag varints for `int`, `long`, lengths, enum symbols and union branches;
//! little-endian IEEE 754 for `double`; a length then the bytes for `string`; maps and arrays as one
//! block with a positive count, then the `0` that ends them (what `serde_avro_fast` writes).
//!
//! Reading is exact and safe for hostile input: every length and block count is checked against the
//! bytes left before anything is allocated, varints longer than their type allows are refused, and
//! `Reader::expect_end` refuses trailing bytes. No input makes it panic.

/// Appends a `long` (zig-zag varint, at most 10 bytes).
#[inline(always)]
pub(crate) fn put_long(out: &mut Vec<u8>, value: i64) {
    let zigzag = ((value << 1) ^ (value >> 63)) as u64;
    if zigzag < 0x80 {
        out.push(zigzag as u8);
    } else {
        put_long_varint(out, zigzag);
    }
}

/// The varint of a zig-zag value of 2 bytes or more.
#[inline(never)]
fn put_long_varint(out: &mut Vec<u8>, mut zigzag: u64) {
    let mut bytes = [0u8; 10];
    let mut len = 0;
    while zigzag >= 0x80 {
        bytes[len] = (zigzag as u8) | 0x80;
        zigzag >>= 7;
        len += 1;
    }
    bytes[len] = zigzag as u8;
    out.extend_from_slice(&bytes[..=len]);
}

/// Appends an `int` (zig-zag varint; the same bytes as the `long` of the same value).
#[inline]
pub(crate) fn put_int(out: &mut Vec<u8>, value: i32) {
    put_long(out, i64::from(value));
}

/// Appends a length, a block count, an enum symbol index or a union branch index.
#[inline(always)]
pub(crate) fn put_len(out: &mut Vec<u8>, len: usize) {
    // A Vec never holds more than isize::MAX bytes, so every length fits.
    put_long(out, len as i64);
}

#[inline]
pub(crate) fn put_double(out: &mut Vec<u8>, value: f64) {
    out.extend_from_slice(&value.to_le_bytes());
}

#[inline(always)]
pub(crate) fn put_str(out: &mut Vec<u8>, value: &str) {
    put_len(out, value.len());
    out.extend_from_slice(value.as_bytes());
}

/// Branch 0 of a `["null", T]` union.
pub(crate) const NULL_BRANCH: u8 = 0x00;
/// Branch 1 of a `["null", T]` union, zig-zag encoded.
pub(crate) const VALUE_BRANCH: u8 = 0x02;
/// The zero block count that ends a map or an array.
pub(crate) const END_OF_BLOCKS: u8 = 0x00;

/// Appends a `["null", string]` union.
#[inline]
pub(crate) fn put_optional_str(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        None => out.push(NULL_BRANCH),
        Some(value) => {
            out.push(VALUE_BRANCH);
            put_str(out, value);
        }
    }
}

/// Appends an array of strings: one block, then the end.
pub(crate) fn put_str_array(out: &mut Vec<u8>, items: &[String]) {
    if !items.is_empty() {
        put_len(out, items.len());
        for item in items {
            put_str(out, item);
        }
    }
    out.push(END_OF_BLOCKS);
}

/// Appends a map of strings, in the map's (key) order: one block, then the end.
pub(crate) fn put_str_map<'a>(
    out: &mut Vec<u8>,
    len: usize,
    entries: impl Iterator<Item = (&'a String, &'a String)>,
) {
    if len > 0 {
        put_len(out, len);
        for (key, value) in entries {
            put_str(out, key);
            put_str(out, value);
        }
    }
    out.push(END_OF_BLOCKS);
}

/// Why a datum could not be read. Built only on failure; the caller adds the field's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReadError {
    Eof,
    VarintTooLong,
    NegativeLength(i64),
    LengthBeyondEnd { len: u64, left: usize },
    NotUtf8,
    UnionBranch(i64),
    TrailingBytes(usize),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Eof => write!(f, "unexpected end of datum"),
            Self::VarintTooLong => write!(f, "varint longer than its type allows"),
            Self::NegativeLength(len) => write!(f, "negative length {len}"),
            Self::LengthBeyondEnd { len, left } => {
                write!(f, "length {len} exceeds the {left} bytes left")
            }
            Self::NotUtf8 => write!(f, "string is not valid UTF-8"),
            Self::UnionBranch(index) => write!(f, "union branch {index} does not exist"),
            Self::TrailingBytes(left) => write!(f, "{left} trailing bytes after the datum"),
        }
    }
}

/// A cursor over one datum.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    /// What is left to read.
    bytes: &'a [u8],
    /// The datum's length, to know where `bytes` starts.
    datum_len: usize,
    /// A run of ASCII bytes of the datum, validated as text in one go, and where it starts: a string
    /// inside it needs no validation of its own (`str`).
    ascii: &'a str,
    ascii_at: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            datum_len: bytes.len(),
            ascii: "",
            ascii_at: 0,
        }
    }

    pub(crate) fn left(&self) -> usize {
        self.bytes.len()
    }

    /// Fails unless every byte was read.
    pub(crate) fn expect_end(&self) -> Result<(), ReadError> {
        match self.bytes.len() {
            0 => Ok(()),
            left => Err(ReadError::TrailingBytes(left)),
        }
    }

    /// A `long`: a zig-zag varint of at most 10 bytes whose value fits 64 bits.
    #[inline]
    pub(crate) fn long(&mut self) -> Result<i64, ReadError> {
        let (&first, rest) = self.bytes.split_first().ok_or(ReadError::Eof)?;
        if first < 0x80 {
            self.bytes = rest;
            return Ok(unzigzag(u64::from(first)));
        }
        self.long_slow()
    }

    fn long_slow(&mut self) -> Result<i64, ReadError> {
        let mut value = 0u64;
        for (index, &byte) in self.bytes.iter().enumerate() {
            // The 10th byte carries bit 63 only.
            if index == 9 && byte > 1 {
                return Err(ReadError::VarintTooLong);
            }
            value |= u64::from(byte & 0x7F) << (7 * index);
            if byte < 0x80 {
                self.bytes = &self.bytes[index + 1..];
                return Ok(unzigzag(value));
            }
        }
        Err(ReadError::Eof)
    }

    #[inline]
    pub(crate) fn double(&mut self) -> Result<f64, ReadError> {
        let (bytes, rest) = self.bytes.split_first_chunk::<8>().ok_or(ReadError::Eof)?;
        self.bytes = rest;
        Ok(f64::from_le_bytes(*bytes))
    }

    /// A length: a non-negative `long` no larger than the bytes left (each counted item takes at
    /// least `min_item_bytes`), so nothing is allocated for data that is not there.
    #[inline]
    fn len(&mut self, min_item_bytes: usize) -> Result<usize, ReadError> {
        let len = self.long()?;
        let unsigned = u64::try_from(len).map_err(|_| ReadError::NegativeLength(len))?;
        let left = self.bytes.len();
        match usize::try_from(unsigned) {
            Ok(len) if len.saturating_mul(min_item_bytes) <= left => Ok(len),
            _ => Err(ReadError::LengthBeyondEnd {
                len: unsigned,
                left,
            }),
        }
    }

    /// A string. UTF-8 validation is the costly part of reading short strings, so the ASCII run
    /// that starts with a string is validated at once (the strings, lengths and small numbers that
    /// follow are usually ASCII too), and the strings that lie inside it are taken as they are.
    /// Strings with other characters are validated on their own.
    #[inline]
    pub(crate) fn str(&mut self) -> Result<&'a str, ReadError> {
        let len = self.len(1)?;
        let at = self.datum_len - self.bytes.len();
        let from_here = self.bytes;
        self.bytes = &from_here[len..];
        let in_ascii_run = at
            .checked_sub(self.ascii_at)
            .and_then(|offset| self.ascii.get(offset..offset + len));
        if let Some(text) = in_ascii_run {
            return Ok(text);
        }
        let run = ascii_run(from_here);
        if run >= len {
            self.ascii = std::str::from_utf8(&from_here[..run]).map_err(|_| ReadError::NotUtf8)?;
            self.ascii_at = at;
            return self.ascii.get(..len).ok_or(ReadError::NotUtf8);
        }
        std::str::from_utf8(&from_here[..len]).map_err(|_| ReadError::NotUtf8)
    }

    #[inline]
    pub(crate) fn string(&mut self) -> Result<String, ReadError> {
        self.str().map(str::to_owned)
    }

    /// The branch of a `["null", T]` union: `false` for null, `true` for a value.
    #[inline]
    pub(crate) fn union_has_value(&mut self) -> Result<bool, ReadError> {
        match self.long()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(ReadError::UnionBranch(other)),
        }
    }

    pub(crate) fn optional_double(&mut self) -> Result<Option<f64>, ReadError> {
        Ok(if self.union_has_value()? {
            Some(self.double()?)
        } else {
            None
        })
    }

    pub(crate) fn optional_long(&mut self) -> Result<Option<i64>, ReadError> {
        Ok(if self.union_has_value()? {
            Some(self.long()?)
        } else {
            None
        })
    }

    pub(crate) fn optional_string(&mut self) -> Result<Option<String>, ReadError> {
        Ok(if self.union_has_value()? {
            Some(self.string()?)
        } else {
            None
        })
    }

    /// The item count of the next block of a map or an array (0: the end), each item taking at least
    /// `min_item_bytes`. A negative count is followed by the block's size in bytes, which is read
    /// and not trusted.
    pub(crate) fn block_len(&mut self, min_item_bytes: usize) -> Result<usize, ReadError> {
        let count = self.long()?;
        if count < 0 {
            let _block_bytes = self.long()?;
        }
        let left = self.bytes.len();
        usize::try_from(count.unsigned_abs())
            .ok()
            .filter(|count| count.saturating_mul(min_item_bytes) <= left)
            .ok_or(ReadError::LengthBeyondEnd {
                len: count.unsigned_abs(),
                left,
            })
    }
}

/// How many bytes `bytes` starts with are ASCII, eight at a time.
fn ascii_run(bytes: &[u8]) -> usize {
    let mut words = bytes.chunks_exact(8);
    let mut run = 0;
    for word in &mut words {
        let Some(word) = word.first_chunk::<8>() else {
            break;
        };
        let high_bits = u64::from_le_bytes(*word) & 0x8080_8080_8080_8080;
        if high_bits != 0 {
            return run + (high_bits.trailing_zeros() / 8) as usize;
        }
        run += 8;
    }
    run + words
        .remainder()
        .iter()
        .take_while(|byte| byte.is_ascii())
        .count()
}

#[inline]
fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn long_bytes(value: i64) -> Vec<u8> {
        let mut out = Vec::new();
        put_long(&mut out, value);
        out
    }

    #[test]
    fn longs_round_trip_at_the_edges() {
        for value in [0, -1, 1, 63, -64, 64, -65, i32::MIN as i64, i32::MAX as i64] {
            let bytes = long_bytes(value);
            let mut reader = Reader::new(&bytes);
            assert_eq!(reader.long(), Ok(value));
            assert_eq!(reader.expect_end(), Ok(()));
        }
        for value in [i64::MIN, i64::MAX] {
            let bytes = long_bytes(value);
            assert_eq!(bytes.len(), 10);
            assert_eq!(Reader::new(&bytes).long(), Ok(value));
        }
        assert_eq!(long_bytes(-1), [0x01]);
        assert_eq!(long_bytes(64), [0x80, 0x01]);
    }

    #[test]
    fn overlong_and_cut_varints_are_refused() {
        assert_eq!(
            Reader::new(&[0x80; 10]).long(),
            Err(ReadError::VarintTooLong)
        );
        assert_eq!(Reader::new(&[0xFF; 3]).long(), Err(ReadError::Eof));
        assert_eq!(Reader::new(&[]).long(), Err(ReadError::Eof));
        let mut eleven = vec![0x80; 9];
        eleven.extend([0x81, 0x00]);
        assert_eq!(Reader::new(&eleven).long(), Err(ReadError::VarintTooLong));
    }

    fn string_bytes(text: &[u8]) -> Vec<u8> {
        let mut out = long_bytes(text.len() as i64);
        out.extend_from_slice(text);
        out
    }

    #[test]
    fn strings_inside_and_outside_ascii_runs() {
        assert_eq!(ascii_run(b""), 0);
        assert_eq!(ascii_run(b"abcdefghij\xffk"), 10);
        assert_eq!(ascii_run(b"abcdefgh\xff"), 8);
        assert_eq!(ascii_run(b"abc"), 3);
        // ASCII, a string with other characters (validated alone), an empty string, ASCII again
        // after a double with non-ASCII bytes, and a string that is not UTF-8.
        let mut datum = Vec::new();
        for text in [&b"decision"[..], b"w", "gr\u{fc}n".as_bytes(), b"", b"x"] {
            datum.extend(string_bytes(text));
        }
        datum.extend((-0.95f64).to_le_bytes());
        datum.extend(string_bytes(b"after"));
        datum.extend(string_bytes(b"\xC3"));
        let mut reader = Reader::new(&datum);
        assert_eq!(reader.str(), Ok("decision"));
        assert_eq!(reader.str(), Ok("w"));
        assert_eq!(reader.str(), Ok("gr\u{fc}n"));
        assert_eq!(reader.str(), Ok(""));
        assert_eq!(reader.str(), Ok("x"));
        assert_eq!(reader.double(), Ok(-0.95));
        assert_eq!(reader.str(), Ok("after"));
        assert_eq!(reader.str(), Err(ReadError::NotUtf8));
    }

    #[test]
    fn lengths_are_bounded_by_the_bytes_left() {
        // A string that claims 2^40 bytes.
        let mut bytes = long_bytes(1 << 40);
        bytes.extend_from_slice(b"abc");
        assert!(matches!(
            Reader::new(&bytes).str(),
            Err(ReadError::LengthBeyondEnd { left: 3, .. })
        ));
        assert_eq!(
            Reader::new(&long_bytes(-2)).str(),
            Err(ReadError::NegativeLength(-2))
        );
        // A block of 1000 doubles in 16 bytes.
        let mut bytes = long_bytes(1000);
        bytes.extend_from_slice(&[0; 16]);
        assert!(Reader::new(&bytes).block_len(8).is_err());
        // i64::MIN as a negative block count.
        let mut bytes = long_bytes(i64::MIN);
        bytes.push(0);
        assert!(Reader::new(&bytes).block_len(1).is_err());
    }
}

//! Just enough of the protobuf wire format to write and read TensorBoard's `Event` messages.
//!
//! Writing emits every field it is given (no proto3 default elision: parsers accept explicit
//! zeros). Reading walks `(field number, value)` pairs and leaves unknown fields to the caller
//! to skip, so files written by TensorFlow or PyTorch with extra fields still parse.

/// Wire type of varints (`int64`, `bool`, enums).
const VARINT: u8 = 0;
/// Wire type of 8-byte little-endian values (`double`, `fixed64`).
const FIXED64: u8 = 1;
/// Wire type of length-delimited values (strings, bytes, messages, packed repeated fields).
const LEN: u8 = 2;
/// Wire type of 4-byte little-endian values (`float`, `fixed32`).
const FIXED32: u8 = 5;

/// Appends protobuf fields to a byte buffer.
#[derive(Debug, Default)]
pub struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    /// An empty message.
    pub fn new() -> Self {
        Self::default()
    }

    /// The encoded message.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }

    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.buf.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.buf.push(v as u8);
    }

    fn key(&mut self, field: u32, wire: u8) {
        self.varint((u64::from(field) << 3) | u64::from(wire));
    }

    /// A `double` field.
    pub fn double(&mut self, field: u32, v: f64) {
        self.key(field, FIXED64);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// A `float` field.
    pub fn float(&mut self, field: u32, v: f32) {
        self.key(field, FIXED32);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }

    /// An `int64` field (negative values take ten bytes, as protobuf specifies).
    pub fn int64(&mut self, field: u32, v: i64) {
        self.key(field, VARINT);
        self.varint(v as u64);
    }

    /// A `bytes` or embedded-message field.
    pub fn bytes(&mut self, field: u32, v: &[u8]) {
        self.key(field, LEN);
        self.varint(v.len() as u64);
        self.buf.extend_from_slice(v);
    }

    /// A `string` field.
    pub fn string(&mut self, field: u32, v: &str) {
        self.bytes(field, v.as_bytes());
    }

    /// A packed `repeated double` field (omitted when empty, as protobuf does).
    pub fn packed_doubles(&mut self, field: u32, vs: &[f64]) {
        if vs.is_empty() {
            return;
        }
        self.key(field, LEN);
        self.varint(8 * vs.len() as u64);
        for v in vs {
            self.buf.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// One decoded field value, by wire type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Wire<'a> {
    /// A varint.
    Varint(u64),
    /// Eight little-endian bytes.
    Fixed64(u64),
    /// A length-delimited byte string.
    Len(&'a [u8]),
    /// Four little-endian bytes.
    Fixed32(u32),
}

impl<'a> Wire<'a> {
    /// The value as a `double`, or an error naming `what` was expected.
    pub fn as_double(self, what: &str) -> Result<f64, String> {
        match self {
            Wire::Fixed64(bits) => Ok(f64::from_bits(bits)),
            other => Err(format!("{what}: expected a double, found {other:?}")),
        }
    }

    /// The value as a `float`.
    pub fn as_float(self, what: &str) -> Result<f32, String> {
        match self {
            Wire::Fixed32(bits) => Ok(f32::from_bits(bits)),
            other => Err(format!("{what}: expected a float, found {other:?}")),
        }
    }

    /// The value as an `int64`.
    pub fn as_int64(self, what: &str) -> Result<i64, String> {
        match self {
            Wire::Varint(v) => Ok(v as i64),
            other => Err(format!("{what}: expected a varint, found {other:?}")),
        }
    }

    /// The value as a length-delimited byte string (message, bytes, string, packed field).
    pub fn as_bytes(self, what: &str) -> Result<&'a [u8], String> {
        match self {
            Wire::Len(b) => Ok(b),
            other => Err(format!(
                "{what}: expected length-delimited bytes, found {other:?}"
            )),
        }
    }

    /// The value as a UTF-8 string.
    pub fn as_str(self, what: &str) -> Result<&'a str, String> {
        std::str::from_utf8(self.as_bytes(what)?).map_err(|e| format!("{what}: not UTF-8: {e}"))
    }

    /// Appends the value(s) of a `repeated double`, packed or not, to `out`.
    pub fn push_doubles(self, what: &str, out: &mut Vec<f64>) -> Result<(), String> {
        match self {
            Wire::Fixed64(bits) => out.push(f64::from_bits(bits)),
            Wire::Len(b) if b.len() % 8 == 0 => out.extend(
                b.chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))),
            ),
            other => return Err(format!("{what}: expected packed doubles, found {other:?}")),
        }
        Ok(())
    }
}

/// Iterates over the `(field number, value)` pairs of one message.
#[derive(Debug)]
pub struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    /// The fields of the message encoded in `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self
                .buf
                .get(self.pos)
                .ok_or_else(|| format!("varint runs past the end at byte {}", self.pos))?;
            self.pos += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!(
            "varint longer than 10 bytes ending at byte {}",
            self.pos
        ))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                format!(
                    "field of {n} bytes at byte {} runs past the end of a {}-byte message",
                    self.pos,
                    self.buf.len()
                )
            })?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn next_field(&mut self) -> Result<(u32, Wire<'a>), String> {
        let key = self.varint()?;
        let field =
            u32::try_from(key >> 3).map_err(|_| format!("field number {} too large", key >> 3))?;
        let value = match (key & 7) as u8 {
            VARINT => Wire::Varint(self.varint()?),
            FIXED64 => Wire::Fixed64(u64::from_le_bytes(
                self.take(8)?.try_into().expect("8 bytes"),
            )),
            LEN => {
                let len = self.varint()?;
                let len = usize::try_from(len).map_err(|_| format!("length {len} too large"))?;
                Wire::Len(self.take(len)?)
            }
            FIXED32 => Wire::Fixed32(u32::from_le_bytes(
                self.take(4)?.try_into().expect("4 bytes"),
            )),
            other => return Err(format!("field {field}: unsupported wire type {other}")),
        };
        Ok((field, value))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Wire<'a>), String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.pos >= self.buf.len() {
            return None;
        }
        let item = self.next_field();
        if item.is_err() {
            // Stop after the first error: the rest of the buffer cannot be framed.
            self.pos = self.buf.len();
        }
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_encodings() {
        // Reference bytes from the protobuf encoding guide: field 1 = 150 is 08 96 01.
        let mut e = Encoder::new();
        e.int64(1, 150);
        assert_eq!(e.into_bytes(), [0x08, 0x96, 0x01]);
        // field 2 = "testing" is 12 07 74 65 73 74 69 6e 67.
        let mut e = Encoder::new();
        e.string(2, "testing");
        assert_eq!(e.into_bytes(), b"\x12\x07testing");
        // A negative int64 is a ten-byte varint.
        let mut e = Encoder::new();
        e.int64(2, -1);
        assert_eq!(
            e.into_bytes(),
            [
                0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01
            ]
        );
        // double field 1 = 1.0: key 0x09 then the IEEE bits little-endian.
        let mut e = Encoder::new();
        e.double(1, 1.0);
        assert_eq!(e.into_bytes(), [0x09, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f]);
    }

    #[test]
    fn round_trip_all_wire_types() {
        let mut e = Encoder::new();
        e.double(1, -2.5);
        e.int64(2, i64::MIN);
        e.string(3, "tag/ü");
        e.float(4, 0.25);
        e.packed_doubles(6, &[1.0, f64::MAX, -0.0]);
        let bytes = e.into_bytes();
        let fields: Vec<_> = Fields::new(&bytes).collect::<Result<_, _>>().unwrap();
        assert_eq!(fields.len(), 5);
        assert_eq!(fields[0].1.as_double("d").unwrap(), -2.5);
        assert_eq!(fields[1].1.as_int64("i").unwrap(), i64::MIN);
        assert_eq!(fields[2].1.as_str("s").unwrap(), "tag/ü");
        assert_eq!(fields[3].1.as_float("f").unwrap(), 0.25);
        let mut ds = Vec::new();
        fields[4].1.push_doubles("p", &mut ds).unwrap();
        assert_eq!(ds, [1.0, f64::MAX, -0.0]);
        assert!(fields[0].1.as_int64("step").unwrap_err().contains("step"));
    }

    #[test]
    fn truncation_and_bad_wire_types_are_errors() {
        let mut e = Encoder::new();
        e.string(1, "hello");
        let bytes = e.into_bytes();
        for cut in 1..bytes.len() {
            let r: Result<Vec<_>, _> = Fields::new(&bytes[..cut]).collect();
            assert!(r.is_err(), "cut at {cut}");
        }
        // Wire type 3 (start group) is not used by these messages.
        let r: Result<Vec<_>, _> = Fields::new(&[0x0b]).collect();
        assert!(r.unwrap_err().contains("wire type 3"));
    }
}

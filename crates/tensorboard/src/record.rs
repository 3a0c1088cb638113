//! TFRecord framing: `u64 length (LE) | masked crc32c(length bytes) (LE u32) | data | masked crc32c(data) (LE u32)`.

use std::io::{self, Write};

use crate::crc::masked_crc32c;

/// Bytes before the payload: the length and its checksum.
pub const HEADER_LEN: usize = 12;
/// Bytes after the payload: its checksum.
pub const FOOTER_LEN: usize = 4;

/// Writes one framed record.
pub fn write_record<W: Write>(out: &mut W, data: &[u8]) -> io::Result<()> {
    let len = (data.len() as u64).to_le_bytes();
    out.write_all(&len)?;
    out.write_all(&masked_crc32c(&len).to_le_bytes())?;
    out.write_all(data)?;
    out.write_all(&masked_crc32c(data).to_le_bytes())
}

/// What [`read_record`] found at an offset.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A complete record whose checksums match; `next` is the offset just after it.
    Record {
        /// The payload.
        data: &'a [u8],
        /// Offset of the following record.
        next: usize,
    },
    /// The offset is exactly the end of the buffer.
    End,
    /// The buffer ends inside this record (a writer still writing, or killed mid-record).
    /// The length checksum, when its bytes are present, did match.
    TruncatedTail,
}

/// Parses the record starting at `offset` in `buf`.
///
/// Returns `Err(reason)` when a checksum does not match; a record cut short by the end of the
/// buffer is not an error but [`Frame::TruncatedTail`].
pub fn read_record(buf: &[u8], offset: usize) -> Result<Frame<'_>, String> {
    let rest = buf.get(offset..).unwrap_or_default();
    if rest.is_empty() {
        return Ok(Frame::End);
    }
    if rest.len() < HEADER_LEN {
        return Ok(Frame::TruncatedTail);
    }
    let len_bytes: [u8; 8] = rest[..8].try_into().expect("8 bytes");
    let len_crc = u32::from_le_bytes(rest[8..12].try_into().expect("4 bytes"));
    let expected = masked_crc32c(&len_bytes);
    if len_crc != expected {
        return Err(format!(
            "length checksum mismatch (stored {len_crc:#010x}, computed {expected:#010x})"
        ));
    }
    let len = u64::from_le_bytes(len_bytes);
    let total = usize::try_from(len)
        .ok()
        .and_then(|l| l.checked_add(HEADER_LEN + FOOTER_LEN));
    let Some(total) = total.filter(|&t| t <= rest.len()) else {
        return Ok(Frame::TruncatedTail);
    };
    let data = &rest[HEADER_LEN..total - FOOTER_LEN];
    let data_crc = u32::from_le_bytes(rest[total - FOOTER_LEN..total].try_into().expect("4 bytes"));
    let expected = masked_crc32c(data);
    if data_crc != expected {
        return Err(format!(
            "payload checksum mismatch over {len} bytes (stored {data_crc:#010x}, computed {expected:#010x})"
        ));
    }
    Ok(Frame::Record {
        data,
        next: offset + total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(records: &[&[u8]]) -> Vec<u8> {
        let mut buf = Vec::new();
        for r in records {
            write_record(&mut buf, r).unwrap();
        }
        buf
    }

    #[test]
    fn round_trip_and_layout() {
        let buf = framed(&[b"hello", b""]);
        assert_eq!(buf.len(), (12 + 5 + 4) + (12 + 4));
        assert_eq!(&buf[..8], &5u64.to_le_bytes());
        assert_eq!(&buf[12..17], b"hello");
        let Frame::Record { data, next } = read_record(&buf, 0).unwrap() else {
            panic!("expected a record")
        };
        assert_eq!((data, next), (&b"hello"[..], 21));
        assert_eq!(
            read_record(&buf, 21).unwrap(),
            Frame::Record {
                data: b"",
                next: buf.len()
            }
        );
        assert_eq!(read_record(&buf, buf.len()).unwrap(), Frame::End);
    }

    #[test]
    fn every_cut_is_a_truncated_tail() {
        let buf = framed(&[b"payload bytes"]);
        for cut in 1..buf.len() {
            assert_eq!(
                read_record(&buf[..cut], 0).unwrap(),
                Frame::TruncatedTail,
                "cut {cut}"
            );
        }
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let buf = framed(&[b"payload bytes"]);
        for byte in 0..buf.len() {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[byte] ^= 1 << bit;
                // CRC-32C detects every single-bit error, in the length and in the payload.
                let found = read_record(&bad, 0);
                assert!(found.is_err(), "bit {bit} of byte {byte}: {found:?}");
            }
        }
    }
}

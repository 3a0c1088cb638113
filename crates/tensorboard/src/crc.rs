//! CRC-32C (Castagnoli) and the masked form that TFRecord framing stores.
//!
//! TFRecord stores `mask(crc32c(bytes))` rather than the raw CRC so that a CRC computed over
//! data that itself embeds CRCs stays well distributed.

/// Constant added after rotating, as defined by TFRecord (`kMaskDelta` in TensorFlow's `crc32c.h`).
const MASK_DELTA: u32 = 0xa282_ead8;

/// CRC-32C of `data` (polynomial 0x1EDC6F41, reflected; hardware-accelerated where available).
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// Masks a CRC the TFRecord way: `((crc >> 15) | (crc << 17)) + 0xa282ead8` (wrapping).
pub fn mask(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(MASK_DELTA)
}

/// `mask(crc32c(data))`: the checksum TFRecord stores after the length and after the payload.
pub fn masked_crc32c(data: &[u8]) -> u32 {
    mask(crc32c(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_check_value() {
        // The CRC-32C "check" value from the CRC catalogue (and RFC 3720, iSCSI).
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn rfc3720_vectors() {
        // RFC 3720 appendix B.4: 32 bytes of zeros, of 0xFF, and an incrementing sequence.
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xFFu8; 32]), 0x62A8_AB43);
        let inc: Vec<u8> = (0u8..32).collect();
        assert_eq!(crc32c(&inc), 0x46DD_794E);
    }

    #[test]
    fn mask_matches_the_tfrecord_formula() {
        // ((crc >> 15) | (crc << 17)) + 0xa282ead8, worked out by hand.
        assert_eq!(mask(0), 0xa282_ead8);
        assert_eq!(mask(1), 0xa284_ead8);
        assert_eq!(mask(u32::MAX), 0xa282_ead7); // wraps
        assert_eq!(mask(0xE306_9283), 0xc78a_b0e5);
        assert_eq!(masked_crc32c(b"123456789"), 0xc78a_b0e5);
    }
}

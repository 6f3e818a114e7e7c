//! The Internet checksum of IPv4 headers (RFC 1071), full and incremental (RFC 1624).
//!
//! Values are the 16-bit checksum as a number (`u16::from_be_bytes` of the
//! two header bytes); write them back with `to_be_bytes`.

use crate::packet::{IPV4_HLEN, ipv4};

/// Folds a 32-bit one's complement sum into 16 bits (end-around carry).
/// Two folds are enough for any `u32`.
#[inline(always)]
pub const fn fold(sum: u32) -> u16 {
    let s = (sum & 0xffff) + (sum >> 16);
    let s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// One's complement sum of `data` as big-endian 16-bit words (an odd last byte is
/// padded with zero), not folded. Exact for up to 65537 words.
#[inline(always)]
pub fn sum_words(data: &[u8]) -> u32 {
    let mut sum = 0u32;
    let mut i = 0;
    while i + 1 < data.len() {
        sum += u16::from_be_bytes([data[i], data[i + 1]]) as u32;
        i += 2;
    }
    if i < data.len() {
        sum += (data[i] as u32) << 8;
    }
    sum
}

/// The checksum of an IPv4 header (`hdr` = the whole header, options included),
/// computed as if its checksum field were zero.
#[inline(always)]
pub fn ipv4_header_checksum(hdr: &[u8]) -> u16 {
    let mut sum = sum_words(hdr);
    if hdr.len() >= IPV4_HLEN {
        // Take the stored checksum out instead of copying the header.
        sum += !u16::from_be_bytes([hdr[ipv4::CSUM], hdr[ipv4::CSUM + 1]]) as u32;
    }
    !fold(sum)
}

/// Whether an IPv4 header's checksum is right (its words sum to 0xffff).
pub fn ipv4_checksum_ok(hdr: &[u8]) -> bool {
    fold(sum_words(hdr)) == 0xffff
}

/// RFC 1624 eqn. 3: the checksum after one 16-bit word changes from `old` to
/// `new`: `HC' = ~(~HC + ~m + m')`. Equal to a full recomputation.
#[inline(always)]
pub const fn replace_word(check: u16, old: u16, new: u16) -> u16 {
    !fold((!check) as u32 + (!old) as u32 + new as u32)
}

/// Decrements the TTL of an IPv4 header in place and updates its checksum
/// incrementally. Returns the new TTL. The caller checks TTL > 1 first; a TTL
/// of 0 is left alone.
#[inline(always)]
pub fn decrement_ttl(hdr: &mut [u8; IPV4_HLEN]) -> u8 {
    let ttl = hdr[ipv4::TTL];
    if ttl == 0 {
        return 0;
    }
    let proto = hdr[ipv4::PROTO];
    let old = u16::from_be_bytes([ttl, proto]);
    let new = u16::from_be_bytes([ttl - 1, proto]);
    let check = u16::from_be_bytes([hdr[ipv4::CSUM], hdr[ipv4::CSUM + 1]]);
    let c = replace_word(check, old, new).to_be_bytes();
    hdr[ipv4::TTL] = ttl - 1;
    hdr[ipv4::CSUM] = c[0];
    hdr[ipv4::CSUM + 1] = c[1];
    ttl - 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{Rng, ipv4_header};

    /// RFC 1071 section 3 example: words 0001 f203 f4f5 f6f7 sum to ddf2.
    #[test]
    fn rfc1071_example() {
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum_words(&data)), 0xddf2);
        assert_eq!(fold(sum_words(&[0xab])), 0xab00);
    }

    /// A header captured on the wire (Wikipedia "IPv4 header checksum" example).
    #[test]
    fn known_header() {
        let mut h: [u8; 20] = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_header_checksum(&h), 0xb861);
        assert!(ipv4_checksum_ok(&h));
        h[10] = 0;
        h[11] = 0;
        assert_eq!(ipv4_header_checksum(&h), 0xb861);
        assert!(!ipv4_checksum_ok(&h));
    }

    #[test]
    fn incremental_ttl_update_equals_full_recompute() {
        let mut rng = Rng::new(0x5eed_1624);
        for round in 0..200_000 {
            let mut h = [0u8; IPV4_HLEN];
            for b in h.iter_mut() {
                *b = rng.next_u8();
            }
            h[0] = 0x45;
            // Bias some headers towards the corner cases of one's complement arithmetic.
            match round % 4 {
                0 => h[ipv4::TTL] = 1 + (rng.next_u8() % 2),
                1 => {
                    // Words that make the checksum 0x0000 or 0xffff-ish.
                    for b in h[2..8].iter_mut() {
                        *b = 0xff;
                    }
                }
                _ => {}
            }
            if h[ipv4::TTL] == 0 {
                h[ipv4::TTL] = 1;
            }
            let c = ipv4_header_checksum(&h).to_be_bytes();
            h[ipv4::CSUM] = c[0];
            h[ipv4::CSUM + 1] = c[1];
            assert!(ipv4_checksum_ok(&h));

            let mut inc = h;
            let ttl = decrement_ttl(&mut inc);
            assert_eq!(ttl, h[ipv4::TTL] - 1);

            let mut full = h;
            full[ipv4::TTL] -= 1;
            let c = ipv4_header_checksum(&full).to_be_bytes();
            full[ipv4::CSUM] = c[0];
            full[ipv4::CSUM + 1] = c[1];
            assert_eq!(inc, full, "round {round}: {h:02x?}");
            assert!(ipv4_checksum_ok(&inc));
        }
    }

    #[test]
    fn incremental_update_of_any_word_equals_full_recompute() {
        let mut rng = Rng::new(42);
        for _ in 0..100_000 {
            let mut h = [0u8; IPV4_HLEN];
            for b in h.iter_mut() {
                *b = rng.next_u8();
            }
            h[0] = 0x45;
            let c = ipv4_header_checksum(&h);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            // Any word but the checksum itself.
            let mut w = (rng.next_u8() as usize % 10) * 2;
            if w == ipv4::CSUM {
                w = 8;
            }
            let old = u16::from_be_bytes([h[w], h[w + 1]]);
            let new = rng.next_u16();
            let mut inc = h;
            inc[w..w + 2].copy_from_slice(&new.to_be_bytes());
            inc[10..12].copy_from_slice(&replace_word(c, old, new).to_be_bytes());
            let mut full = inc;
            full[10..12].copy_from_slice(&ipv4_header_checksum(&inc).to_be_bytes());
            assert_eq!(inc, full);
        }
    }

    #[test]
    fn ttl_zero_is_left_alone() {
        let mut h = ipv4_header([10, 0, 0, 1], [10, 0, 0, 2], 1, 0, 20);
        let before = h;
        assert_eq!(decrement_ttl(&mut h), 0);
        assert_eq!(h, before);
    }

    #[test]
    fn header_with_options() {
        let mut h = [0u8; 24];
        h[..20].copy_from_slice(&ipv4_header([10, 0, 0, 1], [10, 0, 0, 2], 1, 9, 24));
        h[0] = 0x46;
        h[20..24].copy_from_slice(&[0x94, 0x04, 0x00, 0x00]); // router alert
        let c = ipv4_header_checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        assert!(ipv4_checksum_ok(&h));
        let mut base: [u8; 20] = h[..20].try_into().unwrap();
        decrement_ttl(&mut base);
        h[..20].copy_from_slice(&base);
        assert!(ipv4_checksum_ok(&h));
    }
}

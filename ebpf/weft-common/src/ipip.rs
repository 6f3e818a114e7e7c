//! IPv4-in-IPv4 (RFC 2003) encapsulation: the outer header. Which IPIP
//! packets a node accepts is [`crate::sources`].

use crate::csum::ipv4_header_checksum;
use crate::packet::{IP_DF, IPPROTO_IPIP, IPV4_HLEN, Ipv4Facts, ipv4};

/// TTL of the outer header.
pub const OUTER_TTL: u8 = 64;

/// Bytes the encapsulation adds (an outer header without options).
pub const ENCAP_LEN: usize = IPV4_HLEN;

/// Builds the outer header for `inner` from `src` to `dst`: version 4, IHL 5,
/// TOS (DSCP and ECN) copied from the inner header, total length = inner
/// total length + 20 (saturating: a GSO packet's segments get theirs from the
/// kernel), ID `id` (fresh per packet, chosen by the caller: reusing the
/// inner one would give two flows between the same nodes colliding IDs,
/// which corrupts reassembly of the outer fragments), DF copied, no fragment
/// offset, TTL [`OUTER_TTL`], protocol 4, a correct checksum.
#[inline(always)]
pub fn build_outer_header(
    inner: &Ipv4Facts,
    src: [u8; 4],
    dst: [u8; 4],
    id: u16,
) -> [u8; IPV4_HLEN] {
    let mut h = [0u8; IPV4_HLEN];
    h[ipv4::VER_IHL] = 0x45;
    h[ipv4::TOS] = inner.tos;
    let tot = inner
        .total_len
        .saturating_add(ENCAP_LEN as u16)
        .to_be_bytes();
    h[ipv4::TOT_LEN] = tot[0];
    h[ipv4::TOT_LEN + 1] = tot[1];
    let id = id.to_be_bytes();
    h[ipv4::ID] = id[0];
    h[ipv4::ID + 1] = id[1];
    let frag = (inner.frag_off & IP_DF).to_be_bytes();
    h[ipv4::FRAG_OFF] = frag[0];
    h[ipv4::FRAG_OFF + 1] = frag[1];
    h[ipv4::TTL] = OUTER_TTL;
    h[ipv4::PROTO] = IPPROTO_IPIP;
    let mut i = 0;
    while i < 4 {
        h[ipv4::SRC + i] = src[i];
        h[ipv4::DST + i] = dst[i];
        i += 1;
    }
    let c = ipv4_header_checksum(&h).to_be_bytes();
    h[ipv4::CSUM] = c[0];
    h[ipv4::CSUM + 1] = c[1];
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csum::ipv4_checksum_ok;
    use crate::testutil::{Rng, ipv4_header};

    #[test]
    fn outer_header_fields() {
        let mut inner = ipv4_header([10, 244, 1, 5], [10, 244, 2, 7], 6, 63, 1400);
        inner[ipv4::TOS] = 0xb9; // DSCP 46, ECN CE
        inner[ipv4::ID] = 0x12;
        inner[ipv4::ID + 1] = 0x34;
        let f = Ipv4Facts::parse(&inner).unwrap();
        let h = build_outer_header(&f, [192, 168, 0, 1], [192, 168, 0, 2], 0xbeef);
        assert_eq!(
            h,
            [
                0x45,
                0xb9,
                (1420u16 >> 8) as u8,
                (1420u16 & 0xff) as u8,
                0xbe,
                0xef,
                0x40,
                0x00,
                64,
                4,
                h[10],
                h[11],
                192,
                168,
                0,
                1,
                192,
                168,
                0,
                2
            ]
        );
        assert!(ipv4_checksum_ok(&h));
        let o = Ipv4Facts::parse(&h).unwrap();
        assert!(o.is_ipip() && o.dont_fragment());
        assert_eq!((o.total_len, o.ttl), (1420, OUTER_TTL));
    }

    #[test]
    fn outer_header_copies_only_df_and_saturates_length() {
        let mut inner = ipv4_header([10, 0, 0, 1], [10, 0, 1, 1], 17, 9, 65530);
        inner[ipv4::FRAG_OFF] = 0x20; // MF, no DF
        inner[ipv4::FRAG_OFF + 1] = 0x10; // offset
        let f = Ipv4Facts::parse(&inner).unwrap();
        let h = build_outer_header(&f, [1, 1, 1, 1], [2, 2, 2, 2], 7);
        assert_eq!(
            &h[ipv4::ID..ipv4::ID + 2],
            &[0, 7],
            "the given ID, not the inner one"
        );
        assert_eq!(&h[ipv4::FRAG_OFF..ipv4::FRAG_OFF + 2], &[0, 0]);
        assert_eq!(&h[ipv4::TOT_LEN..ipv4::TOT_LEN + 2], &[0xff, 0xff]);
        assert!(ipv4_checksum_ok(&h));
    }

    #[test]
    fn outer_checksum_valid_for_random_inners() {
        let mut rng = Rng::new(2003);
        for _ in 0..50_000 {
            let mut inner = [0u8; IPV4_HLEN];
            for b in inner.iter_mut() {
                *b = rng.next_u8();
            }
            inner[0] = 0x45;
            let len = 20 + (rng.next_u16() % 9000);
            inner[2..4].copy_from_slice(&len.to_be_bytes());
            let f = Ipv4Facts::parse(&inner).unwrap();
            let src = [rng.next_u8(), rng.next_u8(), rng.next_u8(), rng.next_u8()];
            let dst = [rng.next_u8(), rng.next_u8(), rng.next_u8(), rng.next_u8()];
            let h = build_outer_header(&f, src, dst, rng.next_u16());
            assert!(ipv4_checksum_ok(&h), "{h:02x?}");
            assert_eq!(Ipv4Facts::parse(&h).unwrap().total_len, len + 20);
        }
    }
}

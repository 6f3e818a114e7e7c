//! Header layouts and parsing: Ethernet, IPv4, ARP (Ethernet/IPv4).
//!
//! Parsers take byte slices and check their length first; the eBPF programs
//! call them on fixed-size arrays read from the packet, where the length
//! checks fold away. Multi-byte fields are big-endian on the wire.

/// Ethernet header length.
pub const ETH_HLEN: usize = 14;
/// Ethernet address length.
pub const ETH_ALEN: usize = 6;
/// EtherType of IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType of ARP.
pub const ETH_P_ARP: u16 = 0x0806;
/// IPv4 header length without options (IHL = 5).
pub const IPV4_HLEN: usize = 20;
/// IPv4 header length with the most options (IHL = 15).
pub const IPV4_MAX_HLEN: usize = 60;
/// IP protocol number of IPv4-in-IPv4.
pub const IPPROTO_IPIP: u8 = 4;
/// "Don't fragment" in the IPv4 flags/fragment-offset field.
pub const IP_DF: u16 = 0x4000;
/// "More fragments" in the IPv4 flags/fragment-offset field.
pub const IP_MF: u16 = 0x2000;
/// The fragment offset in the IPv4 flags/fragment-offset field.
pub const IP_OFFSET_MASK: u16 = 0x1fff;
/// Length of an Ethernet/IPv4 ARP body.
pub const ARP_IPV4_LEN: usize = 28;

/// Byte offsets inside the Ethernet header.
pub mod eth {
    pub const DST: usize = 0;
    pub const SRC: usize = 6;
    pub const PROTO: usize = 12;
}

/// Byte offsets inside the IPv4 header.
pub mod ipv4 {
    pub const VER_IHL: usize = 0;
    pub const TOS: usize = 1;
    pub const TOT_LEN: usize = 2;
    pub const ID: usize = 4;
    pub const FRAG_OFF: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTO: usize = 9;
    pub const CSUM: usize = 10;
    pub const SRC: usize = 12;
    pub const DST: usize = 16;
}

/// Byte offsets inside an Ethernet/IPv4 ARP body (after the Ethernet header).
pub mod arp {
    pub const HTYPE: usize = 0;
    pub const PTYPE: usize = 2;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: usize = 6;
    pub const SHA: usize = 8;
    pub const SPA: usize = 14;
    pub const THA: usize = 18;
    pub const TPA: usize = 24;
}

/// Why a header was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// Fewer bytes than the header needs.
    Truncated,
    /// IP version is not 4.
    NotIpv4,
    /// IHL below 5 (20 bytes).
    BadHeaderLength,
    /// Total length smaller than the header length.
    BadTotalLength,
    /// ARP body not Ethernet/IPv4 (htype 1, ptype 0x0800, hlen 6, plen 4).
    NotEthernetIpv4Arp,
}

#[inline(always)]
fn be16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
}

#[inline(always)]
fn arr4(b: &[u8], off: usize) -> [u8; 4] {
    [b[off], b[off + 1], b[off + 2], b[off + 3]]
}

#[inline(always)]
fn arr6(b: &[u8], off: usize) -> [u8; 6] {
    [
        b[off],
        b[off + 1],
        b[off + 2],
        b[off + 3],
        b[off + 4],
        b[off + 5],
    ]
}

/// The Ethernet header's fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EthFacts {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ethertype: u16,
}

impl EthFacts {
    /// Reads the first [`ETH_HLEN`] bytes of `frame`.
    #[inline(always)]
    pub fn parse(frame: &[u8]) -> Result<EthFacts, ParseError> {
        if frame.len() < ETH_HLEN {
            return Err(ParseError::Truncated);
        }
        Ok(EthFacts {
            dst: arr6(frame, eth::DST),
            src: arr6(frame, eth::SRC),
            ethertype: be16(frame, eth::PROTO),
        })
    }
}

/// Writes a whole Ethernet header.
#[inline(always)]
pub fn write_eth(hdr: &mut [u8; ETH_HLEN], dst: [u8; 6], src: [u8; 6], ethertype: u16) {
    set_eth_addrs(hdr, dst, src);
    let p = ethertype.to_be_bytes();
    hdr[eth::PROTO] = p[0];
    hdr[eth::PROTO + 1] = p[1];
}

/// Rewrites the destination and source MAC of an Ethernet header.
#[inline(always)]
pub fn set_eth_addrs(hdr: &mut [u8; ETH_HLEN], dst: [u8; 6], src: [u8; 6]) {
    let mut i = 0;
    while i < ETH_ALEN {
        hdr[eth::DST + i] = dst[i];
        hdr[eth::SRC + i] = src[i];
        i += 1;
    }
}

/// An individual (not group) address that is not all zeros.
#[inline(always)]
pub const fn is_unicast_mac(mac: &[u8; 6]) -> bool {
    mac[0] & 1 == 0 && (mac[0] | mac[1] | mac[2] | mac[3] | mac[4] | mac[5]) != 0
}

/// An address a pod may own: not 0.0.0.0/8, loopback, multicast, class E or broadcast.
#[inline(always)]
pub const fn is_unicast_ipv4(ip: [u8; 4]) -> bool {
    ip[0] != 0 && ip[0] != 127 && ip[0] < 224
}

/// The IPv4 header's fields (options are not interpreted).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ipv4Facts {
    /// Header length in bytes (IHL × 4), 20..=60.
    pub header_len: u8,
    pub tos: u8,
    pub total_len: u16,
    pub id: u16,
    /// Flags and fragment offset.
    pub frag_off: u16,
    pub ttl: u8,
    pub protocol: u8,
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

impl Ipv4Facts {
    /// Parses the fixed 20 bytes of an IPv4 header and checks version, IHL
    /// and total length. `hdr` may be longer (options, payload).
    #[inline(always)]
    pub fn parse(hdr: &[u8]) -> Result<Ipv4Facts, ParseError> {
        if hdr.len() < IPV4_HLEN {
            return Err(ParseError::Truncated);
        }
        let ver_ihl = hdr[ipv4::VER_IHL];
        if ver_ihl >> 4 != 4 {
            return Err(ParseError::NotIpv4);
        }
        let header_len = (ver_ihl & 0x0f) * 4;
        if (header_len as usize) < IPV4_HLEN {
            return Err(ParseError::BadHeaderLength);
        }
        let total_len = be16(hdr, ipv4::TOT_LEN);
        if total_len < header_len as u16 {
            return Err(ParseError::BadTotalLength);
        }
        Ok(Ipv4Facts {
            header_len,
            tos: hdr[ipv4::TOS],
            total_len,
            id: be16(hdr, ipv4::ID),
            frag_off: be16(hdr, ipv4::FRAG_OFF),
            ttl: hdr[ipv4::TTL],
            protocol: hdr[ipv4::PROTO],
            src: arr4(hdr, ipv4::SRC),
            dst: arr4(hdr, ipv4::DST),
        })
    }

    /// The DF bit.
    #[inline(always)]
    pub const fn dont_fragment(&self) -> bool {
        self.frag_off & IP_DF != 0
    }

    /// IPv4-in-IPv4.
    #[inline(always)]
    pub const fn is_ipip(&self) -> bool {
        self.protocol == IPPROTO_IPIP
    }

    /// A fragment (MF set or a non-zero offset): only the first holds the
    /// payload's headers, and none holds the whole payload.
    #[inline(always)]
    pub const fn is_fragment(&self) -> bool {
        self.frag_off & (IP_MF | IP_OFFSET_MASK) != 0
    }
}

/// The fields of an Ethernet/IPv4 ARP body that the pod-side ARP check reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpFacts {
    pub op: u16,
    pub sender_mac: [u8; 6],
    pub sender_ip: [u8; 4],
    pub target_ip: [u8; 4],
}

impl ArpFacts {
    /// Parses the ARP body that follows the Ethernet header.
    #[inline(always)]
    pub fn parse(body: &[u8]) -> Result<ArpFacts, ParseError> {
        if body.len() < ARP_IPV4_LEN {
            return Err(ParseError::Truncated);
        }
        if be16(body, arp::HTYPE) != 1
            || be16(body, arp::PTYPE) != ETH_P_IP
            || body[arp::HLEN] != 6
            || body[arp::PLEN] != 4
        {
            return Err(ParseError::NotEthernetIpv4Arp);
        }
        Ok(ArpFacts {
            op: be16(body, arp::OPER),
            sender_mac: arr6(body, arp::SHA),
            sender_ip: arr4(body, arp::SPA),
            target_ip: arr4(body, arp::TPA),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::ipv4_header;

    #[test]
    fn eth_parse_and_write() {
        let mut h = [0u8; ETH_HLEN];
        write_eth(&mut h, [2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2], ETH_P_IP);
        assert_eq!(h, [2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 8, 0]);
        let f = EthFacts::parse(&h).unwrap();
        assert_eq!(
            f,
            EthFacts {
                dst: [2, 0, 0, 0, 0, 1],
                src: [2, 0, 0, 0, 0, 2],
                ethertype: ETH_P_IP
            }
        );
        assert_eq!(EthFacts::parse(&h[..13]), Err(ParseError::Truncated));
        set_eth_addrs(&mut h, [0xaa; 6], [0xbb; 6]);
        assert_eq!(
            &h[..12],
            &[
                0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xaa, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb, 0xbb
            ]
        );
        assert_eq!(&h[12..], &[8, 0]);
    }

    #[test]
    fn ipv4_parse_fields() {
        let h = ipv4_header([10, 1, 0, 2], [10, 2, 0, 3], 17, 63, 84);
        let f = Ipv4Facts::parse(&h).unwrap();
        assert_eq!(f.header_len, 20);
        assert_eq!(f.total_len, 84);
        assert_eq!(f.ttl, 63);
        assert_eq!(f.protocol, 17);
        assert_eq!(f.src, [10, 1, 0, 2]);
        assert_eq!(f.dst, [10, 2, 0, 3]);
        assert!(f.dont_fragment());
        assert!(!f.is_ipip());
    }

    #[test]
    fn ipv4_parse_bounds() {
        let h = ipv4_header([10, 1, 0, 2], [10, 2, 0, 3], 6, 64, 40);
        for n in 0..IPV4_HLEN {
            assert_eq!(
                Ipv4Facts::parse(&h[..n]),
                Err(ParseError::Truncated),
                "len {n}"
            );
        }
        assert!(Ipv4Facts::parse(&h[..IPV4_HLEN]).is_ok());

        let mut v6 = h;
        v6[0] = 0x60;
        assert_eq!(Ipv4Facts::parse(&v6), Err(ParseError::NotIpv4));
        for ihl in 0..5u8 {
            let mut bad = h;
            bad[0] = 0x40 | ihl;
            assert_eq!(
                Ipv4Facts::parse(&bad),
                Err(ParseError::BadHeaderLength),
                "ihl {ihl}"
            );
        }
        let mut opts = h;
        opts[0] = 0x4f;
        opts[2..4].copy_from_slice(&60u16.to_be_bytes());
        assert_eq!(Ipv4Facts::parse(&opts).unwrap().header_len, 60);
        opts[2..4].copy_from_slice(&59u16.to_be_bytes());
        assert_eq!(Ipv4Facts::parse(&opts), Err(ParseError::BadTotalLength));
        let mut short = h;
        short[2..4].copy_from_slice(&19u16.to_be_bytes());
        assert_eq!(Ipv4Facts::parse(&short), Err(ParseError::BadTotalLength));
    }

    #[test]
    fn arp_parse() {
        let mut b = [0u8; ARP_IPV4_LEN];
        b[..8].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        b[arp::SHA..arp::SHA + 6].copy_from_slice(&[2, 1, 2, 3, 4, 5]);
        b[arp::SPA..arp::SPA + 4].copy_from_slice(&[10, 244, 0, 7]);
        b[arp::TPA..arp::TPA + 4].copy_from_slice(&[10, 244, 0, 1]);
        let a = ArpFacts::parse(&b).unwrap();
        assert_eq!(a.op, 1);
        assert_eq!(a.sender_mac, [2, 1, 2, 3, 4, 5]);
        assert_eq!(a.sender_ip, [10, 244, 0, 7]);
        assert_eq!(a.target_ip, [10, 244, 0, 1]);
        assert_eq!(ArpFacts::parse(&b[..27]), Err(ParseError::Truncated));
        let mut v6 = b;
        v6[arp::PTYPE] = 0x86;
        v6[arp::PTYPE + 1] = 0xdd;
        assert_eq!(ArpFacts::parse(&v6), Err(ParseError::NotEthernetIpv4Arp));
        let mut hlen = b;
        hlen[arp::HLEN] = 8;
        assert_eq!(ArpFacts::parse(&hlen), Err(ParseError::NotEthernetIpv4Arp));
    }

    #[test]
    fn address_classes() {
        assert!(is_unicast_mac(&[2, 0, 0, 0, 0, 1]));
        assert!(!is_unicast_mac(&[0; 6]));
        assert!(!is_unicast_mac(&[0xff; 6]));
        assert!(!is_unicast_mac(&[1, 0, 0x5e, 0, 0, 1]));
        assert!(is_unicast_ipv4([10, 244, 1, 2]));
        assert!(!is_unicast_ipv4([0, 0, 0, 0]));
        assert!(!is_unicast_ipv4([127, 0, 0, 1]));
        assert!(!is_unicast_ipv4([224, 0, 0, 1]));
        assert!(!is_unicast_ipv4([255, 255, 255, 255]));
    }
}

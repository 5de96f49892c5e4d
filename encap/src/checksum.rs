//! The Internet checksum.
//!
//! Owns the 16-bit one's-complement sum of RFC 1071 over byte slices, the IPv4
//! pseudo-header sum that UDP (RFC 768) and TCP (RFC 793 §3.1) add to it, its IPv6
//! counterpart (RFC 8200 §8.1, which ICMPv6 covers too, RFC 4443 §2.3), and the
//! incremental update of RFC 1624 (eqn. 3) that lets a router change one header word
//! without summing the header again. The views in this crate call these; the forwarder calls
//! [`update_u16`] / [`update_u32`] when it rewrites a field.
//!
//! A "sum" here is the folded, *uncomplemented* one's-complement sum; the checksum on the
//! wire is its complement. [`data`] adds 32-bit big-endian words into a 64-bit accumulator
//! and folds once at the end (RFC 1071 §2 (B), (C)): one add per 4 bytes, no carry handling
//! in the loop. Nothing here allocates or panics.

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::ipv4::IpProtocol;

/// Folds a wide one's-complement accumulator to 16 bits with end-around carry.
/// The result is 0 only when `acc` is 0.
const fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The one's-complement sum of `bytes` as 16-bit big-endian words (an odd last byte is
/// padded with a zero byte), folded, not complemented.
pub fn data(bytes: &[u8]) -> u16 {
    let mut acc: u64 = 0;
    let mut words = bytes.chunks_exact(4);
    for w in &mut words {
        // 2^16 ≡ 1 (mod 2^16 - 1): a 32-bit word adds the same as its two halves.
        acc += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let mut pairs = words.remainder().chunks_exact(2);
    for p in &mut pairs {
        acc += u64::from(u16::from_be_bytes([p[0], p[1]]));
    }
    if let [last] = pairs.remainder() {
        acc += u64::from(*last) << 8;
    }
    fold(acc)
}

/// The one's-complement sum of several partial sums.
pub fn combine(sums: &[u16]) -> u16 {
    fold(sums.iter().map(|&s| u64::from(s)).sum())
}

/// The sum of the IPv4 pseudo header (RFC 768, RFC 793 §3.1): source, destination, zero,
/// protocol and the upper-layer length (UDP length / IPv4 payload length).
pub fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, protocol: IpProtocol, length: u16) -> u16 {
    let s = u32::from(src);
    let d = u32::from(dst);
    fold(
        u64::from(s >> 16)
            + u64::from(s & 0xffff)
            + u64::from(d >> 16)
            + u64::from(d & 0xffff)
            + u64::from(u8::from(protocol))
            + u64::from(length),
    )
}

/// The sum of the IPv6 pseudo header (RFC 8200 §8.1): source, destination, the 32-bit
/// upper-layer packet length, three zero bytes and the next header (58 for ICMPv6).
pub fn pseudo_header6(src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, length: u32) -> u16 {
    let s = u128::from(src);
    let d = u128::from(dst);
    let words = |a: u128| u64::from((a >> 96) as u32) + u64::from((a >> 64) as u32) + u64::from((a >> 32) as u32) + u64::from(a as u32);
    fold(words(s) + words(d) + u64::from(length) + u64::from(next_header))
}

/// The checksum after one 16-bit word of the covered data changed from `old` to `new`:
/// RFC 1624 eqn. 3, `HC' = ~(~HC + ~m + m')`. Equals a full recompute for any data that is
/// not all zeros (an IPv4 header never is).
pub const fn update_u16(csum: u16, old: u16, new: u16) -> u16 {
    !fold(!csum as u64 + !old as u64 + new as u64)
}

/// [`update_u16`] for an aligned 32-bit field (an IPv4 address, a TCP sequence number).
pub const fn update_u32(csum: u16, old: u32, new: u32) -> u16 {
    let csum = update_u16(csum, (old >> 16) as u16, (new >> 16) as u16);
    update_u16(csum, old as u16, new as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// RFC 1071 §4.1, word by word, as a reference.
    fn reference(bytes: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        for pair in bytes.chunks(2) {
            let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
            sum += u32::from(word);
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: the sum of 0001 f203 f4f5 f6f7 is ddf2.
        assert_eq!(
            data(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            0xddf2
        );
        assert_eq!(data(&[]), 0);
        assert_eq!(data(&[0xab]), 0xab00);
        assert_eq!(data(&[0xab, 0xcd, 0xef]), 0x9ace); // 0xabcd + 0xef00 with end-around carry
    }

    #[test]
    fn captured_ipv4_header_sums_to_ffff() {
        // The outer IPv4 header of a VXLAN frame sent by a Linux flannel.1 device.
        let header = &crate::fixtures::VXLAN_ICMP_ECHO_REQUEST[14..34];
        assert_eq!(data(header), 0xffff);
    }

    #[test]
    fn rfc1624_example() {
        // RFC 1624 §4: HC = 0xdd2f, m = 0x5555 → m' = 0x3285 gives HC' = 0x0000.
        assert_eq!(update_u16(0xdd2f, 0x5555, 0x3285), 0x0000);
    }

    #[test]
    fn pseudo_header_of_captured_tcp() {
        // Inner TCP RST of a captured VXLAN frame, whose checksum the kernel filled fully.
        let ip = &crate::fixtures::VXLAN_TCP_RST[64..];
        let tcp = &ip[20..];
        let sum = combine(&[
            pseudo_header(
                Ipv4Addr::new(10, 244, 1, 0),
                Ipv4Addr::new(10, 244, 0, 0),
                IpProtocol::Tcp,
                tcp.len() as u16,
            ),
            data(tcp),
        ]);
        assert_eq!(sum, 0xffff);
    }

    proptest! {
        #[test]
        fn fast_sum_equals_reference(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            prop_assert_eq!(data(&bytes), reference(&bytes));
        }

        #[test]
        fn split_sums_combine(bytes in proptest::collection::vec(any::<u8>(), 0..200),
                              cut in any::<prop::sample::Index>()) {
            // Splitting at an even offset and combining gives the same sum.
            let cut = cut.index(bytes.len() / 2 + 1) * 2;
            let cut = cut.min(bytes.len() & !1);
            prop_assert_eq!(combine(&[data(&bytes[..cut]), data(&bytes[cut..])]), data(&bytes));
        }

        #[test]
        fn incremental_u16_equals_full_recompute(
            words in proptest::collection::vec(any::<u16>(), 1..40),
            at in any::<prop::sample::Index>(),
            new in any::<u16>(),
        ) {
            let bytes = |w: &[u16]| w.iter().flat_map(|x| x.to_be_bytes()).collect::<Vec<u8>>();
            let at = at.index(words.len());
            let before = !data(&bytes(&words));
            let mut changed = words.clone();
            changed[at] = new;
            prop_assume!(changed.iter().any(|&w| w != 0));
            prop_assert_eq!(update_u16(before, words[at], new), !data(&bytes(&changed)));
        }

        #[test]
        fn incremental_u32_equals_full_recompute(
            words in proptest::collection::vec(any::<u32>(), 1..20),
            at in any::<prop::sample::Index>(),
            new in any::<u32>(),
        ) {
            let bytes = |w: &[u32]| w.iter().flat_map(|x| x.to_be_bytes()).collect::<Vec<u8>>();
            let at = at.index(words.len());
            let before = !data(&bytes(&words));
            let mut changed = words.clone();
            changed[at] = new;
            prop_assume!(changed.iter().any(|&w| w != 0));
            prop_assert_eq!(update_u32(before, words[at], new), !data(&bytes(&changed)));
        }
    }
}

//! Direct routing: no encapsulation, only a new Ethernet header.
//!
//! Owns the MAC rewrite of the `direct` profile (Flannel host-gw, Calico BGP mode and the
//! same-subnet half of Calico CrossSubnet): the IPv4 packet leaves unchanged except for
//! what the forwarder does to it (TTL via [`crate::ipv4::decrement_ttl`]), in a frame from
//! this node's uplink MAC to the next hop's MAC. The same function sets the inner MACs of
//! a frame about to be VXLAN-encapsulated (this node's VTEP MAC → the remote VTEP MAC).
//!
//! Hot path: never allocates, never panics.

use crate::Error;
use crate::ethernet::{EthernetAddress, EthernetFrame};

/// Sets the source and destination MAC addresses of the Ethernet frame `frame`, in place.
/// `Err(Truncated)` (and nothing written) if it is shorter than an Ethernet header.
pub fn rewrite_macs(
    frame: &mut [u8],
    src: EthernetAddress,
    dst: EthernetAddress,
) -> Result<(), Error> {
    let mut frame = EthernetFrame::new_checked(frame)?;
    frame.set_src_addr(src);
    frame.set_dst_addr(dst);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures;

    #[test]
    fn rewrites_only_the_addresses() {
        // The inner frame of a captured VXLAN packet: pod traffic between two VTEPs.
        let original = &fixtures::VXLAN_ICMP_ECHO_REQUEST[50..];
        let mut frame = original.to_vec();
        let src = EthernetAddress([0x02, 0, 0, 0, 0, 0x0a]);
        let dst = EthernetAddress([0x02, 0, 0, 0, 0, 0x0b]);
        rewrite_macs(&mut frame, src, dst).unwrap();
        assert_eq!(frame[..6], dst.0);
        assert_eq!(frame[6..12], src.0);
        assert_eq!(frame[12..], original[12..]);
    }

    #[test]
    fn refuses_short_frames_untouched() {
        let mut frame = [0xa5u8; 13];
        let mac = EthernetAddress([0x02, 0, 0, 0, 0, 1]);
        assert_eq!(rewrite_macs(&mut frame, mac, mac), Err(Error::Truncated));
        assert_eq!(frame, [0xa5; 13]);
        let mut header_only = [0xa5u8; 14];
        assert_eq!(
            rewrite_macs(&mut header_only, mac, EthernetAddress::BROADCAST),
            Ok(())
        );
        assert_eq!(
            header_only[..12],
            [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 1]
        );
        assert_eq!(header_only[12..], [0xa5; 2]);
    }
}

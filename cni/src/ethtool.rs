//! Turns off the pod interface's offloads that AF_XDP cannot carry: TX checksum
//! offload (a frame would leave the pod with a "checksum partial" the forwarder never
//! completes) and segmentation offloads (TSO/GSO build 64 KB super-frames; an XSK
//! moves MTU-sized frames), plus GRO on the receive side. See ARCHITECTURE.md
//! "Interfaces and the XDP hook".
//!
//! Uses the features API of SIOCETHTOOL (linux/ethtool.h): ETHTOOL_GSSET_INFO and
//! ETHTOOL_GSTRINGS for the kernel's feature names (their bit positions differ between
//! kernels), ETHTOOL_SFEATURES to clear them, ETHTOOL_GFEATURES to read back what
//! stuck. Must be called on a thread inside the pod's network namespace.

use std::io;
use std::os::fd::OwnedFd;

use crate::sys;

const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
const ETHTOOL_GFEATURES: u32 = 0x3a;
const ETHTOOL_SFEATURES: u32 = 0x3b;
const ETH_SS_FEATURES: u32 = 4;
const ETH_GSTRING_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum EthtoolError {
    /// An ethtool ioctl failed.
    #[error("ethtool {what} on {ifname}: {source}")]
    Ioctl {
        what: &'static str,
        ifname: String,
        source: io::Error,
    },
    /// Offloads that must be off are still on after ETHTOOL_SFEATURES.
    #[error("{ifname} still has {features:?} on after asking the kernel to turn them off")]
    StillOn {
        ifname: String,
        features: Vec<String>,
    },
}

/// Features cleared on the pod side.
fn to_turn_off(name: &str) -> bool {
    name.starts_with("tx-checksum-")
        || (name.starts_with("tx-") && name.ends_with("-segmentation"))
        || name == "tx-gso-partial"
        || name == "tx-gso-list"
        || name.starts_with("rx-gro")
}

/// Of those, the ones the forwarder cannot live with: still on is an error.
fn must_be_off(name: &str) -> bool {
    name.starts_with("tx-checksum-")
        || (name.starts_with("tx-tcp") && name.ends_with("-segmentation"))
        || name == "tx-generic-segmentation"
}

/// One feature: its kernel name and whether it is active now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feature {
    pub name: String,
    pub active: bool,
}

/// Clears the offloads of [`to_turn_off`] on `ifname` and checks that the ones of
/// [`must_be_off`] are off afterwards. Returns the final feature states.
pub fn disable_offloads(ifname: &str) -> Result<Vec<Feature>, EthtoolError> {
    let sock = sys::ioctl_socket().map_err(|source| err("socket", ifname, source))?;
    let names = feature_names(&sock, ifname)?;
    let words = names.len().div_ceil(32);

    // struct ethtool_sfeatures { cmd, size, { valid, requested }[size] }
    let mut cmd = vec![0u32; 2 + 2 * words];
    cmd[0] = ETHTOOL_SFEATURES;
    cmd[1] = words as u32;
    for (bit, _) in names.iter().enumerate().filter(|(_, n)| to_turn_off(n)) {
        cmd[2 + 2 * (bit / 32)] |= 1 << (bit % 32); // valid; requested stays 0 = off
    }
    // A positive return flags features the device cannot change (ETHTOOL_F_UNSUPPORTED)
    // or that did not follow (ETHTOOL_F_WISH); the read-back below decides.
    let flags = sys::ethtool(&sock, ifname, &mut cmd)
        .map_err(|source| err("ETHTOOL_SFEATURES", ifname, source))?;
    let features = read_features(&sock, ifname, &names)?;
    let still_on: Vec<String> = features
        .iter()
        .filter(|f| f.active && must_be_off(&f.name))
        .map(|f| f.name.clone())
        .collect();
    if !still_on.is_empty() {
        return Err(EthtoolError::StillOn {
            ifname: ifname.to_owned(),
            features: still_on,
        });
    }
    let optional_on: Vec<&str> = features
        .iter()
        .filter(|f| f.active && to_turn_off(&f.name))
        .map(|f| f.name.as_str())
        .collect();
    if !optional_on.is_empty() {
        tracing::warn!(
            ifname,
            ?optional_on,
            flags,
            "some offloads could not be turned off"
        );
    }
    Ok(features)
}

/// The offloads of [`must_be_off`] that are on (CHECK).
pub fn offloads_on(ifname: &str) -> Result<Vec<String>, EthtoolError> {
    let sock = sys::ioctl_socket().map_err(|source| err("socket", ifname, source))?;
    let names = feature_names(&sock, ifname)?;
    Ok(read_features(&sock, ifname, &names)?
        .into_iter()
        .filter(|f| f.active && must_be_off(&f.name))
        .map(|f| f.name)
        .collect())
}

fn err(what: &'static str, ifname: &str, source: io::Error) -> EthtoolError {
    EthtoolError::Ioctl {
        what,
        ifname: ifname.to_owned(),
        source,
    }
}

/// The names of the feature bits, index = bit number.
fn feature_names(sock: &OwnedFd, ifname: &str) -> Result<Vec<String>, EthtoolError> {
    // struct ethtool_sset_info { cmd, reserved, u64 sset_mask, u32 data[] }
    let mask = (1u64 << ETH_SS_FEATURES).to_ne_bytes();
    let mut info = [
        ETHTOOL_GSSET_INFO,
        0,
        u32::from_ne_bytes(mask[0..4].try_into().expect("4 bytes")),
        u32::from_ne_bytes(mask[4..8].try_into().expect("4 bytes")),
        0,
    ];
    sys::ethtool(sock, ifname, &mut info)
        .map_err(|source| err("ETHTOOL_GSSET_INFO", ifname, source))?;
    let count = info[4] as usize;

    // struct ethtool_gstrings { cmd, string_set, len, u8 data[len * ETH_GSTRING_LEN] }
    let mut strings = vec![0u32; 3 + count * ETH_GSTRING_LEN / 4];
    strings[0] = ETHTOOL_GSTRINGS;
    strings[1] = ETH_SS_FEATURES;
    strings[2] = count as u32;
    sys::ethtool(sock, ifname, &mut strings)
        .map_err(|source| err("ETHTOOL_GSTRINGS", ifname, source))?;
    let bytes: Vec<u8> = strings[3..].iter().flat_map(|w| w.to_ne_bytes()).collect();
    Ok(bytes
        .chunks(ETH_GSTRING_LEN)
        .map(|c| {
            let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
            String::from_utf8_lossy(&c[..end]).into_owned()
        })
        .collect())
}

fn read_features(
    sock: &OwnedFd,
    ifname: &str,
    names: &[String],
) -> Result<Vec<Feature>, EthtoolError> {
    let words = names.len().div_ceil(32);
    // struct ethtool_gfeatures { cmd, size, { available, requested, active, never_changed }[size] }
    let mut cmd = vec![0u32; 2 + 4 * words];
    cmd[0] = ETHTOOL_GFEATURES;
    cmd[1] = words as u32;
    sys::ethtool(sock, ifname, &mut cmd)
        .map_err(|source| err("ETHTOOL_GFEATURES", ifname, source))?;
    Ok(names
        .iter()
        .enumerate()
        .map(|(bit, name)| Feature {
            name: name.clone(),
            active: cmd[2 + 4 * (bit / 32) + 2] & (1 << (bit % 32)) != 0,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_of_features() {
        for on in [
            "tx-checksum-ip-generic",
            "tx-checksum-sctp",
            "tx-tcp-segmentation",
            "tx-tcp6-segmentation",
            "tx-tcp-accecn-segmentation",
            "tx-generic-segmentation",
        ] {
            assert!(to_turn_off(on) && must_be_off(on), "{on}");
        }
        for best_effort in [
            "tx-udp-segmentation",
            "tx-gre-segmentation",
            "rx-gro",
            "rx-gro-list",
            "tx-gso-partial",
        ] {
            assert!(
                to_turn_off(best_effort) && !must_be_off(best_effort),
                "{best_effort}"
            );
        }
        for kept in [
            "tx-scatter-gather",
            "rx-checksum",
            "highdma",
            "tx-vlan-hw-insert",
            "tx-lockless",
            "tx-gso-robust",
        ] {
            assert!(!to_turn_off(kept), "{kept}");
        }
    }
}

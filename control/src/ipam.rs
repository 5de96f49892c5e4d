//! Pod address allocation from this node's pod CIDR, kept on disk.
//!
//! The network address (Flannel gives it to the node's VTEP), the next one and the
//! broadcast address are never handed out. The allocation file is rewritten atomically
//! (write to a temporary file, fsync, rename) after every change, so a crash leaves either
//! the old or the new state and a restarted agent never hands out an address twice.
//! Allocation is idempotent per container id.
//!
//! Dual stack: a pod of a node with an IPv6 pod subnet as well gets the IPv6 address at the
//! same offset in that subnet as its IPv4 address has in the IPv4 one ([`ipv6_twin`]), so
//! the one allocation (and its state file) serves both families and the pair never drifts.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use forwarder::route::{Ipv4Prefix, Ipv6Prefix};
use serde::{Deserialize, Serialize};

/// An address given to a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub ip: Ipv4Addr,
    pub namespace: String,
    pub pod: String,
    pub ifname: String,
    /// The pod's host-side veth and MAC once the CNI plugin attached it (re-attached after
    /// an agent restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ifname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("pod CIDR {0} is full: every usable address is allocated")]
    Exhausted(Ipv4Prefix),
    #[error("IPAM state {path}: {reason}")]
    State { path: String, reason: String },
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    pod_cidr: String,
    allocations: BTreeMap<String, Allocation>,
}

/// The allocator of one node.
#[derive(Debug)]
pub struct Ipam {
    cidr: Ipv4Prefix,
    path: PathBuf,
    allocations: BTreeMap<String, Allocation>,
}

impl Ipam {
    /// Opens (or creates) the state in `dir` for `cidr`. Allocations outside `cidr` (the
    /// node got a new subnet) are kept so their containers can still be released.
    pub fn open(dir: &Path, cidr: Ipv4Prefix) -> Result<Ipam, IpamError> {
        let path = dir.join("ipam.json");
        let err = |reason: String| IpamError::State { path: path.display().to_string(), reason };
        std::fs::create_dir_all(dir).map_err(|e| err(format!("cannot create the state directory: {e}")))?;
        let allocations = match std::fs::read(&path) {
            Ok(bytes) => {
                let f: StateFile = serde_json::from_slice(&bytes).map_err(|e| err(format!("not valid IPAM state: {e}")))?;
                f.allocations
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(err(e.to_string())),
        };
        Ok(Ipam { cidr, path, allocations })
    }

    /// The address of `container_id`, allocating one if it has none.
    pub fn allocate(&mut self, container_id: &str, namespace: &str, pod: &str, ifname: &str) -> Result<Ipv4Addr, IpamError> {
        if let Some(a) = self.allocations.get(container_id) {
            return Ok(a.ip);
        }
        let used: std::collections::HashSet<Ipv4Addr> = self.allocations.values().map(|a| a.ip).collect();
        let base = u32::from(self.cidr.addr());
        let size = 1u64 << (32 - u32::from(self.cidr.len()));
        let ip = (2..size.saturating_sub(1))
            .map(|off| Ipv4Addr::from(base + off as u32))
            .find(|ip| !used.contains(ip))
            .ok_or(IpamError::Exhausted(self.cidr))?;
        self.allocations.insert(
            container_id.to_string(),
            Allocation { ip, namespace: namespace.into(), pod: pod.into(), ifname: ifname.into(), host_ifname: None, mac: None },
        );
        if let Err(e) = self.save() {
            self.allocations.remove(container_id);
            return Err(e);
        }
        Ok(ip)
    }

    /// Releases the address of `container_id`; `None` if it had none.
    pub fn release(&mut self, container_id: &str) -> Result<Option<Allocation>, IpamError> {
        let Some(a) = self.allocations.remove(container_id) else { return Ok(None) };
        if let Err(e) = self.save() {
            self.allocations.insert(container_id.to_string(), a);
            return Err(e);
        }
        Ok(Some(a))
    }

    /// Records the host-side interface and MAC of `container_id`.
    pub fn set_attachment(&mut self, container_id: &str, host_ifname: &str, mac: &str) -> Result<(), IpamError> {
        let Some(a) = self.allocations.get_mut(container_id) else { return Ok(()) };
        a.host_ifname = Some(host_ifname.to_string());
        a.mac = Some(mac.to_string());
        self.save()
    }

    pub fn get(&self, container_id: &str) -> Option<&Allocation> {
        self.allocations.get(container_id)
    }

    pub fn allocations(&self) -> &BTreeMap<String, Allocation> {
        &self.allocations
    }

    fn save(&self) -> Result<(), IpamError> {
        use std::io::Write;
        let err = |reason: String| IpamError::State { path: self.path.display().to_string(), reason };
        let f = StateFile { pod_cidr: self.cidr.to_string(), allocations: self.allocations.clone() };
        let tmp = self.path.with_extension("json.tmp");
        let mut file = std::fs::File::create(&tmp).map_err(|e| err(e.to_string()))?;
        file.write_all(&serde_json::to_vec_pretty(&f).expect("serializable")).map_err(|e| err(e.to_string()))?;
        file.sync_all().map_err(|e| err(e.to_string()))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| err(e.to_string()))?;
        Ok(())
    }
}

/// The IPv6 address of the pod with IPv4 address `ip` of subnet `cidr`: the same offset in
/// `cidr6`. `None` when `ip` is outside `cidr` or the offset does not fit `cidr6` (the
/// node manifest check refuses an IPv6 subnet smaller than the IPv4 one).
pub fn ipv6_twin(cidr: Ipv4Prefix, cidr6: Ipv6Prefix, ip: Ipv4Addr) -> Option<Ipv6Addr> {
    let offset = u128::from(u32::from(ip) - u32::from(cidr.addr()));
    let host_bits = 128 - u32::from(cidr6.len());
    (cidr.contains(ip) && (host_bits >= 128 || offset >> host_bits == 0)).then(|| Ipv6Addr::from(u128::from(cidr6.addr()) | offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ipv6_twin_sits_at_the_same_offset() {
        let (v4, v6): (Ipv4Prefix, Ipv6Prefix) = ("10.244.1.0/24".parse().unwrap(), "fd00:10:244:1::/64".parse().unwrap());
        assert_eq!(ipv6_twin(v4, v6, Ipv4Addr::new(10, 244, 1, 2)), Some("fd00:10:244:1::2".parse().unwrap()));
        assert_eq!(ipv6_twin(v4, v6, Ipv4Addr::new(10, 244, 1, 254)), Some("fd00:10:244:1::fe".parse().unwrap()));
        assert_eq!(ipv6_twin(v4, v6, Ipv4Addr::new(10, 244, 2, 2)), None, "outside the IPv4 subnet");
        assert_eq!(ipv6_twin(v4, "fd00::/124".parse().unwrap(), Ipv4Addr::new(10, 244, 1, 16)), None, "the offset does not fit");
        assert_eq!(ipv6_twin(v4, "::/0".parse().unwrap(), Ipv4Addr::new(10, 244, 1, 7)), Some("::7".parse().unwrap()));
    }

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("twill-ipam-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn allocates_past_reserved_addresses_and_is_idempotent() {
        let dir = tmpdir("basic");
        let mut ipam = Ipam::open(&dir, "10.244.1.0/24".parse().unwrap()).unwrap();
        let a = ipam.allocate("c1", "default", "p1", "eth0").unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 244, 1, 2));
        assert_eq!(ipam.allocate("c1", "default", "p1", "eth0").unwrap(), a);
        let b = ipam.allocate("c2", "default", "p2", "eth0").unwrap();
        assert_eq!(b, Ipv4Addr::new(10, 244, 1, 3));
        assert_eq!(ipam.release("c1").unwrap().map(|x| x.ip), Some(a));
        assert_eq!(ipam.release("c1").unwrap(), None);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn survives_restart_and_never_reuses_a_live_address() {
        let dir = tmpdir("restart");
        let cidr: Ipv4Prefix = "10.244.7.0/29".parse().unwrap(); // usable: .2 .. .6
        let mut ipam = Ipam::open(&dir, cidr).unwrap();
        let ips: Vec<_> = (0..5).map(|i| ipam.allocate(&format!("c{i}"), "d", "p", "eth0").unwrap()).collect();
        assert!(matches!(ipam.allocate("c9", "d", "p", "eth0"), Err(IpamError::Exhausted(_))));
        drop(ipam);
        let mut again = Ipam::open(&dir, cidr).unwrap();
        assert_eq!(again.allocations().len(), 5);
        assert_eq!(again.allocate("c3", "d", "p", "eth0").unwrap(), ips[3]);
        again.release("c1").unwrap();
        assert_eq!(again.allocate("new", "d", "p", "eth0").unwrap(), ips[1]);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn corrupt_state_is_an_error_naming_the_file() {
        let dir = tmpdir("corrupt");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ipam.json"), b"{not json").unwrap();
        let err = Ipam::open(&dir, "10.244.1.0/24".parse().unwrap()).unwrap_err().to_string();
        assert!(err.contains("ipam.json") && err.contains("not valid IPAM state"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }
}

//! The XDP hook: loads `bpf/twill_xdp.c` (built by build.rs) onto an interface, tells it
//! what the interface is (a pod's veth: everything to the socket; the uplink: only overlay
//! traffic for this node) and registers AF_XDP sockets in its XSKMAP.
//!
//! Each interface gets its own copy of the program and maps, owned by an [`XdpHook`]; dropping
//! the hook detaches the program in the mode it was attached in (native or generic), so no
//! generic-mode program is left behind.

use std::{
    ffi::{CStr, CString},
    io,
    net::{Ipv4Addr, Ipv6Addr},
    os::fd::RawFd,
    ptr::NonNull,
};

use crate::{
    Error,
    route::{Ipv4Prefix, Ipv6Prefix},
};

static OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/twill_xdp.o"));

/// What the hook on an interface sends to the AF_XDP socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookMode {
    /// A pod's host-side veth: every frame.
    Pod,
    /// The node's uplink: IPv4 to `node_ip` that is VXLAN (UDP to `vxlan_port`) or IP-in-IP,
    /// IPv4 to `pod_cidr` (direct routing), and with `nat` the replies to NAT'd connections
    /// (TCP / UDP to `node_ip` at a port of [`crate::nat::PORTS`], ICMP echo replies with
    /// such an identifier); with `node_ip6`, IPv6 to it that is VXLAN (an IPv6 underlay),
    /// and IPv6 to `pod_cidr6` (direct routing over it).
    /// Everything else goes to the kernel.
    Uplink {
        node_ip: Ipv4Addr,
        node_ip6: Option<Ipv6Addr>,
        vxlan_port: Option<u16>,
        ipip: bool,
        pod_cidr: Option<Ipv4Prefix>,
        /// The IPv6 pod subnet, for direct routing over the IPv6 underlay.
        pod_cidr6: Option<Ipv6Prefix>,
        nat: bool,
    },
}

/// How the program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    /// Driver mode (veth supports it; AF_XDP then runs in copy mode on veth).
    Native,
    /// Generic (skb) mode, for drivers without XDP support.
    Generic,
}

impl AttachMode {
    fn flags(self) -> u32 {
        match self {
            AttachMode::Native => libbpf_sys::XDP_FLAGS_DRV_MODE,
            AttachMode::Generic => libbpf_sys::XDP_FLAGS_SKB_MODE,
        }
    }
}

/// Mirrors `struct twill_cfg` in bpf/twill_xdp.c.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct HookConfig {
    mode: u32,
    node_ip: u32,
    pod_net: u32,
    pod_mask: u32,
    vxlan_port: u16,
    redirect_ipip: u16,
    nat_lo: u16,
    nat_hi: u16,
    /// The node's IPv6 underlay address, its bytes in order; all zero: none.
    node_ip6: [u32; 4],
    pod_net6: [u32; 4],
    /// All zero: no IPv6 direct routing.
    pod_mask6: [u32; 4],
}

/// An IPv6 address as the program's four words (its bytes in order).
fn words6(a: Ipv6Addr) -> [u32; 4] {
    let o = a.octets();
    std::array::from_fn(|i| u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]))
}

impl HookConfig {
    fn new(mode: HookMode) -> Self {
        match mode {
            HookMode::Pod => HookConfig::default(),
            HookMode::Uplink { node_ip, node_ip6, vxlan_port, ipip, pod_cidr, pod_cidr6, nat } => {
                // No prefix: all zero, which the program reads as off.
                let (pod_net, pod_mask) = pod_cidr.map_or((0, 0), |p| (u32::from(p.addr()).to_be(), u32::from(p.mask()).to_be()));
                let (pod_net6, pod_mask6) = pod_cidr6.map_or(([0; 4], [0; 4]), |p| (words6(p.addr()), words6(p.mask())));
                HookConfig {
                    mode: 1,
                    node_ip: u32::from(node_ip).to_be(),
                    pod_net,
                    pod_mask,
                    vxlan_port: vxlan_port.unwrap_or(0).to_be(),
                    redirect_ipip: u16::from(ipip),
                    nat_lo: if nat { *crate::nat::PORTS.start() } else { 0 },
                    nat_hi: if nat { *crate::nat::PORTS.end() } else { 0 },
                    node_ip6: words6(node_ip6.unwrap_or(Ipv6Addr::UNSPECIFIED)),
                    pod_net6,
                    pod_mask6,
                }
            }
        }
    }
}

/// The program attached to one interface.
#[derive(Debug)]
pub struct XdpHook {
    object: NonNull<libbpf_sys::bpf_object>,
    ifindex: u32,
    ifname: String,
    attach: AttachMode,
    xsks_fd: RawFd,
}

// SAFETY: the bpf_object is only touched through &mut self or on drop; libbpf objects are
// not tied to the thread that created them.
unsafe impl Send for XdpHook {}

/// The kernel's index of interface `ifname`.
pub fn ifindex(ifname: &str) -> Result<u32, Error> {
    let c = CString::new(ifname).map_err(|_| Error::NoSuchInterface(ifname.to_string()))?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 { Err(Error::NoSuchInterface(ifname.to_string())) } else { Ok(idx) }
}

fn os_err(what: &'static str, ifname: &str, ret: i32) -> Error {
    Error::Xdp { what, ifname: ifname.to_string(), source: io::Error::from_raw_os_error(ret.abs()) }
}

impl XdpHook {
    /// Loads the program, configures it for `mode` and attaches it to `ifname`, replacing
    /// any XDP program already there.
    pub fn attach(ifname: &str, mode: HookMode, attach: AttachMode) -> Result<Self, Error> {
        let ifindex = ifindex(ifname)?;
        // SAFETY: OBJECT is a static ELF image that outlives the object (libbpf copies what it
        // keeps); a null opts pointer asks for defaults.
        let object = unsafe {
            libbpf_sys::bpf_object__open_mem(OBJECT.as_ptr().cast(), OBJECT.len() as _, std::ptr::null())
        };
        let object = NonNull::new(object).ok_or_else(|| os_err("open the embedded XDP object", ifname, -22))?;
        let mut hook = XdpHook { object, ifindex, ifname: ifname.to_string(), attach, xsks_fd: -1 };
        // SAFETY: `object` is a valid, not yet loaded bpf_object.
        let ret = unsafe { libbpf_sys::bpf_object__load(hook.object.as_ptr()) };
        if ret != 0 {
            return Err(os_err("load the XDP program (needs root and a BPF-enabled kernel)", ifname, ret));
        }
        let prog_fd = hook.program_fd()?;
        hook.xsks_fd = hook.map_fd(c"xsks")?;
        let cfg_fd = hook.map_fd(c"twill_cfg")?;
        let cfg = HookConfig::new(mode);
        let key = 0u32;
        // SAFETY: key and value point at live values of the map's key and value sizes.
        let ret = unsafe {
            libbpf_sys::bpf_map_update_elem(cfg_fd, (&raw const key).cast(), (&raw const cfg).cast(), 0)
        };
        if ret != 0 {
            return Err(os_err("write the XDP config map", ifname, ret));
        }
        // Remove whatever XDP program is there in either mode first (a generic-mode leftover
        // would shadow a native one).
        detach_all(ifindex);
        // SAFETY: prog_fd is a loaded XDP program; null opts = defaults.
        let ret = unsafe { libbpf_sys::bpf_xdp_attach(ifindex as i32, prog_fd, attach.flags(), std::ptr::null()) };
        if ret != 0 {
            return Err(os_err(
                "attach the XDP program (a driver without native XDP, or without multi-buffer XDP at this MTU, needs --xdp-mode generic; the agent's log has the kernel's own message)",
                ifname,
                ret,
            ));
        }
        Ok(hook)
    }

    fn program_fd(&self) -> Result<RawFd, Error> {
        // SAFETY: the object is loaded and the name is NUL-terminated.
        let prog = unsafe { libbpf_sys::bpf_object__find_program_by_name(self.object.as_ptr(), c"twill_xdp".as_ptr()) };
        if prog.is_null() {
            return Err(os_err("find program twill_xdp", &self.ifname, -2));
        }
        // SAFETY: prog is a program of the loaded object.
        Ok(unsafe { libbpf_sys::bpf_program__fd(prog) })
    }

    fn map_fd(&self, name: &CStr) -> Result<RawFd, Error> {
        // SAFETY: the object is loaded and the name is NUL-terminated.
        let fd = unsafe { libbpf_sys::bpf_object__find_map_fd_by_name(self.object.as_ptr(), name.as_ptr()) };
        if fd < 0 { Err(os_err("find an XDP map", &self.ifname, fd)) } else { Ok(fd) }
    }

    /// Sends frames that arrive on `queue` to the AF_XDP socket `xsk_fd`.
    pub fn register_socket(&self, queue: u32, xsk_fd: RawFd) -> Result<(), Error> {
        // SAFETY: key and value are live u32/i32 values, the sizes of an XSKMAP entry.
        let ret = unsafe {
            libbpf_sys::bpf_map_update_elem(self.xsks_fd, (&raw const queue).cast(), (&raw const xsk_fd).cast(), 0)
        };
        if ret != 0 { Err(os_err("register the AF_XDP socket in the XSKMAP", &self.ifname, ret)) } else { Ok(()) }
    }

    /// The interface this hook is attached to.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }
}

/// Detaches any XDP program from `ifindex` in both native and generic mode.
pub fn detach_all(ifindex: u32) {
    for flags in [libbpf_sys::XDP_FLAGS_DRV_MODE, libbpf_sys::XDP_FLAGS_SKB_MODE] {
        // SAFETY: detaching by ifindex touches no memory of ours; an error (nothing attached,
        // interface gone) leaves nothing to undo.
        unsafe { libbpf_sys::bpf_xdp_detach(ifindex as i32, flags, std::ptr::null()) };
    }
}

impl Drop for XdpHook {
    fn drop(&mut self) {
        // Only detach if the interface still has our index (a deleted veth takes its
        // program with it).
        if ifindex(&self.ifname).ok() == Some(self.ifindex) {
            // SAFETY: see detach_all.
            unsafe { libbpf_sys::bpf_xdp_detach(self.ifindex as i32, self.attach.flags(), std::ptr::null()) };
        }
        // SAFETY: the object was opened by bpf_object__open_mem and is closed once, here.
        unsafe { libbpf_sys::bpf_object__close(self.object.as_ptr()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uplink_config_is_in_network_order() {
        let cfg = HookConfig::new(HookMode::Uplink {
            node_ip: Ipv4Addr::new(10, 100, 0, 11),
            node_ip6: Some("fd00:100::11".parse().unwrap()),
            vxlan_port: Some(8472),
            ipip: false,
            pod_cidr: Ipv4Prefix::new(Ipv4Addr::new(10, 244, 1, 7), 24),
            pod_cidr6: Ipv6Prefix::new("fd00:10:244:1::7".parse().unwrap(), 64),
            nat: true,
        });
        assert_eq!(cfg.mode, 1);
        assert_eq!(cfg.node_ip.to_ne_bytes(), [10, 100, 0, 11]);
        assert_eq!(cfg.pod_net.to_ne_bytes(), [10, 244, 1, 0]);
        assert_eq!(cfg.pod_mask.to_ne_bytes(), [255, 255, 255, 0]);
        assert_eq!(cfg.vxlan_port.to_ne_bytes(), 8472u16.to_be_bytes());
        assert_eq!(cfg.redirect_ipip, 0);
        assert_eq!((cfg.nat_lo, cfg.nat_hi), (61000, 65535), "host order, as the program compares");
        let ip6: Vec<u8> = cfg.node_ip6.iter().flat_map(|w| w.to_ne_bytes()).collect();
        assert_eq!(ip6, "fd00:100::11".parse::<Ipv6Addr>().unwrap().octets());
        assert_eq!((cfg.pod_net6, cfg.pod_mask6), (words6("fd00:10:244:1::".parse().unwrap()), words6("ffff:ffff:ffff:ffff::".parse().unwrap())));
        assert_eq!(std::mem::size_of::<HookConfig>(), 72, "the C struct's size");
    }

    #[test]
    fn pod_config_redirects_everything() {
        let cfg = HookConfig::new(HookMode::Pod);
        assert_eq!(cfg.mode, 0);
    }

    #[test]
    fn unknown_interface_is_named_in_the_error() {
        let err = ifindex("tw-no-such-if0").unwrap_err();
        assert!(err.to_string().contains("tw-no-such-if0"), "{err}");
    }
}

//! The only `unsafe` in twill-cni: entering a network namespace (setns(2)) and the
//! SIOCETHTOOL ioctl (netdevice(7), linux/ethtool.h). Each function is a safe wrapper
//! whose arguments make the system call sound; callers build the ethtool command
//! bytes (see `ethtool.rs`).
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

/// Runs `f` on a new thread that first joins the network namespace `netns`
/// (an open `/proc/PID/ns/net` or bind-mounted file). Netlink and ioctl sockets that
/// `f` opens live in that namespace. The thread ends with `f`, so no other code ever
/// runs in the pod's namespace by accident.
pub fn in_netns<T: Send>(netns: &File, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns(2) takes a file descriptor and a namespace type. The fd is
            // borrowed from `netns`, open for the whole call. CLONE_NEWNET changes only
            // the calling thread's network namespace, and this thread runs nothing but
            // `f` before it exits.
            let rc = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// An AF_INET datagram socket: the handle SIOCETHTOOL is issued on (in the
/// namespace of the calling thread).
pub fn ioctl_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant, valid arguments; the returned descriptor is
    // checked and then owned by exactly one OwnedFd.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh, valid descriptor nobody else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Issues SIOCETHTOOL on `ifname` with `cmd` as the ethtool command buffer (it starts
/// with the u32 command number; the kernel reads and writes it in place). Returns the
/// ioctl's non-negative return value (ETHTOOL_SFEATURES reports flags there).
pub fn ethtool(sock: &OwnedFd, ifname: &str, cmd: &mut [u32]) -> io::Result<i32> {
    let name = ifname.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {ifname:?}"),
        ));
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = cmd.as_mut_ptr().cast();
    // SAFETY: `ifr` is a valid ifreq with a NUL-terminated name (zeroed, name shorter
    // than IFNAMSIZ) whose ifru_data points at `cmd`, which outlives the call. The
    // kernel reads/writes at most the size the command in `cmd` declares; every caller
    // in ethtool.rs sizes `cmd` from the same counts it writes into the header.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL as _, &mut ifr) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

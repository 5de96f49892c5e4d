//! An AF_XDP port: one socket bound to (interface, queue) on the node's shared UMEM, with
//! its own fill and completion rings (XDP_SHARED_UMEM, kernel ≥ 5.10), owned by one worker.
//!
//! Sockets are created by the control thread (binding takes the UMEM's lock and system
//! calls) and handed to the worker that will own them; from then on only that worker
//! touches the rings.

use std::os::fd::{AsRawFd, RawFd};

use xsk_rs::{
    CompQueue, FillQueue, RxQueue, Socket, TxQueue, Umem,
    config::{BindFlags, Interface, LibxdpFlags, QueueSize, SocketConfig},
};

use crate::{Error, snapshot::PortId};

/// Descriptor ring sizes of every socket. A worker that the kernel holds off its core for
/// a while (another thread's turn, kernel work that does not preempt) loses what arrives
/// beyond its fill ring: 8,192 frames cover 30 ms at 270 kpps, where 2,048 covered 7.5 ms
/// and lost 0.04–0.4 % of a 300 kpps stream on the lab's two-core machine (docs/perf.md,
/// "Ring depth").
pub const RING_SIZE: u32 = 8192;

/// How sockets bind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyMode {
    /// Try zero-copy, fall back to copy mode when the driver refuses (veth always does).
    Auto,
    /// Copy mode only.
    Copy,
    /// Zero-copy only; fail if the driver cannot.
    ZeroCopy,
}

/// An AF_XDP socket and its four rings.
#[derive(Debug)]
pub struct Port {
    pub id: PortId,
    pub ifname: String,
    pub queue: u32,
    pub tx: TxQueue,
    pub rx: RxQueue,
    pub fill: FillQueue,
    pub comp: CompQueue,
    pub zero_copy: bool,
    /// Bound with XDP_USE_SG: a frame larger than a UMEM chunk comes and goes as a chain of
    /// descriptors (XDP_PKT_CONTD; Linux ≥ 6.6).
    pub multi_buffer: bool,
}

fn config(bind: BindFlags) -> SocketConfig {
    let ring = QueueSize::new(RING_SIZE).expect("RING_SIZE is a power of two");
    SocketConfig::builder()
        .rx_queue_size(ring)
        .tx_queue_size(ring)
        // twill loads its own XDP program (xdp_hook.rs); libxdp must not load its default one.
        .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
        .bind_flags(bind | BindFlags::XDP_USE_NEED_WAKEUP)
        .build()
}

/// The bind flags to try, in order, for `mode`: each copy mode with multi-buffer first,
/// then without (kernels before 6.6, zero-copy drivers without it).
pub fn bind_attempts(mode: CopyMode) -> Vec<BindFlags> {
    let modes: &[BindFlags] = match mode {
        CopyMode::Auto => &[BindFlags::XDP_ZEROCOPY, BindFlags::XDP_COPY],
        CopyMode::Copy => &[BindFlags::XDP_COPY],
        CopyMode::ZeroCopy => &[BindFlags::XDP_ZEROCOPY],
    };
    modes.iter().flat_map(|&m| [m | BindFlags::XDP_USE_SG, m]).collect()
}

impl Port {
    /// Binds a socket on `ifname` queue `queue` to `umem`.
    pub fn bind(id: PortId, umem: &Umem, ifname: &str, queue: u32, mode: CopyMode) -> Result<Port, Error> {
        let iface: Interface = ifname.parse().map_err(|_| Error::NoSuchInterface(ifname.to_string()))?;
        let mut last_err = None;
        for flags in bind_attempts(mode) {
            // SAFETY: every socket of this UMEM is bound to a distinct (interface, queue)
            // pair (the dataplane keeps one port per pair) and INHIBIT_PROG_LOAD is set, which
            // is what Socket::new requires for a shared UMEM.
            match unsafe { Socket::new(config(flags), umem, &iface, queue) } {
                Ok((tx, rx, Some((fill, comp)))) => {
                    let zero_copy = flags.contains(BindFlags::XDP_ZEROCOPY);
                    let multi_buffer = flags.contains(BindFlags::XDP_USE_SG);
                    return Ok(Port { id, ifname: ifname.to_string(), queue, tx, rx, fill, comp, zero_copy, multi_buffer });
                }
                Ok((_, _, None)) => {
                    return Err(Error::Bind {
                        ifname: ifname.to_string(),
                        queue,
                        reason: "this (interface, queue) is already bound on the node's UMEM".into(),
                    });
                }
                Err(e) => last_err = Some(e.to_string()),
            }
        }
        Err(Error::Bind { ifname: ifname.to_string(), queue, reason: last_err.unwrap_or_default() })
    }

    /// The socket's file descriptor (for the XSKMAP and for poll(2)).
    pub fn fd(&self) -> RawFd {
        self.rx.fd().as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_mode_tries_zero_copy_first_then_copy_each_with_multi_buffer_first() {
        let bits = |m| bind_attempts(m).iter().map(|f| f.bits()).collect::<Vec<_>>();
        let (zc, copy, sg) = (BindFlags::XDP_ZEROCOPY.bits(), BindFlags::XDP_COPY.bits(), BindFlags::XDP_USE_SG.bits());
        assert_eq!(bits(CopyMode::Auto), [zc | sg, zc, copy | sg, copy]);
        assert_eq!(bits(CopyMode::Copy), [copy | sg, copy]);
        assert_eq!(bits(CopyMode::ZeroCopy), [zc | sg, zc]);
    }
}

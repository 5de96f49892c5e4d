//! VXLAN encapsulation and decapsulation per frame: twill's precomputed outer-header
//! template (`VxlanEncap::write`, `vxlan::decap`) beside etherparse building and slicing
//! the same headers. Cases: `vxlan-encap/{twill,etherparse}/{64,1450}`,
//! `vxlan-decap/{twill,etherparse}/{64,1450}` (inner frame bytes), and the same over an
//! IPv6 underlay, `vxlan6-encap/...` and `vxlan6-decap/...` (with the UDP checksum).

use std::{
    hint::black_box,
    net::{Ipv4Addr, Ipv6Addr},
};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use encap::{
    EthernetAddress,
    vxlan::{self, VxlanEncap, VxlanProfile},
    vxlan6::{self, VxlanEncap6},
};
use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};

const SRC_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x11];
const DST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x12];
const SRC_IP: [u8; 4] = [10, 100, 0, 11];
const DST_IP: [u8; 4] = [10, 100, 0, 12];

fn inner_frame(len: usize) -> Vec<u8> {
    let mut f = vec![0u8; len];
    f[12] = 0x08; // IPv4
    f[14] = 0x45;
    f
}

fn vxlan_header(vni: u32) -> [u8; 8] {
    let v = vni.to_be_bytes();
    [0x08, 0, 0, 0, v[1], v[2], v[3], 0]
}

fn encap(c: &mut Criterion) {
    let mut g = c.benchmark_group("vxlan-encap");
    let profile = VxlanProfile::FLANNEL;
    let template = VxlanEncap::new(
        EthernetAddress(SRC_MAC),
        EthernetAddress(DST_MAC),
        Ipv4Addr::from(SRC_IP),
        Ipv4Addr::from(DST_IP),
        profile,
    );
    for size in [64usize, 1450] {
        let inner = inner_frame(size);
        g.throughput(Throughput::Elements(1));
        let mut buf = vec![0u8; 4096];
        g.bench_function(format!("twill/{size}"), |b| {
            b.iter(|| {
                buf[vxlan::OVERHEAD..vxlan::OVERHEAD + size].copy_from_slice(&inner);
                let port = vxlan::flow_src_port(&buf[vxlan::OVERHEAD..vxlan::OVERHEAD + size]);
                template.write(&mut buf[..vxlan::OVERHEAD], size, port).unwrap();
                black_box(&buf);
            })
        });
        let mut out = Vec::with_capacity(4096);
        g.bench_function(format!("etherparse/{size}"), |b| {
            b.iter(|| {
                out.clear();
                let mut payload = Vec::with_capacity(8 + size);
                payload.extend_from_slice(&vxlan_header(profile.vni));
                payload.extend_from_slice(&inner);
                PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
                    .ipv4(SRC_IP, DST_IP, 64)
                    .udp(50000, profile.port)
                    .write(&mut out, &payload)
                    .unwrap();
                black_box(&out);
            })
        });
    }
    g.finish();
}

fn decap(c: &mut Criterion) {
    let mut g = c.benchmark_group("vxlan-decap");
    let profile = VxlanProfile::FLANNEL;
    let template = VxlanEncap::new(
        EthernetAddress(SRC_MAC),
        EthernetAddress(DST_MAC),
        Ipv4Addr::from(SRC_IP),
        Ipv4Addr::from(DST_IP),
        profile,
    );
    for size in [64usize, 1450] {
        let mut frame = vec![0u8; vxlan::OVERHEAD + size];
        frame[vxlan::OVERHEAD..].copy_from_slice(&inner_frame(size));
        template.write(&mut frame[..vxlan::OVERHEAD], size, 50000).unwrap();
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("twill/{size}"), |b| {
            b.iter(|| {
                let d = vxlan::decap(black_box(&frame), Ipv4Addr::from(DST_IP), profile).unwrap();
                black_box(d.inner.len())
            })
        });
        g.bench_function(format!("etherparse/{size}"), |b| {
            b.iter(|| {
                // The same checks twill's decap makes: IPv4 to us, UDP to the port, I flag, VNI.
                let p = SlicedPacket::from_ethernet(black_box(&frame)).unwrap();
                let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else { panic!("not IPv4") };
                assert_eq!(ip.header().destination(), DST_IP);
                let Some(TransportSlice::Udp(udp)) = &p.transport else { panic!("not UDP") };
                assert_eq!(udp.destination_port(), profile.port);
                let v = udp.payload();
                assert!(v[0] == 0x08 && u32::from_be_bytes([0, v[4], v[5], v[6]]) == profile.vni);
                black_box(v.len() - 8)
            })
        });
    }
    g.finish();
}

const SRC_IP6: [u8; 16] = [0xfd, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x11];
const DST_IP6: [u8; 16] = [0xfd, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x12];

fn template6() -> VxlanEncap6 {
    VxlanEncap6::new(EthernetAddress(SRC_MAC), EthernetAddress(DST_MAC), Ipv6Addr::from(SRC_IP6), Ipv6Addr::from(DST_IP6), VxlanProfile::CALICO)
}

/// VXLAN over an IPv6 underlay: the template plus the UDP checksum over the inner frame
/// (which the IPv4 underlay leaves zero), beside etherparse building the same frame (it
/// computes the checksum too).
fn encap6(c: &mut Criterion) {
    let mut g = c.benchmark_group("vxlan6-encap");
    let (profile, template) = (VxlanProfile::CALICO, template6());
    for size in [64usize, 1450] {
        let inner = inner_frame(size);
        g.throughput(Throughput::Elements(1));
        let mut buf = vec![0u8; 4096];
        g.bench_function(format!("twill/{size}"), |b| {
            b.iter(|| {
                buf[vxlan6::OVERHEAD..vxlan6::OVERHEAD + size].copy_from_slice(&inner);
                let port = vxlan::flow_src_port(&buf[vxlan6::OVERHEAD..vxlan6::OVERHEAD + size]);
                template.write(&mut buf, size, port, u32::from(port)).unwrap();
                black_box(&buf);
            })
        });
        let mut out = Vec::with_capacity(4096);
        g.bench_function(format!("etherparse/{size}"), |b| {
            b.iter(|| {
                out.clear();
                let mut payload = Vec::with_capacity(8 + size);
                payload.extend_from_slice(&vxlan_header(profile.vni));
                payload.extend_from_slice(&inner);
                PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
                    .ipv6(SRC_IP6, DST_IP6, 64)
                    .udp(50000, profile.port)
                    .write(&mut out, &payload)
                    .unwrap();
                black_box(&out);
            })
        });
    }
    g.finish();
}

fn decap6(c: &mut Criterion) {
    let mut g = c.benchmark_group("vxlan6-decap");
    let (profile, template) = (VxlanProfile::CALICO, template6());
    for size in [64usize, 1450] {
        let mut frame = vec![0u8; vxlan6::OVERHEAD + size];
        frame[vxlan6::OVERHEAD..].copy_from_slice(&inner_frame(size));
        template.write(&mut frame, size, 50000, 1).unwrap();
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("twill/{size}"), |b| {
            b.iter(|| {
                let d = vxlan6::decap6(black_box(&frame), Ipv6Addr::from(DST_IP6), profile).unwrap();
                black_box(d.inner.len())
            })
        });
        g.bench_function(format!("etherparse/{size}"), |b| {
            b.iter(|| {
                let p = SlicedPacket::from_ethernet(black_box(&frame)).unwrap();
                let Some(etherparse::NetSlice::Ipv6(ip)) = &p.net else { panic!("not IPv6") };
                assert_eq!(ip.header().destination(), DST_IP6);
                let Some(TransportSlice::Udp(udp)) = &p.transport else { panic!("not UDP") };
                assert_eq!(udp.destination_port(), profile.port);
                let v = udp.payload();
                assert!(v[0] == 0x08 && u32::from_be_bytes([0, v[4], v[5], v[6]]) == profile.vni);
                black_box(v.len() - 8)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, encap, decap, encap6, decap6);
criterion_main!(benches);

//! Interop check against Wireshark's dissectors: frames built with `VxlanEncap` and
//! `IpipEncap` (inner packets built with this crate's `Repr` types) are written to a
//! classic pcap file and decoded by `tshark`, and every header field tshark reports is
//! compared with what was meant. Requires `tshark` (`apt-get install tshark`); fails, never skips, without it.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::Command;

use encap::ethernet::{EthernetFrame, EthernetRepr};
use encap::icmpv4::{Icmpv4Packet, Icmpv4Repr};
use encap::ipv4::{Ipv4Packet, Ipv4Repr};
use encap::tcp::{TcpFlags, TcpPacket, TcpRepr};
use encap::udp::{UdpPacket, UdpRepr};
use encap::ipip::{self, IpipEncap};
use encap::vxlan::{OVERHEAD, VxlanEncap, VxlanProfile, flow_src_port};
use encap::vxlan6::{self, VxlanEncap6};
use encap::{EtherType, EthernetAddress, IpProtocol};

const NODE_A_MAC: &str = "02:00:0a:63:00:01";
const NODE_B_MAC: &str = "02:00:0a:63:00:02";
const VTEP_A_MAC: &str = "0e:aa:00:00:00:01";
const VTEP_B_MAC: &str = "0e:bb:00:00:00:02";
const NODE_A: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const NODE_B: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const POD_A: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 5);
const POD_B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 7);

/// Every field the test reads, in the order given to `tshark -e`.
const FIELDS: &[&str] = &[
    "eth.src",
    "eth.dst",
    "eth.type",
    "ip.version",
    "ip.hdr_len",
    "ip.len",
    "ip.flags.df",
    "ip.flags.mf",
    "ip.ttl",
    "ip.proto",
    "ip.checksum.status",
    "ip.src",
    "ip.dst",
    "udp.srcport",
    "udp.dstport",
    "udp.length",
    "udp.checksum",
    "udp.checksum.status",
    "vxlan.flags",
    "vxlan.flag_i",
    "vxlan.flags_reserved",
    "vxlan.vni",
    "vxlan.reserved8",
    "tcp.srcport",
    "tcp.dstport",
    "tcp.seq_raw",
    "tcp.flags",
    "tcp.hdr_len",
    "tcp.options.mss_val",
    "tcp.checksum.status",
    "icmp.type",
    "icmp.code",
    "icmp.ident",
    "icmp.seq",
    "icmp.checksum.status",
    "data.data",
    "_ws.expert",
];

/// Inner L4 payload of each test frame.
enum Inner {
    Udp {
        src_port: u16,
        dst_port: u16,
        payload: &'static [u8],
    },
    Tcp {
        src_port: u16,
        dst_port: u16,
        seq: u32,
    },
    IcmpEcho {
        ident: u16,
        seq_no: u16,
        data: &'static [u8],
    },
}

/// An inner Ethernet frame from pod A's VTEP to pod B's, checksums filled.
fn inner_frame(inner: &Inner) -> Vec<u8> {
    let (protocol, l4_len) = match inner {
        Inner::Udp { payload, .. } => (IpProtocol::Udp, 8 + payload.len()),
        Inner::Tcp { .. } => (IpProtocol::Tcp, 24),
        Inner::IcmpEcho { data, .. } => (IpProtocol::Icmp, 8 + data.len()),
    };
    let ip = Ipv4Repr {
        src_addr: POD_A,
        dst_addr: POD_B,
        protocol,
        payload_len: l4_len,
        ttl: 63,
        ident: 0x4242,
        dont_frag: true,
        dscp: 0,
        ecn: 0,
    };
    let mut frame = vec![0u8; 14 + 20 + l4_len];
    EthernetRepr {
        src_addr: mac(VTEP_A_MAC),
        dst_addr: mac(VTEP_B_MAC),
        ethertype: EtherType::Ipv4,
    }
    .emit(&mut EthernetFrame::new_unchecked(&mut frame[..]));
    let mut ip_packet = Ipv4Packet::new_unchecked(&mut frame[14..]);
    ip.emit(&mut ip_packet);
    let l4 = ip_packet.payload_mut();
    match *inner {
        Inner::Udp {
            src_port,
            dst_port,
            payload,
        } => UdpRepr {
            src_port,
            dst_port,
            payload,
        }
        .emit(&mut UdpPacket::new_unchecked(l4), POD_A, POD_B),
        Inner::Tcp {
            src_port,
            dst_port,
            seq,
        } => TcpRepr {
            src_port,
            dst_port,
            seq_number: seq,
            ack_number: 0,
            flags: TcpFlags::SYN,
            window_len: 64240,
            urgent_at: 0,
            options: &[0x02, 0x04, 0x05, 0x82], // MSS 1410
            payload: &[],
        }
        .emit(&mut TcpPacket::new_unchecked(l4), POD_A, POD_B),
        Inner::IcmpEcho {
            ident,
            seq_no,
            data,
        } => Icmpv4Repr::EchoRequest {
            ident,
            seq_no,
            data,
        }
        .emit(&mut Icmpv4Packet::new_unchecked(l4)),
    }
    frame
}

fn mac(text: &str) -> EthernetAddress {
    text.parse().unwrap()
}

/// Classic pcap (not pcapng): 24-byte global header, then a 16-byte header per record.
fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes()); // magic, microsecond timestamps
    out.extend_from_slice(&2u16.to_le_bytes()); // version 2.4
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&0i32.to_le_bytes()); // thiszone
    out.extend_from_slice(&0u32.to_le_bytes()); // sigfigs
    out.extend_from_slice(&65535u32.to_le_bytes()); // snaplen
    out.extend_from_slice(&1u32.to_le_bytes()); // LINKTYPE_ETHERNET
    for (i, frame) in frames.iter().enumerate() {
        out.extend_from_slice(&(i as u32).to_le_bytes()); // seconds
        out.extend_from_slice(&0u32.to_le_bytes()); // microseconds
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes()); // captured length
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes()); // original length
        out.extend_from_slice(frame);
    }
    std::fs::write(path, out).unwrap();
}

/// Runs tshark over the file; one map field → comma-joined occurrences per frame.
fn tshark_fields(path: &Path) -> Vec<HashMap<&'static str, String>> {
    tshark_fields_of(path, FIELDS)
}

/// [`tshark_fields`] for the fields `fields`.
fn tshark_fields_of(path: &Path, fields: &[&'static str]) -> Vec<HashMap<&'static str, String>> {
    let mut args: Vec<String> = [
        "-r",
        path.to_str().unwrap(),
        "-d",
        "udp.port==8472,vxlan",
        "-o",
        "ip.check_checksum:TRUE",
        "-o",
        "udp.check_checksum:TRUE",
        "-o",
        "tcp.check_checksum:TRUE",
        "-o",
        "tcp.relative_sequence_numbers:FALSE",
        "-T",
        "fields",
        "-E",
        "separator=/t",
        "-E",
        "occurrence=a",
        "-E",
        "aggregator=,",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for field in fields {
        args.push("-e".into());
        args.push((*field).into());
    }
    let output = match Command::new("tshark").args(&args).output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "tshark is not installed; this test needs it: \
             DEBIAN_FRONTEND=noninteractive apt-get install -y tshark"
        ),
        Err(e) => panic!("could not run tshark: {e}"),
    };
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert!(
        output.status.success(),
        "tshark failed ({}): {}\n{stdout}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .lines()
        .map(|line| {
            let values: Vec<&str> = line.split('\t').collect();
            assert_eq!(
                values.len(),
                fields.len(),
                "unexpected tshark line: {line:?}"
            );
            fields
                .iter()
                .copied()
                .zip(values.into_iter().map(str::to_owned))
                .collect()
        })
        .collect()
}

/// A scratch directory of the test `name` (tests run in parallel).
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("twill-encap-tshark-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

struct Case {
    inner: Inner,
    profile: VxlanProfile,
}

#[test]
fn tshark_decodes_every_field_of_our_vxlan_frames() {
    let cases = [
        Case {
            inner: Inner::Udp {
                src_port: 40000,
                dst_port: 31000,
                payload: b"twill udp",
            },
            profile: VxlanProfile::FLANNEL,
        },
        Case {
            inner: Inner::Tcp {
                src_port: 40001,
                dst_port: 8080,
                seq: 0x9db3_3208,
            },
            profile: VxlanProfile::FLANNEL,
        },
        Case {
            inner: Inner::IcmpEcho {
                ident: 0x1234,
                seq_no: 7,
                data: b"0123456789abcdef",
            },
            profile: VxlanProfile::FLANNEL,
        },
        Case {
            inner: Inner::Udp {
                src_port: 5000,
                dst_port: 5001,
                payload: b"calico",
            },
            profile: VxlanProfile::CALICO,
        },
    ];

    let mut frames = Vec::new();
    for case in &cases {
        let inner = inner_frame(&case.inner);
        let encap = VxlanEncap::new(
            mac(NODE_A_MAC),
            mac(NODE_B_MAC),
            NODE_A,
            NODE_B,
            case.profile,
        );
        let mut frame = vec![0u8; OVERHEAD + inner.len()];
        frame[OVERHEAD..].copy_from_slice(&inner);
        encap
            .write(&mut frame, inner.len(), flow_src_port(&inner))
            .unwrap();
        frames.push(frame);
    }

    let dir = temp_dir("vxlan");
    let path = dir.join("vxlan.pcap");
    write_pcap(&path, &frames);
    let decoded = tshark_fields(&path);
    assert_eq!(
        decoded.len(),
        cases.len(),
        "tshark decoded {} frames",
        decoded.len()
    );

    for (i, ((case, frame), fields)) in cases.iter().zip(&frames).zip(&decoded).enumerate() {
        let inner = &frame[OVERHEAD..];
        let inner_ip_len = inner.len() - 14;
        let outer_port = flow_src_port(inner);
        let (proto, udp_inner): (u8, Option<(u16, u16, usize)>) = match case.inner {
            Inner::Udp {
                src_port,
                dst_port,
                payload,
            } => (17, Some((src_port, dst_port, 8 + payload.len()))),
            Inner::Tcp { .. } => (6, None),
            Inner::IcmpEcho { .. } => (1, None),
        };
        let with_inner_udp = |outer: String, inner: Option<String>| match inner {
            Some(inner) => format!("{outer},{inner}"),
            None => outer,
        };

        let mut expected: Vec<(&str, String)> = vec![
            ("eth.src", format!("{NODE_A_MAC},{VTEP_A_MAC}")),
            ("eth.dst", format!("{NODE_B_MAC},{VTEP_B_MAC}")),
            ("eth.type", "0x0800,0x0800".into()),
            ("ip.version", "4,4".into()),
            ("ip.hdr_len", "20,20".into()),
            ("ip.len", format!("{},{inner_ip_len}", 36 + inner.len())),
            ("ip.flags.df", "1,1".into()),
            ("ip.flags.mf", "0,0".into()),
            ("ip.ttl", "64,63".into()),
            ("ip.proto", format!("17,{proto}")),
            ("ip.checksum.status", "1,1".into()), // 1 = good
            ("ip.src", format!("{NODE_A},{POD_A}")),
            ("ip.dst", format!("{NODE_B},{POD_B}")),
            (
                "udp.srcport",
                with_inner_udp(outer_port.to_string(), udp_inner.map(|u| u.0.to_string())),
            ),
            (
                "udp.dstport",
                with_inner_udp(
                    case.profile.port.to_string(),
                    udp_inner.map(|u| u.1.to_string()),
                ),
            ),
            (
                "udp.length",
                with_inner_udp(
                    (16 + inner.len()).to_string(),
                    udp_inner.map(|u| u.2.to_string()),
                ),
            ),
            // 3 = not present (zero checksum); the inner datagram's is good (1).
            (
                "udp.checksum.status",
                with_inner_udp("3".into(), udp_inner.map(|_| "1".into())),
            ),
            ("vxlan.flags", "0x0800".into()),
            ("vxlan.flag_i", "1".into()),
            ("vxlan.flags_reserved", "0x0000".into()),
            ("vxlan.vni", case.profile.vni.to_string()),
            ("vxlan.reserved8", "0".into()),
        ];
        let outer_udp_checksum = fields["udp.checksum"].split(',').next().unwrap().to_owned();
        assert_eq!(
            outer_udp_checksum, "0x0000",
            "frame {i}: outer UDP checksum"
        );
        match case.inner {
            Inner::Udp { payload, .. } => {
                expected.push((
                    "data.data",
                    payload.iter().map(|b| format!("{b:02x}")).collect(),
                ));
            }
            Inner::Tcp {
                src_port,
                dst_port,
                seq,
            } => expected.extend([
                ("tcp.srcport", src_port.to_string()),
                ("tcp.dstport", dst_port.to_string()),
                ("tcp.seq_raw", seq.to_string()),
                ("tcp.flags", "0x0002".into()),
                ("tcp.hdr_len", "24".into()),
                ("tcp.options.mss_val", "1410".into()),
                ("tcp.checksum.status", "1".into()),
            ]),
            Inner::IcmpEcho {
                ident,
                seq_no,
                data,
            } => expected.extend([
                ("icmp.type", "8".into()),
                ("icmp.code", "0".into()),
                ("icmp.ident", ident.to_string()),
                ("icmp.seq", seq_no.to_string()),
                ("icmp.checksum.status", "1".into()),
                (
                    "data.data",
                    data.iter().map(|b| format!("{b:02x}")).collect(),
                ),
            ]),
        }
        for (field, want) in &expected {
            assert_eq!(&fields[field], want, "frame {i}: field {field}");
        }
        // Fields of protocols the frame does not carry must be absent.
        for field in FIELDS
            .iter()
            .filter(|f| f.starts_with("tcp.") || f.starts_with("icmp."))
        {
            if !expected.iter().any(|(f, _)| f == field) {
                assert_eq!(fields[field], "", "frame {i}: unexpected {field}");
            }
        }
        let expert = &fields["_ws.expert"];
        assert!(
            !expert.contains("Error")
                && !expert.contains("Warning")
                && !expert.contains("Malformed"),
            "frame {i}: tshark complains: {expert}"
        );
    }

    std::fs::remove_dir_all(&dir).unwrap();
}

/// IP-in-IP as Calico's `tunl0` sends it: node Ethernet, outer IPv4 protocol 4 with the
/// inner TOS, then the pod's IPv4 packet (no inner Ethernet).
#[test]
fn tshark_decodes_every_field_of_our_ipip_frames() {
    let inners = [
        Inner::Udp { src_port: 40000, dst_port: 31000, payload: b"twill ipip" },
        Inner::Tcp { src_port: 40001, dst_port: 8080, seq: 0x9db3_3208 },
        Inner::IcmpEcho { ident: 0x4321, seq_no: 3, data: b"fedcba9876543210" },
    ];
    let mut frames = Vec::new();
    for inner in &inners {
        let pkt = inner_frame(inner)[14..].to_vec();
        let mut frame = vec![0u8; ipip::HEADER_LEN + pkt.len()];
        frame[ipip::HEADER_LEN..].copy_from_slice(&pkt);
        IpipEncap::new(mac(NODE_A_MAC), mac(NODE_B_MAC), NODE_A, NODE_B).write(&mut frame, pkt.len(), pkt[1]).unwrap();
        frames.push(frame);
    }
    let dir = temp_dir("ipip");
    let path = dir.join("ipip.pcap");
    write_pcap(&path, &frames);
    let decoded = tshark_fields(&path);
    assert_eq!(decoded.len(), inners.len());
    for (i, ((inner, frame), fields)) in inners.iter().zip(&frames).zip(&decoded).enumerate() {
        let inner_ip_len = frame.len() - ipip::HEADER_LEN;
        let proto = match inner {
            Inner::Udp { .. } => 17,
            Inner::Tcp { .. } => 6,
            Inner::IcmpEcho { .. } => 1,
        };
        let expected: Vec<(&str, String)> = vec![
            ("eth.src", NODE_A_MAC.into()),
            ("eth.dst", NODE_B_MAC.into()),
            ("eth.type", "0x0800".into()),
            ("ip.version", "4,4".into()),
            ("ip.hdr_len", "20,20".into()),
            ("ip.len", format!("{},{inner_ip_len}", 20 + inner_ip_len)),
            ("ip.flags.df", "1,1".into()),
            ("ip.flags.mf", "0,0".into()),
            ("ip.ttl", "64,63".into()),
            ("ip.proto", format!("4,{proto}")),
            ("ip.checksum.status", "1,1".into()),
            ("ip.src", format!("{NODE_A},{POD_A}")),
            ("ip.dst", format!("{NODE_B},{POD_B}")),
            ("vxlan.vni", String::new()),
        ];
        for (field, want) in &expected {
            assert_eq!(&fields[field], want, "IP-in-IP frame {i}: field {field}");
        }
        match inner {
            Inner::Udp { src_port, dst_port, payload } => {
                assert_eq!(fields["udp.srcport"], src_port.to_string());
                assert_eq!(fields["udp.dstport"], dst_port.to_string());
                assert_eq!(fields["udp.checksum.status"], "1", "the pod's own checksum, untouched");
                assert_eq!(fields["data.data"], payload.iter().map(|b| format!("{b:02x}")).collect::<String>());
            }
            Inner::Tcp { src_port, seq, .. } => {
                assert_eq!(fields["tcp.srcport"], src_port.to_string());
                assert_eq!(fields["tcp.seq_raw"], seq.to_string());
                assert_eq!(fields["tcp.checksum.status"], "1");
            }
            Inner::IcmpEcho { ident, seq_no, .. } => {
                assert_eq!((fields["icmp.type"].as_str(), fields["icmp.ident"].clone()), ("8", ident.to_string()));
                assert_eq!(fields["icmp.seq"], seq_no.to_string());
                assert_eq!(fields["icmp.checksum.status"], "1");
            }
        }
        let expert = &fields["_ws.expert"];
        assert!(!expert.contains("Error") && !expert.contains("Warning") && !expert.contains("Malformed"), "frame {i}: tshark complains: {expert}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// VXLAN over an IPv6 underlay (Calico's `vxlan-v6.calico`): tshark reads the outer IPv6
/// and UDP headers as meant, finds the outer UDP checksum good (a Linux peer drops a wrong
/// or zero one), and decodes the inner frame behind the VXLAN header.
#[test]
fn tshark_decodes_vxlan_over_an_ipv6_underlay() {
    const FIELDS6: &[&str] = &[
        "eth.src", "eth.dst", "eth.type", "ipv6.version", "ipv6.tclass", "ipv6.flow", "ipv6.plen", "ipv6.nxt", "ipv6.hlim", "ipv6.src", "ipv6.dst",
        "udp.srcport", "udp.dstport", "udp.length", "udp.checksum.status", "vxlan.flags", "vxlan.vni", "ip.src", "ip.dst", "data.data", "_ws.expert",
    ];
    let (a, b) = ("fd00:100::11".parse::<Ipv6Addr>().unwrap(), "fd00:100::12".parse::<Ipv6Addr>().unwrap());
    let inners = [
        inner_frame(&Inner::Udp { src_port: 40000, dst_port: 31000, payload: b"twill over ipv6" }),
        inner_frame(&Inner::IcmpEcho { ident: 9, seq_no: 1, data: b"odd length data" }),
    ];
    let frames: Vec<Vec<u8>> = inners
        .iter()
        .enumerate()
        .map(|(i, inner)| {
            let mut frame = vec![0u8; vxlan6::OVERHEAD + inner.len()];
            frame[vxlan6::OVERHEAD..].copy_from_slice(inner);
            let port = flow_src_port(inner);
            VxlanEncap6::new(mac(NODE_A_MAC), mac(NODE_B_MAC), a, b, VxlanProfile::CALICO).write(&mut frame, inner.len(), port, 0x12345 + i as u32).unwrap();
            frame
        })
        .collect();
    let dir = temp_dir("vxlan6");
    let path = dir.join("vxlan6.pcap");
    write_pcap(&path, &frames);
    let decoded = tshark_fields_of(&path, FIELDS6);
    assert_eq!(decoded.len(), frames.len());
    for (i, (inner, fields)) in inners.iter().zip(&decoded).enumerate() {
        let outer_udp = |inner_value: Option<String>, outer: String| match (inner.get(23), inner_value) {
            (Some(17), Some(v)) => format!("{outer},{v}"),
            _ => outer,
        };
        let expected: Vec<(&str, String)> = vec![
            ("eth.src", format!("{NODE_A_MAC},{VTEP_A_MAC}")),
            ("eth.dst", format!("{NODE_B_MAC},{VTEP_B_MAC}")),
            ("eth.type", "0x86dd,0x0800".into()),
            ("ipv6.version", "6".into()),
            ("ipv6.tclass", "0x00000000".into()),
            ("ipv6.flow", format!("{:#08x}", 0x12345 + i)),
            ("ipv6.plen", (16 + inner.len()).to_string()),
            ("ipv6.nxt", "17".into()),
            ("ipv6.hlim", "64".into()),
            ("ipv6.src", a.to_string()),
            ("ipv6.dst", b.to_string()),
            ("udp.srcport", outer_udp(Some("40000".into()), flow_src_port(inner).to_string())),
            ("udp.dstport", outer_udp(Some("31000".into()), "4789".into())),
            ("udp.length", outer_udp(Some("23".into()), (16 + inner.len()).to_string())),
            // 1 = good, for the outer checksum and an inner UDP one.
            ("udp.checksum.status", outer_udp(Some("1".into()), "1".into())),
            ("vxlan.flags", "0x0800".into()),
            ("vxlan.vni", "4096".into()),
            ("ip.src", POD_A.to_string()),
            ("ip.dst", POD_B.to_string()),
            ("_ws.expert", String::new()),
        ];
        for (field, want) in expected {
            assert_eq!(fields[field], want, "frame {i}: {field}");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

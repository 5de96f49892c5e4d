// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* twill's XDP hook.
 *
 * One copy of this program is attached to every interface the forwarder serves. Its
 * `twill_cfg` map says what the interface is:
 *
 *   MODE_POD     a pod's host-side veth: every frame goes to the AF_XDP socket.
 *   MODE_UPLINK  the node's underlay NIC: only overlay traffic addressed to this node
 *                (IPv4 to node_ip, UDP to vxlan_port or IP-in-IP; IPv4 to the pod CIDR in
 *                direct mode) and replies to pods' NAT'd connections (TCP / UDP to
 *                node_ip at a port in nat_lo..nat_hi, ICMP echo replies with such an
 *                identifier, ICMP errors quoting a packet from such a port), IPv6 UDP
 *                to node_ip6 at vxlan_port (VXLAN over an IPv6 underlay) and IPv6 to the
 *                IPv6 pod CIDR (direct mode) go to the socket. Everything else - ARP, Neighbor Discovery, SSH, etcd, BGP,
 *                the kubelet - is passed to the kernel untouched.
 *
 * Frames go to the socket bound to the receiving queue (`xsks[rx_queue_index]`); when no
 * socket is bound there the frame goes to the kernel (XDP_PASS fallback of
 * bpf_redirect_map), so an interface is never black-holed while sockets come and go.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MODE_POD 0
#define MODE_UPLINK 1
#define ICMP_ECHOREPLY 0 /* linux/icmp.h would pull in libc headers */
#define ICMP_ECHO 8

struct twill_cfg {
	__u32 mode;
	__u32 node_ip;       /* network byte order */
	__u32 pod_net;       /* network byte order; direct mode only, 0 = off */
	__u32 pod_mask;      /* network byte order */
	__u16 vxlan_port;    /* network byte order; 0 = no VXLAN */
	__u16 redirect_ipip; /* non-zero: IPv4 protocol 4 to node_ip goes to the socket */
	__u16 nat_lo;        /* host byte order; 0 = no NAT */
	__u16 nat_hi;
	__u32 node_ip6[4];   /* network byte order; all zero = no IPv6 underlay */
	__u32 pod_net6[4];   /* network byte order; direct mode only */
	__u32 pod_mask6[4];  /* network byte order; all zero = off */
};

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct twill_cfg);
} twill_cfg SEC(".maps");

static __always_inline int to_socket(struct xdp_md *ctx)
{
	return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS);
}

/* The port (TCP, UDP) or echo identifier (ICMP echo) an L4 header `l4` of protocol
 * `proto` carries at `port_at` (destination: 2 for TCP/UDP; source: 0), or 0. */
static __always_inline __u16 l4_port(__u8 proto, __u8 *l4, int port_at, void *data_end)
{
	if ((void *)(l4 + 8) > data_end)
		return 0;
	if (proto == IPPROTO_TCP || proto == IPPROTO_UDP)
		return ((__u16)l4[port_at] << 8) | l4[port_at + 1];
	if (proto == IPPROTO_ICMP && (l4[0] == ICMP_ECHOREPLY || l4[0] == ICMP_ECHO))
		return ((__u16)l4[4] << 8) | l4[5];
	return 0;
}

/* Whether the IPv4 packet `ip` (to node_ip) belongs to a NAT'd connection: TCP or UDP to
 * a NAT port, an ICMP echo reply with a NAT identifier, or an ICMP error (unreachable,
 * time exceeded, parameter problem) quoting a packet sent from a NAT port; never a later
 * fragment. */
static __always_inline int nat_reply(struct iphdr *ip, void *data_end, struct twill_cfg *cfg)
{
	if (ip->frag_off & bpf_htons(0x1fff))
		return 0;
	__u8 *l4 = (void *)ip + ip->ihl * 4;
	if ((void *)(l4 + 8) > data_end)
		return 0;
	__u16 port = 0;
	if (ip->protocol == IPPROTO_ICMP && (l4[0] == 3 || l4[0] == 11 || l4[0] == 12)) {
		struct iphdr *q = (void *)(l4 + 8);
		if ((void *)(q + 1) > data_end || q->ihl < 5)
			return 0;
		port = l4_port(q->protocol, (__u8 *)q + q->ihl * 4, 0, data_end);
	} else if (ip->protocol == IPPROTO_ICMP) {
		port = l4[0] == ICMP_ECHOREPLY ? l4_port(ip->protocol, l4, 2, data_end) : 0;
	} else {
		port = l4_port(ip->protocol, l4, 2, data_end);
	}
	return port && port >= cfg->nat_lo && port <= cfg->nat_hi;
}

/* An IPv6 packet `ip6` on the uplink: to the IPv6 pod subnet (direct routing), or VXLAN
 * to node_ip6 (UDP right behind the fixed header, to vxlan_port), goes to the socket; the
 * rest - Neighbor Discovery above all - to the kernel. */
static __always_inline int ipv6(struct xdp_md *ctx, struct ipv6hdr *ip6, void *data_end, struct twill_cfg *cfg)
{
	if ((void *)(ip6 + 1) > data_end)
		return XDP_PASS;
	__u32 *dst = ip6->daddr.in6_u.u6_addr32;
	if ((cfg->pod_mask6[0] | cfg->pod_mask6[1] | cfg->pod_mask6[2] | cfg->pod_mask6[3]) &&
	    (dst[0] & cfg->pod_mask6[0]) == cfg->pod_net6[0] && (dst[1] & cfg->pod_mask6[1]) == cfg->pod_net6[1] &&
	    (dst[2] & cfg->pod_mask6[2]) == cfg->pod_net6[2] && (dst[3] & cfg->pod_mask6[3]) == cfg->pod_net6[3])
		return to_socket(ctx);
	if (!cfg->vxlan_port || ip6->nexthdr != IPPROTO_UDP)
		return XDP_PASS;
	if (!(cfg->node_ip6[0] | cfg->node_ip6[1] | cfg->node_ip6[2] | cfg->node_ip6[3]))
		return XDP_PASS;
	if (dst[0] != cfg->node_ip6[0] || dst[1] != cfg->node_ip6[1] || dst[2] != cfg->node_ip6[2] || dst[3] != cfg->node_ip6[3])
		return XDP_PASS;
	struct udphdr *udp = (void *)(ip6 + 1);
	if ((void *)(udp + 1) > data_end || udp->dest != cfg->vxlan_port)
		return XDP_PASS;
	return to_socket(ctx);
}

/* "xdp.frags": the program takes multi-buffer frames (jumbo frames on veth and in generic
 * mode); it reads only the headers, in the first buffer. */
SEC("xdp.frags")
int twill_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct twill_cfg *cfg = bpf_map_lookup_elem(&twill_cfg, &zero);

	if (!cfg)
		return XDP_PASS;
	if (cfg->mode == MODE_POD)
		return to_socket(ctx);

	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;
	if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		return ipv6(ctx, (void *)(eth + 1), data_end, cfg);
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || ip->version != 4 || ip->ihl < 5)
		return XDP_PASS;

	if (cfg->pod_mask && (ip->daddr & cfg->pod_mask) == cfg->pod_net)
		return to_socket(ctx);
	if (ip->daddr != cfg->node_ip)
		return XDP_PASS;
	if (cfg->redirect_ipip && ip->protocol == IPPROTO_IPIP)
		return to_socket(ctx);
	if (cfg->nat_lo && nat_reply(ip, data_end, cfg))
		return to_socket(ctx);
	if (ip->protocol != IPPROTO_UDP || !cfg->vxlan_port)
		return XDP_PASS;

	struct udphdr *udp = (void *)ip + ip->ihl * 4;
	if ((void *)(udp + 1) > data_end)
		return XDP_PASS;
	if (udp->dest == cfg->vxlan_port)
		return to_socket(ctx);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";

// SPDX-License-Identifier: Apache-2.0
/*
 * NodePort / LoadBalancer / externalIP load balancing for traffic that arrives from outside
 * the node, on tc (tcx) ingress and egress of the node's external interface.
 *
 * ingress, client -> frontend (sluice_svc_v1, scope SLUICE_SCOPE_EXT):
 *   - local backend, or externalTrafficPolicy Local: DNAT only and hand the packet to the
 *     stack (SLUICE_TC_PASS), which routes it to the pod; the client address is kept. The pod's
 *     replies leave through this interface and egress rewrites their source back to the
 *     frontend (SLUICE_CT_OUT_REPLY).
 *   - remote backend (Cluster): SNAT to node IP:port from the configured range plus DNAT,
 *     then forward it ourselves out of the interface (bpf_fib_lookup + bpf_redirect). The
 *     reply, backend -> node IP:SNAT port (SLUICE_CT_IN_REPLY), is translated back to
 *     frontend -> client and redirected the same way.
 *   - frontend without backends: drop.
 *   - LB IP frontend with loadBalancerSourceRanges (SLUICE_SVC_SRC_RANGES): a new flow from
 *     a source in none of its ranges (sluice_srcrange_v1) is dropped; established flows are
 *     not checked again.
 * Everything else passes untouched.
 *
 * Only IPv4 TCP and UDP, unfragmented; no ICMP error translation; conntrack entries age out of
 * the LRU map (no TCP state machine).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "lb.h"

char LICENSE[] SEC("license") = "GPL";

#ifndef AF_INET
#define AF_INET 2
#endif

#define IP_OFF ETH_HLEN
#define IP_CSUM_OFF (IP_OFF + __builtin_offsetof(struct iphdr, check))
#define IP_SRC_OFF (IP_OFF + __builtin_offsetof(struct iphdr, saddr))
#define IP_DST_OFF (IP_OFF + __builtin_offsetof(struct iphdr, daddr))
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff
#define SNAT_TRIES 16

/*
 * "Not ours / done with it, carry on". On tcx, TC_ACT_OK (TCX_PASS) would end the chain and
 * skip any program attached after this one (policy, observability); TC_ACT_UNSPEC (TCX_NEXT)
 * lets them run and, at the end of the chain, passes the packet to the stack.
 */
#define SLUICE_TC_PASS TC_ACT_UNSPEC

/* The packet's tuple and where its L4 header is. */
struct pkt {
	struct sluice_ct_key t; /* dir left 0 */
	__u32 l4_off;
	__u32 csum_off; /* L4 checksum offset */
	__u16 tot_len;  /* host order */
	__u8 tcp_flags; /* TCP: the flags byte (FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10) */
};

#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10

static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	struct iphdr ip;
	__be16 ports[2];

	if (skb->protocol != bpf_htons(ETH_P_IP))
		return -1;
	if (bpf_skb_load_bytes(skb, IP_OFF, &ip, sizeof(ip)) < 0)
		return -1;
	if (ip.version != 4 || ip.ihl < 5)
		return -1;
	/* Fragments other than the first carry no ports; translating only the first would
	 * split a datagram across two tuples. Leave fragmented traffic alone. */
	if (ip.frag_off & bpf_htons(IP_MF | IP_OFFSET))
		return -1;
	if (ip.protocol != IPPROTO_TCP && ip.protocol != IPPROTO_UDP)
		return -1;
	p->l4_off = IP_OFF + ip.ihl * 4;
	if (bpf_skb_load_bytes(skb, p->l4_off, ports, sizeof(ports)) < 0)
		return -1;
	p->t.saddr = ip.saddr;
	p->t.daddr = ip.daddr;
	p->t.sport = ports[0];
	p->t.dport = ports[1];
	p->t.proto = ip.protocol;
	p->t.dir = 0;
	p->t.pad = 0;
	p->csum_off = p->l4_off + (ip.protocol == IPPROTO_TCP ? 16 : 6);
	p->tcp_flags = 0;
	if (ip.protocol == IPPROTO_TCP &&
	    bpf_skb_load_bytes(skb, p->l4_off + 13, &p->tcp_flags, 1) < 0)
		return -1;
	p->tot_len = bpf_ntohs(ip.tot_len);
	return 0;
}

/* Rewrite one address: IP header checksum, L4 pseudo-header checksum, then the bytes. */
static __always_inline int rewrite_addr(struct __sk_buff *skb, struct pkt *p, __u32 off,
					__be32 old, __be32 new)
{
	/* UDP checksum 0 means "none": BPF_F_MARK_MANGLED_0 keeps it 0, and turns a computed 0
	 * into 0xffff. */
	__u64 l4flags = BPF_F_PSEUDO_HDR | sizeof(new) |
			(p->t.proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0);

	if (old == new)
		return 0;
	if (bpf_l4_csum_replace(skb, p->csum_off, old, new, l4flags) < 0)
		return -1;
	if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old, new, sizeof(new)) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, off, &new, sizeof(new), 0);
}

static __always_inline int rewrite_port(struct __sk_buff *skb, struct pkt *p, __u32 off,
					__be16 old, __be16 new)
{
	__u64 l4flags = sizeof(new) | (p->t.proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0);

	if (old == new)
		return 0;
	if (bpf_l4_csum_replace(skb, p->csum_off, old, new, l4flags) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, off, &new, sizeof(new), 0);
}

/* Turn the packet's tuple p->t into v's. */
static __always_inline int rewrite(struct __sk_buff *skb, struct pkt *p, struct sluice_ct_val *v)
{
	if (rewrite_addr(skb, p, IP_SRC_OFF, p->t.saddr, v->saddr) < 0 ||
	    rewrite_addr(skb, p, IP_DST_OFF, p->t.daddr, v->daddr) < 0 ||
	    rewrite_port(skb, p, p->l4_off, p->t.sport, v->sport) < 0 ||
	    rewrite_port(skb, p, p->l4_off + 2, p->t.dport, v->dport) < 0)
		return -1;
	return 0;
}

/*
 * Send a rewritten packet out ourselves. Its source is now a local address (the node IP, or
 * the frontend for replies); on the ingress path the kernel would drop it as a martian, so it
 * must not go back through the stack: look the route up and redirect to the egress device.
 */
static __always_inline int forward(struct __sk_buff *skb, struct pkt *p, struct sluice_ct_val *v)
{
	struct bpf_fib_lookup fib = {};
	struct bpf_redir_neigh nh = {};
	long rc;

	fib.family = AF_INET;
	fib.l4_protocol = p->t.proto;
	fib.sport = v->sport;
	fib.dport = v->dport;
	fib.tot_len = p->tot_len;
	fib.ifindex = skb->ifindex;
	fib.ipv4_src = v->saddr;
	fib.ipv4_dst = v->daddr;

	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		if (bpf_skb_store_bytes(skb, 0, fib.dmac, ETH_ALEN, 0) < 0 ||
		    bpf_skb_store_bytes(skb, ETH_ALEN, fib.smac, ETH_ALEN, 0) < 0)
			return TC_ACT_SHOT;
		return bpf_redirect(fib.ifindex, 0);
	}
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		/* No neighbour entry yet: let the neighbour subsystem resolve the next hop (and
		 * queue the packet meanwhile) instead of dropping the flow's first packet. */
		nh.nh_family = AF_INET;
		nh.ipv4_nh = fib.ipv4_dst;
		return bpf_redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0);
	}
	if (rc == BPF_FIB_LKUP_RET_FWD_DISABLED) {
		/* bpf_fib_lookup refuses when IPv4 forwarding is off on the interface (a node
		 * normally forwards, for its pods). The packet only goes back out of the interface
		 * it came in on, which needs no forwarding: let bpf_redirect_neigh route it from
		 * the output side (no forwarding check) out of this interface. */
		return bpf_redirect_neigh(skb->ifindex, NULL, 0, 0);
	}
	return TC_ACT_SHOT;
}

static __always_inline int apply(struct __sk_buff *skb, struct pkt *p, struct sluice_ct_val *v)
{
	if (rewrite(skb, p, v) < 0)
		return TC_ACT_SHOT;
	if (v->flags & SLUICE_CT_F_REDIRECT)
		return forward(skb, p, v);
	return SLUICE_TC_PASS;
}

/* Is saddr in one of the source ranges of frontend svc_id? */
static __always_inline int src_allowed(__u32 svc_id, __be32 saddr)
{
	struct sluice_srcrange_key key = {
		.prefixlen = SLUICE_SRCRANGE_SVC_BITS + 32,
		.svc_id = svc_id,
		.addr = saddr,
	};

	return bpf_map_lookup_elem(&sluice_srcrange_v1, &key) != NULL;
}

/* A new flow to an EXT frontend: choose a backend, create both conntrack entries, translate. */
static __always_inline int new_flow(struct __sk_buff *skb, struct pkt *p,
				    struct sluice_config *cfg)
{
	struct sluice_ct_key okey = p->t, rkey = {};
	struct sluice_ct_val oval = {}, rval = {};
	struct sluice_svc_val *svc;
	struct sluice_backend *be;
	__u32 backend_id = 0, range, start, i;
	__u16 port;
	int snat;

	svc = svc_lookup(p->t.daddr, p->t.dport, p->t.proto, SLUICE_SCOPE_EXT);
	if (!svc)
		return SLUICE_TC_PASS;
	/* Only a SYN starts a TCP flow here. Any other segment without an entry belongs to a
	 * connection that was set up before these programs took over (another proxy mode's
	 * netfilter NAT, whose conntrack entry still translates it): pass it on untouched, so a
	 * live switch to this mode keeps established connections. */
	if (p->t.proto == IPPROTO_TCP &&
	    (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) != TCP_FLAG_SYN)
		return SLUICE_TC_PASS;
	if ((svc->flags & SLUICE_SVC_SRC_RANGES) && !src_allowed(svc->svc_id, p->t.saddr))
		return TC_ACT_SHOT;
	if (svc->count == 0)
		return TC_ACT_SHOT;
	be = select_backend(p->t.daddr, p->t.dport, p->t.proto, SLUICE_SCOPE_EXT, svc,
			    (__u64)p->t.saddr, &backend_id);
	if (!be)
		return SLUICE_TC_PASS;

	oval.svc_id = rval.svc_id = svc->svc_id;
	oval.backend_id = rval.backend_id = backend_id;
	oval.daddr = be->addr;
	oval.dport = be->port;
	/* The reply is translated back to frontend -> client. */
	rval.saddr = p->t.daddr;
	rval.sport = p->t.dport;
	rval.daddr = p->t.saddr;
	rval.dport = p->t.sport;
	rkey.saddr = be->addr;
	rkey.sport = be->port;
	rkey.proto = p->t.proto;

	snat = !(be->flags & SLUICE_BACKEND_LOCAL) && !(svc->flags & SLUICE_SVC_EXT_LOCAL);
	if (!snat) {
		/* DNAT only: the reply leaves through egress as backend -> client. */
		oval.saddr = p->t.saddr;
		oval.sport = p->t.sport;
		rkey.daddr = p->t.saddr;
		rkey.dport = p->t.sport;
		rkey.dir = SLUICE_CT_OUT_REPLY;
		if (bpf_map_update_elem(&sluice_ct_v1, &rkey, &rval, BPF_ANY) < 0)
			return TC_ACT_SHOT;
	} else {
		if (cfg->snat_port_max < cfg->snat_port_min)
			return TC_ACT_SHOT;
		range = (__u32)cfg->snat_port_max - cfg->snat_port_min + 1;
		start = bpf_get_prandom_u32();
		rkey.daddr = cfg->node_ip4;
		rkey.dir = SLUICE_CT_IN_REPLY;
		rval.flags = SLUICE_CT_F_REDIRECT;
		/* A SNAT port is free for this backend when no reply entry uses it yet. */
		for (i = 0; i < SNAT_TRIES; i++) {
			port = cfg->snat_port_min + (start + i) % range;
			rkey.dport = bpf_htons(port);
			if (bpf_map_update_elem(&sluice_ct_v1, &rkey, &rval, BPF_NOEXIST) == 0)
				break;
		}
		if (i == SNAT_TRIES)
			return TC_ACT_SHOT;
		oval.saddr = cfg->node_ip4;
		oval.sport = rkey.dport;
		oval.flags = SLUICE_CT_F_SNAT | SLUICE_CT_F_REDIRECT;
	}
	okey.dir = SLUICE_CT_IN_ORIG;
	if (bpf_map_update_elem(&sluice_ct_v1, &okey, &oval, BPF_ANY) < 0)
		return TC_ACT_SHOT;
	return apply(skb, p, &oval);
}

static __always_inline struct sluice_config *config(void)
{
	__u32 zero = 0;
	struct sluice_config *cfg = bpf_map_lookup_elem(&sluice_config_v1, &zero);

	if (!cfg || cfg->node_ip4 == 0)
		return NULL;
	return cfg;
}

/* "classifier", not "tc": aya 0.14 only knows the older section name. */
SEC("classifier")
int sluice_nodeport_ingress(struct __sk_buff *skb)
{
	struct sluice_config *cfg = config();
	struct sluice_ct_val *v;
	struct sluice_ct_key key;
	struct pkt p;

	if (!cfg || parse(skb, &p) < 0)
		return SLUICE_TC_PASS;

	key = p.t;
	if (p.t.daddr == cfg->node_ip4) {
		key.dir = SLUICE_CT_IN_REPLY;
		v = bpf_map_lookup_elem(&sluice_ct_v1, &key);
		if (v)
			return apply(skb, &p, v);
	}
	key.dir = SLUICE_CT_IN_ORIG;
	v = bpf_map_lookup_elem(&sluice_ct_v1, &key);
	if (v)
		return apply(skb, &p, v);
	return new_flow(skb, &p, cfg);
}

SEC("classifier")
int sluice_nodeport_egress(struct __sk_buff *skb)
{
	struct sluice_config *cfg = config();
	struct sluice_ct_val *v;
	struct sluice_ct_key key;
	struct pkt p;

	if (!cfg || parse(skb, &p) < 0)
		return SLUICE_TC_PASS;
	key = p.t;
	key.dir = SLUICE_CT_OUT_REPLY;
	v = bpf_map_lookup_elem(&sluice_ct_v1, &key);
	if (!v)
		return SLUICE_TC_PASS;
	if (rewrite(skb, &p, v) < 0)
		return TC_ACT_SHOT;
	return SLUICE_TC_PASS;
}

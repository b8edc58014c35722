/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Sluice eBPF service load balancing: the map ABI.
 *
 * This header is the source of truth for every struct shared between the BPF programs
 * (ebpf/bpf/, C) and user space. The Rust mirror lives in ebpf/src/abi.rs; a unit test there
 * reads the BTF of the compiled objects and checks every size and member offset against it.
 *
 * Conventions:
 *   - every multi-byte address/port field is in network byte order (`__be32`/`__be16` here,
 *     `_be` suffix in Rust); everything else is host order;
 *   - padding is explicit and must be written as zero (keys are hashed bytewise);
 *   - map names carry the layout version (`_v1`): a change to any layout below must bump it,
 *     so that an agent never reuses a pinned map of another layout.
 *
 * Maps (all BTF-defined, created and pinned by the loader under its pin directory, so both
 * objects and a restarted agent share the same instances; sizes are set at load time by the
 * loader, the max_entries below are only placeholders):
 *
 *   sluice_svc_v1       HASH      sluice_svc_key -> sluice_svc_val
 *                        One entry per (frontend, scope, slot). Slot 0 is the service entry
 *                        (backend count, ids, flags); slots 1..=count name one backend each.
 *   sluice_backend_v1   HASH      __u32 backend_id -> sluice_backend
 *   sluice_revnat_v1    LRU_HASH  sluice_revnat_key -> sluice_revnat_val
 *                        Socket-level reverse translation: {socket cookie, backend} -> frontend.
 *   sluice_affinity_v1  LRU_HASH  sluice_affinity_key -> sluice_affinity_val (ClientIP affinity)
 *   sluice_udpflow_v1   LRU_HASH  sluice_udpflow_key -> sluice_udpflow_val
 *                        Unconnected UDP: one socket's datagrams to one frontend stay on one
 *                        backend.
 *   sluice_ct_v1        LRU_HASH  sluice_ct_key -> sluice_ct_val (tc NodePort conntrack)
 *   sluice_config_v1    ARRAY[1]  __u32 0 -> sluice_config (tc NodePort node configuration)
 *   sluice_srcrange_v1  LPM_TRIE  sluice_srcrange_key -> __u32 (1)
 *                        loadBalancerSourceRanges of the EXT frontends flagged
 *                        SLUICE_SVC_SRC_RANGES, keyed by their svc_id (BPF_F_NO_PREALLOC).
 */
#ifndef SLUICE_LB_H
#define SLUICE_LB_H

#include <linux/types.h>

/* Frontend scopes (sluice_svc_key.scope). */
#define SLUICE_SCOPE_SOCK 0 /* frontend as seen by in-node clients (cgroup hooks) */
#define SLUICE_SCOPE_EXT 1  /* frontend as seen by traffic arriving from outside the node (tc) */

/* sluice_svc_val.flags (slot 0 only). */
#define SLUICE_SVC_AFFINITY 0x1  /* sessionAffinity ClientIP */
#define SLUICE_SVC_NODEPORT 0x2  /* frontend is nodeIP:nodePort */
#define SLUICE_SVC_EXT_LOCAL 0x4 /* externalTrafficPolicy Local (tc: keep client address, no SNAT) */
#define SLUICE_SVC_SRC_RANGES 0x8 /* EXT LB IP with loadBalancerSourceRanges: a new flow whose
				   * source is in no sluice_srcrange_v1 range of svc_id is dropped */

/* sluice_backend.flags. */
#define SLUICE_BACKEND_LOCAL 0x1 /* backend is on this node */

struct sluice_svc_key {
	__be32 addr;
	__be16 port;
	__u8 proto; /* IPPROTO_TCP/UDP/SCTP */
	__u8 scope; /* SLUICE_SCOPE_* */
	__u32 slot; /* 0: service entry; 1..=count: backend slots */
};

struct sluice_svc_val {
	__u32 count;            /* slot 0: number of backends; slot > 0: 0 */
	__u32 backend_id;       /* slot > 0: key into sluice_backend_v1; slot 0: 0 */
	__u32 svc_id;           /* rev-nat/affinity id, unique per frontend, > 0 */
	__u32 affinity_timeout; /* seconds (slot 0, SLUICE_SVC_AFFINITY) */
	__u8 flags;             /* SLUICE_SVC_* (slot 0) */
	__u8 pad[3];
};

struct sluice_backend {
	__be32 addr;
	__be16 port;
	__u8 proto;
	__u8 flags; /* SLUICE_BACKEND_* */
};

struct sluice_revnat_key {
	__u64 cookie; /* bpf_get_socket_cookie() */
	__be32 addr;  /* backend address the socket talks to */
	__be16 port;
	__u16 pad;
};

struct sluice_revnat_val {
	__be32 addr; /* frontend the application asked for */
	__be16 port;
	__u16 pad;
	__u32 svc_id;
};

struct sluice_affinity_key {
	__u64 client; /* netns cookie for in-node clients; client IPv4 (__be32 in the low bytes
	               * as stored in memory, upper 4 bytes zero) for tc */
	__u32 svc_id;
	__u32 pad;
};

struct sluice_affinity_val {
	__u64 last_used_ns; /* bpf_ktime_get_ns() of the last connection */
	__u32 backend_id;
	__u32 pad;
};

struct sluice_udpflow_key {
	__u64 cookie; /* socket cookie */
	__be32 addr;  /* frontend */
	__be16 port;
	__u16 pad;
};

struct sluice_udpflow_val {
	__u32 backend_id;
	__u32 svc_id;
};

/*
 * tc NodePort conntrack. Every translated flow has two entries, one per direction, each keyed
 * by the tuple exactly as the packet carries it when the program sees it:
 *
 *   SLUICE_CT_IN_ORIG   ingress, client -> frontend; value: rewrite to the backend (source
 *                       becomes node IP:SNAT port unless the flow is SLUICE_CT_F_LOCAL|ETP).
 *   SLUICE_CT_IN_REPLY  ingress, backend -> node IP:SNAT port (SNATed remote backends);
 *                       value: rewrite to frontend -> client.
 *   SLUICE_CT_OUT_REPLY egress, local backend -> client (DNAT only); value: rewrite source
 *                       back to the frontend.
 *
 * The value is the complete rewritten tuple (saddr:sport -> daddr:dport). No TCP state is
 * tracked: entries age out of the LRU.
 */
#define SLUICE_CT_IN_ORIG 0
#define SLUICE_CT_IN_REPLY 1
#define SLUICE_CT_OUT_REPLY 2

/* sluice_ct_val.flags */
#define SLUICE_CT_F_SNAT 0x1     /* source rewritten to the node IP: forwarded by redirect */
#define SLUICE_CT_F_REDIRECT 0x2 /* send with bpf_fib_lookup + bpf_redirect (not the stack) */

struct sluice_ct_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 dir; /* SLUICE_CT_* */
	__u16 pad;
};

struct sluice_ct_val {
	__be32 saddr; /* rewritten tuple */
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 flags; /* SLUICE_CT_F_* */
	__u8 pad[3];
	__u32 svc_id;
	__u32 backend_id;
};

/*
 * Node configuration for the tc program, entry 0 of sluice_config_v1, written by the loader
 * when it attaches tc. Port range is host order and inclusive; node_ip4 == 0 disables the
 * program (everything passes untouched).
 */
struct sluice_config {
	__be32 node_ip4;       /* SNAT source and the address replies come back to */
	__u32 ext_ifindex;     /* the external interface tc is attached to */
	__u16 snat_port_min;   /* host order */
	__u16 snat_port_max;   /* host order, inclusive */
	__u32 pad;
};

/*
 * One allowed source range of a frontend, sluice_srcrange_v1 (LPM trie). The trie matches the
 * bytes after prefixlen: all 32 bits of svc_id (host order; always matched in full, so its
 * byte order does not matter), then the first (prefixlen - 32) bits of the address. An entry
 * for 192.0.2.0/24 of svc 7 is {32 + 24, 7, 192.0.2.0}; the program looks up
 * {32 + 32, svc_id, saddr}.
 */
#define SLUICE_SRCRANGE_SVC_BITS 32

struct sluice_srcrange_key {
	__u32 prefixlen; /* SLUICE_SRCRANGE_SVC_BITS + address prefix length */
	__u32 svc_id;
	__be32 addr;     /* the range's network address (host bits zero) */
};

#define SLUICE_SVC_MAP "sluice_svc_v1"
#define SLUICE_BACKEND_MAP "sluice_backend_v1"
#define SLUICE_REVNAT_MAP "sluice_revnat_v1"
#define SLUICE_AFFINITY_MAP "sluice_affinity_v1"
#define SLUICE_UDPFLOW_MAP "sluice_udpflow_v1"
#define SLUICE_CT_MAP "sluice_ct_v1"
#define SLUICE_CONFIG_MAP "sluice_config_v1"
#define SLUICE_SRCRANGE_MAP "sluice_srcrange_v1"

#define SLUICE_ASSERT_LAYOUT(type, size) \
	_Static_assert(sizeof(type) == (size), #type " size is part of the map ABI")
#define SLUICE_ASSERT_OFFSET(type, member, off) \
	_Static_assert(__builtin_offsetof(type, member) == (off), \
		       #type "." #member " offset is part of the map ABI")

SLUICE_ASSERT_LAYOUT(struct sluice_svc_key, 12);
SLUICE_ASSERT_OFFSET(struct sluice_svc_key, addr, 0);
SLUICE_ASSERT_OFFSET(struct sluice_svc_key, port, 4);
SLUICE_ASSERT_OFFSET(struct sluice_svc_key, proto, 6);
SLUICE_ASSERT_OFFSET(struct sluice_svc_key, scope, 7);
SLUICE_ASSERT_OFFSET(struct sluice_svc_key, slot, 8);

SLUICE_ASSERT_LAYOUT(struct sluice_svc_val, 20);
SLUICE_ASSERT_OFFSET(struct sluice_svc_val, count, 0);
SLUICE_ASSERT_OFFSET(struct sluice_svc_val, backend_id, 4);
SLUICE_ASSERT_OFFSET(struct sluice_svc_val, svc_id, 8);
SLUICE_ASSERT_OFFSET(struct sluice_svc_val, affinity_timeout, 12);
SLUICE_ASSERT_OFFSET(struct sluice_svc_val, flags, 16);

SLUICE_ASSERT_LAYOUT(struct sluice_backend, 8);
SLUICE_ASSERT_OFFSET(struct sluice_backend, addr, 0);
SLUICE_ASSERT_OFFSET(struct sluice_backend, port, 4);
SLUICE_ASSERT_OFFSET(struct sluice_backend, proto, 6);
SLUICE_ASSERT_OFFSET(struct sluice_backend, flags, 7);

SLUICE_ASSERT_LAYOUT(struct sluice_revnat_key, 16);
SLUICE_ASSERT_OFFSET(struct sluice_revnat_key, cookie, 0);
SLUICE_ASSERT_OFFSET(struct sluice_revnat_key, addr, 8);
SLUICE_ASSERT_OFFSET(struct sluice_revnat_key, port, 12);
SLUICE_ASSERT_OFFSET(struct sluice_revnat_key, pad, 14);

SLUICE_ASSERT_LAYOUT(struct sluice_revnat_val, 12);
SLUICE_ASSERT_OFFSET(struct sluice_revnat_val, addr, 0);
SLUICE_ASSERT_OFFSET(struct sluice_revnat_val, port, 4);
SLUICE_ASSERT_OFFSET(struct sluice_revnat_val, svc_id, 8);

SLUICE_ASSERT_LAYOUT(struct sluice_affinity_key, 16);
SLUICE_ASSERT_OFFSET(struct sluice_affinity_key, client, 0);
SLUICE_ASSERT_OFFSET(struct sluice_affinity_key, svc_id, 8);
SLUICE_ASSERT_OFFSET(struct sluice_affinity_key, pad, 12);

SLUICE_ASSERT_LAYOUT(struct sluice_affinity_val, 16);
SLUICE_ASSERT_OFFSET(struct sluice_affinity_val, last_used_ns, 0);
SLUICE_ASSERT_OFFSET(struct sluice_affinity_val, backend_id, 8);

SLUICE_ASSERT_LAYOUT(struct sluice_udpflow_key, 16);
SLUICE_ASSERT_OFFSET(struct sluice_udpflow_key, cookie, 0);
SLUICE_ASSERT_OFFSET(struct sluice_udpflow_key, addr, 8);
SLUICE_ASSERT_OFFSET(struct sluice_udpflow_key, port, 12);

SLUICE_ASSERT_LAYOUT(struct sluice_udpflow_val, 8);
SLUICE_ASSERT_OFFSET(struct sluice_udpflow_val, backend_id, 0);
SLUICE_ASSERT_OFFSET(struct sluice_udpflow_val, svc_id, 4);

SLUICE_ASSERT_LAYOUT(struct sluice_ct_key, 16);
SLUICE_ASSERT_OFFSET(struct sluice_ct_key, saddr, 0);
SLUICE_ASSERT_OFFSET(struct sluice_ct_key, daddr, 4);
SLUICE_ASSERT_OFFSET(struct sluice_ct_key, sport, 8);
SLUICE_ASSERT_OFFSET(struct sluice_ct_key, dport, 10);
SLUICE_ASSERT_OFFSET(struct sluice_ct_key, proto, 12);
SLUICE_ASSERT_OFFSET(struct sluice_ct_key, dir, 13);

SLUICE_ASSERT_LAYOUT(struct sluice_ct_val, 24);
SLUICE_ASSERT_OFFSET(struct sluice_ct_val, saddr, 0);
SLUICE_ASSERT_OFFSET(struct sluice_ct_val, daddr, 4);
SLUICE_ASSERT_OFFSET(struct sluice_ct_val, sport, 8);
SLUICE_ASSERT_OFFSET(struct sluice_ct_val, dport, 10);
SLUICE_ASSERT_OFFSET(struct sluice_ct_val, flags, 12);
SLUICE_ASSERT_OFFSET(struct sluice_ct_val, svc_id, 16);
SLUICE_ASSERT_OFFSET(struct sluice_ct_val, backend_id, 20);

SLUICE_ASSERT_LAYOUT(struct sluice_config, 16);
SLUICE_ASSERT_OFFSET(struct sluice_config, node_ip4, 0);
SLUICE_ASSERT_OFFSET(struct sluice_config, ext_ifindex, 4);
SLUICE_ASSERT_OFFSET(struct sluice_config, snat_port_min, 8);
SLUICE_ASSERT_OFFSET(struct sluice_config, snat_port_max, 10);

SLUICE_ASSERT_LAYOUT(struct sluice_srcrange_key, 12);
SLUICE_ASSERT_OFFSET(struct sluice_srcrange_key, prefixlen, 0);
SLUICE_ASSERT_OFFSET(struct sluice_srcrange_key, svc_id, 4);
SLUICE_ASSERT_OFFSET(struct sluice_srcrange_key, addr, 8);

#endif /* SLUICE_LB_H */

// SPDX-License-Identifier: Apache-2.0
/*
 * Connect-time Service load balancing on the cgroup sock_addr hooks.
 *
 * Attached to a cgroup v2 directory, these programs see every connect(), sendmsg() with an
 * address, recvmsg() and getpeername() of IPv4 sockets created inside it. A destination that is
 * a Service frontend (sluice_svc_v1, scope SLUICE_SCOPE_SOCK) is rewritten to one backend
 * before the kernel routes anything, so no packet ever carries the frontend address and no
 * per-packet NAT is needed; the reverse hooks make the socket keep reporting the frontend.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/errno.h>
#include <bpf/bpf_helpers.h>

#include "lb.h"

char LICENSE[] SEC("license") = "GPL";

/*
 * Remember which frontend the socket asked for, keyed by the backend it really talks to, so
 * getpeername()/recvmsg() can show the frontend again. Keyed by socket cookie: the same backend
 * may be reached through several frontends by different sockets.
 */
static __always_inline void revnat_record(struct bpf_sock_addr *ctx, struct sluice_backend *be,
					  __be32 faddr, __be16 fport, __u32 svc_id)
{
	struct sluice_revnat_key key = {
		.cookie = bpf_get_socket_cookie(ctx),
		.addr = be->addr,
		.port = be->port,
		.pad = 0,
	};
	struct sluice_revnat_val val = {
		.addr = faddr,
		.port = fport,
		.pad = 0,
		.svc_id = svc_id,
	};
	struct sluice_revnat_val *cur;

	/* A lookup also refreshes the LRU entry; only write when it is missing or stale. */
	cur = bpf_map_lookup_elem(&sluice_revnat_v1, &key);
	if (cur && cur->addr == faddr && cur->port == fport && cur->svc_id == svc_id)
		return;
	bpf_map_update_elem(&sluice_revnat_v1, &key, &val, BPF_ANY);
}

/*
 * A frontend without backends: fail the syscall with ECONNREFUSED at once (what a client of a
 * Service without endpoints gets from kube-proxy's REJECT rules) instead of the EPERM a plain
 * "return 0" produces. bpf_set_retval() is a helper (cgroup programs, 5.18+): returning 0 makes
 * the kernel fail the syscall, and the retval set here replaces its default -EPERM.
 */
static __always_inline int refuse(void)
{
	bpf_set_retval(-ECONNREFUSED);
	return 0;
}

/*
 * The UDP flow pin: an unconnected socket sending to a frontend keeps talking to the same
 * backend for as long as that backend exists (a DNS client retrying must not hop between
 * servers, and replies must come from the address the socket last sent to).
 */
static __always_inline struct sluice_backend *udpflow_backend(struct sluice_udpflow_key *key,
							      __u32 svc_id, __u32 *backend_id)
{
	struct sluice_udpflow_val *flow;
	struct sluice_backend *be;
	__u32 id;

	flow = bpf_map_lookup_elem(&sluice_udpflow_v1, key);
	if (!flow || flow->svc_id != svc_id)
		return NULL;
	id = flow->backend_id;
	be = bpf_map_lookup_elem(&sluice_backend_v1, &id);
	if (be)
		*backend_id = id;
	return be;
}

static __always_inline int lb4(struct bpf_sock_addr *ctx, int is_sendmsg)
{
	__be32 faddr = ctx->user_ip4;
	/* user_port holds the port in network byte order in its low 16 bits. */
	__be16 fport = (__be16)ctx->user_port;
	__u8 proto = (__u8)ctx->protocol;
	struct sluice_udpflow_key fkey = {};
	struct sluice_udpflow_val fval = {};
	struct sluice_svc_val *svc;
	struct sluice_backend *be = NULL;
	__u32 backend_id = 0;
	__u32 svc_id;

	svc = svc_lookup(faddr, fport, proto, SLUICE_SCOPE_SOCK);
	if (!svc)
		return 1;
	if (svc->count == 0)
		return refuse();
	svc_id = svc->svc_id;

	if (is_sendmsg && proto == IPPROTO_UDP) {
		fkey.cookie = bpf_get_socket_cookie(ctx);
		fkey.addr = faddr;
		fkey.port = fport;
		be = udpflow_backend(&fkey, svc_id, &backend_id);
	}
	if (!be) {
		be = select_backend(faddr, fport, proto, SLUICE_SCOPE_SOCK, svc,
				    bpf_get_netns_cookie(ctx), &backend_id);
		if (!be)
			return 1;
		if (is_sendmsg && proto == IPPROTO_UDP) {
			fval.backend_id = backend_id;
			fval.svc_id = svc_id;
			bpf_map_update_elem(&sluice_udpflow_v1, &fkey, &fval, BPF_ANY);
		}
	}

	ctx->user_ip4 = be->addr;
	ctx->user_port = (__u32)be->port;
	revnat_record(ctx, be, faddr, fport, svc_id);
	return 1;
}

/* Show the frontend instead of the backend (recvmsg source, getpeername). */
static __always_inline int revnat4(struct bpf_sock_addr *ctx)
{
	struct sluice_revnat_key key = {
		.cookie = bpf_get_socket_cookie(ctx),
		.addr = ctx->user_ip4,
		.port = (__be16)ctx->user_port,
		.pad = 0,
	};
	struct sluice_revnat_val *val;

	val = bpf_map_lookup_elem(&sluice_revnat_v1, &key);
	if (!val)
		return 1;
	ctx->user_ip4 = val->addr;
	ctx->user_port = (__u32)val->port;
	return 1;
}

SEC("cgroup/connect4")
int sluice_connect4(struct bpf_sock_addr *ctx)
{
	return lb4(ctx, 0);
}

SEC("cgroup/sendmsg4")
int sluice_sendmsg4(struct bpf_sock_addr *ctx)
{
	return lb4(ctx, 1);
}

SEC("cgroup/recvmsg4")
int sluice_recvmsg4(struct bpf_sock_addr *ctx)
{
	return revnat4(ctx);
}

SEC("cgroup/getpeername4")
int sluice_getpeername4(struct bpf_sock_addr *ctx)
{
	return revnat4(ctx);
}

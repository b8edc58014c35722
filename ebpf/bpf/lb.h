/* SPDX-License-Identifier: Apache-2.0 */
/* Backend selection shared by the socket hooks (sock.c) and the tc NodePort path (nodeport.c). */
#ifndef SLUICE_LB_COMMON_H
#define SLUICE_LB_COMMON_H

#include "maps.h"

/* How many slots an affinity hit is checked against (see affinity_still_valid). */
#define SLUICE_AFFINITY_SCAN_MAX 64

static __always_inline struct sluice_svc_val *svc_lookup(__be32 addr, __be16 port, __u8 proto,
							   __u8 scope)
{
	struct sluice_svc_key key = {
		.addr = addr,
		.port = port,
		.proto = proto,
		.scope = scope,
		.slot = 0,
	};

	return bpf_map_lookup_elem(&sluice_svc_v1, &key);
}

/*
 * Is backend_id still one of the service's slots? An affinity entry outlives endpoint changes;
 * the backend map alone cannot tell "removed from this service" from "still used by another
 * one", so walk the slots. Services with more than SLUICE_AFFINITY_SCAN_MAX backends fall back
 * to "the backend still exists" (the walk is bounded so the verifier accepts it).
 */
static __always_inline int affinity_still_valid(struct sluice_svc_key *key, __u32 count,
						__u32 backend_id)
{
	struct sluice_svc_val *slot;
	__u32 i;

	if (count > SLUICE_AFFINITY_SCAN_MAX)
		return bpf_map_lookup_elem(&sluice_backend_v1, &backend_id) != NULL;

	for (i = 1; i <= SLUICE_AFFINITY_SCAN_MAX; i++) {
		if (i > count)
			break;
		key->slot = i;
		slot = bpf_map_lookup_elem(&sluice_svc_v1, key);
		if (slot && slot->backend_id == backend_id)
			return 1;
	}
	return 0;
}

/*
 * Choose a backend for a new flow of the service whose slot-0 entry is `svc`. `client` is the
 * affinity identity (netns cookie or client IPv4); it is only used when the service has
 * SLUICE_SVC_AFFINITY. Returns the backend, or NULL (and *backend_id untouched) when the
 * chosen slot or backend is missing, which happens only while the planner is rewriting the
 * service: the caller then leaves the traffic alone.
 */
static __always_inline struct sluice_backend *
select_backend(__be32 addr, __be16 port, __u8 proto, __u8 scope, struct sluice_svc_val *svc,
	       __u64 client, __u32 *backend_id)
{
	struct sluice_svc_key key = {
		.addr = addr,
		.port = port,
		.proto = proto,
		.scope = scope,
	};
	struct sluice_affinity_key akey = {
		.client = client,
		.svc_id = svc->svc_id,
		.pad = 0,
	};
	struct sluice_affinity_val aval = {};
	struct sluice_affinity_val *aff;
	struct sluice_svc_val *slot;
	struct sluice_backend *be;
	__u32 count = svc->count;
	__u64 now = bpf_ktime_get_ns();
	__u32 id;

	if (count == 0)
		return NULL;

	if (svc->flags & SLUICE_SVC_AFFINITY) {
		aff = bpf_map_lookup_elem(&sluice_affinity_v1, &akey);
		if (aff && now - aff->last_used_ns < (__u64)svc->affinity_timeout * 1000000000ULL) {
			id = aff->backend_id;
			if (affinity_still_valid(&key, count, id)) {
				be = bpf_map_lookup_elem(&sluice_backend_v1, &id);
				if (be) {
					aff->last_used_ns = now;
					*backend_id = id;
					return be;
				}
			}
		}
	}

	key.slot = bpf_get_prandom_u32() % count + 1;
	slot = bpf_map_lookup_elem(&sluice_svc_v1, &key);
	if (!slot)
		return NULL;
	id = slot->backend_id;
	be = bpf_map_lookup_elem(&sluice_backend_v1, &id);
	if (!be)
		return NULL;

	if (svc->flags & SLUICE_SVC_AFFINITY) {
		aval.last_used_ns = now;
		aval.backend_id = id;
		bpf_map_update_elem(&sluice_affinity_v1, &akey, &aval, BPF_ANY);
	}
	*backend_id = id;
	return be;
}

#endif /* SLUICE_LB_COMMON_H */

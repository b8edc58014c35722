/* SPDX-License-Identifier: Apache-2.0 */
/*
 * The map definitions, shared by every object. Each object declares all maps, so loading any
 * one of them creates (or, when pinned already, reuses) the complete set: the loader pins every
 * map by name under its pin directory and the second object, like a restarted agent, opens the
 * pinned instances instead of creating new ones. The max_entries here are placeholders; the
 * loader always sets the real sizes (ebpf/src/loader.rs, MapSizes).
 */
#ifndef SLUICE_MAPS_H
#define SLUICE_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "sluice_lb.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct sluice_svc_key);
	__type(value, struct sluice_svc_val);
} sluice_svc_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, struct sluice_backend);
} sluice_backend_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct sluice_revnat_key);
	__type(value, struct sluice_revnat_val);
} sluice_revnat_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct sluice_affinity_key);
	__type(value, struct sluice_affinity_val);
} sluice_affinity_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct sluice_udpflow_key);
	__type(value, struct sluice_udpflow_val);
} sluice_udpflow_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct sluice_ct_key);
	__type(value, struct sluice_ct_val);
} sluice_ct_v1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct sluice_config);
} sluice_config_v1 SEC(".maps");

/* LPM tries must not be preallocated. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct sluice_srcrange_key);
	__type(value, __u32);
} sluice_srcrange_v1 SEC(".maps");

#endif /* SLUICE_MAPS_H */

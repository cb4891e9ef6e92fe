// SPDX-License-Identifier: GPL-2.0
/* bpfscope fuse: every FUSE request, per (connection, opcode): count, errors, bytes and a
 * log2 histogram of the latency from the kernel sending it to its end.
 *
 * Hooks: tracepoints fuse:fuse_request_send and fuse:fuse_request_end, which fire once per
 * request that has a reply (FORGET and INTERRUPT have none and are not fuse_reqs). The send
 * stores (ts, opcode) under (connection, unique) in an LRU hash (a request of an aborted
 * connection that never ends is evicted, not leaked); the end folds it into `ops`.
 * Cost: two hash operations per request, small beside a round trip to a user-space server.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include "fuse.h"

const volatile __u32 target_conn = 0;	/* 0: every connection */

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, FUSE_MAX_INFLIGHT);
	__type(key, struct fuse_req_key);
	__type(value, struct fuse_req_start);
} inflight SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, FUSE_MAX_OPS);
	__type(key, struct fuse_op_key);
	__type(value, struct fuse_op_val);
} ops SEC(".maps");

/* Requests that ended but found no room in a full `ops` (user space removes the pairs of
 * connections that no longer exist when it reads; this counts what it could not save). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} untracked SEC(".maps");

SEC("tracepoint/fuse/fuse_request_send")
int fuse_send(struct trace_event_raw_fuse_request_send *ctx)
{
	struct fuse_req_key key = { .conn = ctx->connection, .unique = ctx->unique };
	struct fuse_req_start start = { .ts = bpf_ktime_get_ns(), .opcode = ctx->opcode, .len = ctx->len };

	if (target_conn && key.conn != target_conn)
		return 0;
	bpf_map_update_elem(&inflight, &key, &start, BPF_ANY);
	return 0;
}

static __always_inline __u32 log2_slot(__u64 v)
{
	__u32 slot = 0;

#pragma unroll
	for (int i = 32; i > 0; i >>= 1) {
		if (v >= (1ULL << i)) {
			v >>= i;
			slot += i;
		}
	}
	return slot < FUSE_HIST_SLOTS ? slot : FUSE_HIST_SLOTS - 1;
}

SEC("tracepoint/fuse/fuse_request_end")
int fuse_end(struct trace_event_raw_fuse_request_end *ctx)
{
	struct fuse_req_key key = { .conn = ctx->connection, .unique = ctx->unique };
	struct fuse_req_start *start;
	struct fuse_op_key okey;
	struct fuse_op_val *val;
	__u64 ns;

	start = bpf_map_lookup_elem(&inflight, &key);
	if (!start)
		return 0;
	ns = bpf_ktime_get_ns() - start->ts;
	okey.conn = key.conn;
	okey.opcode = start->opcode;
	val = bpf_map_lookup_elem(&ops, &okey);
	if (!val) {
		struct fuse_op_val zero = {};

		bpf_map_update_elem(&ops, &okey, &zero, BPF_NOEXIST);
		val = bpf_map_lookup_elem(&ops, &okey);
		if (!val) {
			__u32 zero_key = 0;
			__u64 *n = bpf_map_lookup_elem(&untracked, &zero_key);

			if (n)
				(*n)++;
			goto out;
		}
	}
	__sync_fetch_and_add(&val->count, 1);
	if (ctx->error < 0)
		__sync_fetch_and_add(&val->errors, 1);
	__sync_fetch_and_add(&val->request_bytes, start->len);
	__sync_fetch_and_add(&val->reply_bytes, ctx->len);
	__sync_fetch_and_add(&val->total_ns, ns);
	__sync_fetch_and_add(&val->hist[log2_slot(ns)], 1);
out:
	bpf_map_delete_elem(&inflight, &key);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

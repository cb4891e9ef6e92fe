// SPDX-License-Identifier: GPL-2.0
/* bpfscope sys: system calls counted per process and syscall number.
 *
 * Hook: raw_tp sys_enter (one firing per syscall on the host). raw_tp rather than the
 * classic tracepoint: no perf buffer is filled per call.
 *
 * Cost: a hash lookup costs ~55 ns per call on our VMs, as much as the hook itself, so
 * the hot path is a per-CPU direct-mapped table (`slots`, an array: ~5 ns): a slot is
 * owned by the first (tgid, nr) that hashes to it on that CPU and only its count grows
 * (cumulative; user space takes deltas and frees the slots of exited processes). A
 * (tgid, nr) whose slot is taken by another pair falls back to the per-CPU hash
 * `counts`, which user space reads and empties each interval.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "sys.h"

const volatile __u32 target_tgid = 0;	/* 0: every process */
const volatile __u32 self_tgid = 0;	/* the exporter itself, never counted */
const volatile __u32 slot_mask = SYS_SLOTS - 1;	/* slots' max_entries - 1 */

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SYS_SLOTS);
	__type(key, __u32);
	__type(value, struct sys_slot);
} slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, SYS_MAX_ENTRIES);
	__type(key, struct sys_key);
	__type(value, struct sys_val);
} counts SEC(".maps");

/* Counts what fit nowhere (slot taken and hash full), so a full map is visible. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} missed SEC(".maps");

static __always_inline void count_in_hash(__u32 tgid, __u32 nr)
{
	struct sys_key key = { .tgid = tgid, .nr = nr };
	struct sys_val *val, init = { .count = 1 };

	val = bpf_map_lookup_elem(&counts, &key);
	if (val) {
		val->count++;
		return;
	}
	bpf_get_current_comm(init.comm, sizeof(init.comm));
	if (bpf_map_update_elem(&counts, &key, &init, BPF_NOEXIST)) {
		__u32 zero = 0;
		__u64 *m = bpf_map_lookup_elem(&missed, &zero);

		if (m)
			(*m)++;
	}
}

SEC("raw_tp/sys_enter")
int BPF_PROG(count_sys_enter, struct pt_regs *regs, long id)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u32 nr = (__u32)id;
	__u32 idx = ((tgid * 2654435761u) ^ (nr * 40503u)) & slot_mask;
	struct sys_slot *s;

	if (target_tgid && tgid != target_tgid)
		return 0;
	if (tgid == self_tgid)
		return 0;
	s = bpf_map_lookup_elem(&slots, &idx);
	if (!s)
		return 0;
	if (s->count && s->tgid == tgid && s->nr == nr) {
		s->count++;
		return 0;
	}
	if (!s->count) {	/* free on this CPU: claim it */
		s->tgid = tgid;
		s->nr = nr;
		bpf_get_current_comm(s->comm, sizeof(s->comm));
		s->count = 1;
		return 0;
	}
	count_in_hash(tgid, nr);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

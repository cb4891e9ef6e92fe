// SPDX-License-Identifier: GPL-2.0
/* bpfscope sys: system calls counted per process and syscall number.
 *
 * Hook: tracepoint raw_syscalls/sys_enter (one firing per syscall on the host).
 * Cost: one per-CPU hash lookup and an increment; the comm is copied only when a
 * (tgid, nr) pair is first seen on a CPU. No event leaves the kernel: Python reads
 * and deletes the aggregated map once per interval.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "sys.h"

const volatile __u32 target_tgid = 0;	/* 0: every process */
const volatile __u32 self_tgid = 0;	/* the exporter itself, never counted */

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, SYS_MAX_ENTRIES);
	__type(key, struct sys_key);
	__type(value, struct sys_val);
} counts SEC(".maps");

/* Counts what did not fit in the map, so a full map is visible, not silent. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} missed SEC(".maps");

/* raw_tp, not the classic tracepoint: no perf buffer is filled per call (measured:
 * the classic tracepoint cost about twice as much per syscall). */
SEC("raw_tp/sys_enter")
int BPF_PROG(count_sys_enter, struct pt_regs *regs, long id)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct sys_key key = { .tgid = tgid, .nr = (__u32)id };
	struct sys_val *val, init = { .count = 1 };

	if (target_tgid && tgid != target_tgid)
		return 0;
	if (tgid == self_tgid)
		return 0;
	val = bpf_map_lookup_elem(&counts, &key);
	if (val) {
		val->count++;
		return 0;
	}
	bpf_get_current_comm(init.comm, sizeof(init.comm));
	if (bpf_map_update_elem(&counts, &key, &init, BPF_NOEXIST)) {
		__u32 zero = 0;
		__u64 *m = bpf_map_lookup_elem(&missed, &zero);

		if (m)
			(*m)++;
	}
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

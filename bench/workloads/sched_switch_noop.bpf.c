// SPDX-License-Identifier: GPL-2.0
/* The floor of any sched_switch tracer: a tp_btf program that does nothing. What
 * bench/stack_offcpu_overhead.py measures with it is the cost of the hook itself
 * (trampoline-less tp_btf call, recursion guard, RCU), which no program body can avoid. */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

SEC("tp_btf/sched_switch")
int BPF_PROG(switch_noop, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

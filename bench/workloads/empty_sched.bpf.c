/* Empty programs on the scheduler tracepoints: what attaching alone costs (bench/proc_hook_cost.py). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

SEC("tp_btf/sched_switch")
int BPF_PROG(e_switch_btf) { return 0; }

SEC("raw_tp/sched_switch")
int e_switch_raw(void *ctx) { return 0; }

SEC("tp_btf/sched_wakeup")
int BPF_PROG(e_wakeup_btf) { return 0; }

SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(e_wakeup_new_btf) { return 0; }

SEC("raw_tp/sched_wakeup")
int e_wakeup_raw(void *ctx) { return 0; }

char LICENSE[] SEC("license") = "GPL";

// SPDX-License-Identifier: GPL-2.0
/* bpfscope doctor: the smallest program of every hook type bpfscope may use.
 * The loader loads each program alone (autoload), attaches it where that is harmless,
 * triggers it, and checks its slot in `hits`. Nothing here runs outside `doctor`.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "bpfscope.h"
#include "doctor.h"

BTF_EXPORT_STRUCT(doctor_event);

const volatile __u32 self_tgid = 0;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, PROBE_MAX);
	__type(key, __u32);
	__type(value, __u64);
} hits SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, 128);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, 127 * sizeof(__u64));
} stacks SEC(".maps");

static __always_inline int is_self(void)
{
	return (bpf_get_current_pid_tgid() >> 32) == self_tgid;
}

static __always_inline void hit(__u32 probe)
{
	__u64 *v = bpf_map_lookup_elem(&hits, &probe);

	if (v)
		__sync_fetch_and_add(v, 1);
}

SEC("tracepoint/syscalls/sys_enter_getppid")
int doctor_tracepoint(void *ctx)
{
	if (is_self())
		hit(PROBE_TRACEPOINT);
	return 0;
}

SEC("raw_tp/sys_enter")
int BPF_PROG(doctor_raw_tp, struct pt_regs *regs, long id)
{
	if (is_self())
		hit(PROBE_RAW_TP);
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(doctor_tp_btf, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	if (BPF_CORE_READ(prev, tgid) == self_tgid)
		hit(PROBE_TP_BTF);
	return 0;
}

SEC("uprobe")
int doctor_uprobe(void *ctx)
{
	if (is_self())
		hit(PROBE_UPROBE);
	return 0;
}

SEC("uretprobe")
int doctor_uretprobe(void *ctx)
{
	if (is_self())
		hit(PROBE_URETPROBE);
	return 0;
}

SEC("perf_event")
int doctor_perf_event(struct bpf_perf_event_data *ctx)
{
	hit(PROBE_PERF_EVENT);
	if (bpf_get_stackid(ctx, &stacks, 0) >= 0)
		hit(PROBE_STACK);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_getppid")
int doctor_ringbuf(void *ctx)
{
	struct doctor_event *e;

	if (!is_self())
		return 0;
	e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e)
		return 0;
	e->pid = self_tgid;
	e->probe = PROBE_RINGBUF;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("iter/task")
int doctor_iter_task(struct bpf_iter__task *ctx)
{
	struct task_struct *task = ctx->task;

	if (task)
		BPF_SEQ_PRINTF(ctx->meta->seq, "%d\n", task->pid);
	return 0;
}

SEC("iter/tcp")
int doctor_iter_tcp(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;

	if (skc)
		BPF_SEQ_PRINTF(ctx->meta->seq, "%d\n", skc->skc_num);
	return 0;
}

SEC("kprobe/do_nanosleep")
int doctor_kprobe(void *ctx)
{
	hit(PROBE_KPROBE);
	return 0;
}

SEC("fentry/do_nanosleep")
int BPF_PROG(doctor_fentry)
{
	hit(PROBE_FENTRY);
	return 0;
}

SEC("cgroup/connect4")
int doctor_connect4(struct bpf_sock_addr *ctx)
{
	hit(PROBE_CGROUP);
	return 1;	/* allow: doctor never changes a connection */
}

SEC("sockops")
int doctor_sockops(struct bpf_sock_ops *ctx)
{
	return 1;
}

SEC("sk_msg")
int doctor_sk_msg(struct sk_msg_md *ctx)
{
	return SK_PASS;
}

SEC("tc")
int doctor_tc(struct __sk_buff *skb)
{
	return 0;	/* TC_ACT_OK */
}

SEC("xdp")
int doctor_xdp(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";

/* bpfscope doctor: one tiny program per hook type; each bumps its own slot in `hits`. */
#ifndef BPFSCOPE_DOCTOR_H
#define BPFSCOPE_DOCTOR_H

enum doctor_probe {
	PROBE_TRACEPOINT = 0,
	PROBE_RAW_TP,
	PROBE_TP_BTF,
	PROBE_UPROBE,
	PROBE_URETPROBE,
	PROBE_PERF_EVENT,
	PROBE_STACK,
	PROBE_RINGBUF,
	PROBE_ITER_TASK,
	PROBE_ITER_TCP,
	PROBE_KPROBE,
	PROBE_FENTRY,
	PROBE_CGROUP,
	PROBE_MAX = 16,
};

struct doctor_event {
	__u32 pid;
	__u32 probe;
};

#endif

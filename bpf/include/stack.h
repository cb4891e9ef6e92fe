/* Shared layout of stack.bpf.c maps: the object's BTF carries it to Python. */
#ifndef BPFSCOPE_STACK_H
#define BPFSCOPE_STACK_H

#define TASK_COMM_LEN 16
#define STACK_MAX_DEPTH 127		/* PERF_MAX_STACK_DEPTH: a stack map value is u64[127] */
#define STACK_TRACES 16384		/* default distinct stacks (kernel + user) */
#define STACK_MAX_ENTRIES 16384		/* default distinct (task, stacks, state) keys per interval */

/* task state at switch-out (offcpu); cpu samples carry STACK_STATE_RUNNING */
#define STACK_STATE_RUNNING 0		/* preempted or on-CPU */
#define STACK_STATE_SLEEP 1		/* TASK_INTERRUPTIBLE */
#define STACK_STATE_DISK 2		/* TASK_UNINTERRUPTIBLE (D: disk/IO wait, locks) */
#define STACK_STATE_OTHER 3		/* stopped, traced, dead, parked, ... */
#define IO_READ 0			/* io: stack_key.state */
#define IO_WRITE 1

/* One row of `counts`: who (process, thread, command, cgroup) was where (the two stack
 * ids; negative: no stack, see stack_errors) in which state. */
struct stack_key {
	__u32 pid;			/* tgid */
	__u32 tid;
	__u64 cgroup_id;		/* cgroup v2 id (the inode number of its directory) */
	__s32 user_stack_id;
	__s32 kernel_stack_id;
	__u32 state;			/* STACK_STATE_* */
	__u32 _pad;
	char comm[TASK_COMM_LEN];
};

struct stack_val {
	__u64 count;			/* samples (cpu), blocks (offcpu), outstanding blocks (mem) */
	__u64 ns;			/* offcpu: time blocked */
	__s64 bytes;			/* mem: outstanding bytes */
};

/* mem: one live allocation, by address: its size and the key it was counted under */
struct alloc_info {
	__u64 size;
	struct stack_key key;
};

/* offcpu: what was known when a task switched out, until it switches back in */
struct offcpu_start {
	__u64 ts;
	__u64 cgroup_id;
	__u32 pid;
	__s32 user_stack_id;
	__s32 kernel_stack_id;
	__u32 state;
	char comm[TASK_COMM_LEN];
};

/* load: the gate user space opens while the load is above --threshold */
struct load_gate {
	__u32 armed;
	__u32 load;			/* the load it was opened at (run-queue length or PSI %) */
};

/* indexes of the per-CPU `stats` array */
#define STAT_STACK_ERRORS 0		/* bpf_get_stackid failed (hash collision, map full) */
#define STAT_MAP_FULL 1			/* a sample fit nowhere in `counts` */
#define STAT_SAMPLES 2			/* samples / blocks counted */
#define STAT_ALLOCS_FULL 3		/* mem: an allocation not tracked (allocs map full) */
#define STAT_N 4

#endif

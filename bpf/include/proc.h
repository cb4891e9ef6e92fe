/* Shared layout of proc.bpf.c: maps, iterator rows and ring-buffer events. The object's
 * BTF carries every struct here to Python (bpfscope.exporters.proc). */
#ifndef BPFSCOPE_PROC_H
#define BPFSCOPE_PROC_H

#define TASK_COMM_LEN 16
#define PROC_FILENAME_LEN 128
#define PROC_STACK_DEPTH 127		/* a stack map value is u64[127] */

/* accounting states of a thread (index of proc_task.ns) */
#define PROC_RUNNING 0			/* on a CPU */
#define PROC_RUNNABLE 1			/* waiting for a CPU (preempted or woken) */
#define PROC_SLEEP 2			/* S: interruptible sleep (and idle kthreads) */
#define PROC_IOWAIT 3			/* D with in_iowait: disk/IO */
#define PROC_DISK 4			/* D for something else (locks, page faults, ...) */
#define PROC_STOPPED 5			/* T/t: stopped or traced */
#define PROC_OTHER 6			/* dead, parked, ... */
#define PROC_NSTATES 8

/* ring buffer event types (first u32 of every event) */
#define PROC_EV_SPAN 1			/* a thread's state ended (timeline) */
#define PROC_EV_FORK 2
#define PROC_EV_EXEC 3
#define PROC_EV_EXIT 4

/* kernel lock flags of lock:contention_begin (LCB_F_*) */
#define PROC_LCB_SPIN 1
#define PROC_LCB_READ 2
#define PROC_LCB_WRITE 4
#define PROC_LCB_RT 8
#define PROC_LCB_PERCPU 16
#define PROC_LCB_MUTEX 32

/* Per-thread accounting in task storage (freed with the task). */
struct proc_task {
	__u64 ns[PROC_NSTATES];		/* cumulative time per state */
	__u64 since;			/* when the current state began (0: not known yet) */
	__u64 nvcsw, nivcsw;		/* voluntary and involuntary switch-outs */
	__u64 lock_ns, lock_count;	/* kernel lock contention */
	__u64 futex_ns, futex_count;	/* futex waits */
	__u64 lock_begin, lock_addr;	/* a contention in progress */
	__u64 futex_begin, futex_uaddr;	/* a futex wait in progress */
	__u64 out_ts;			/* follow: switch-out time, for the reason's off-CPU time */
	__u32 state;			/* PROC_* */
	__u32 lock_flags;
	__s32 kstack, ustack;		/* follow: stacks at the last switch-out */
	__u64 ulock_addr;		/* --pthread: the lock a pthread_*lock call is taking */
	__u32 ulock_kind;		/* PROC_PT_* of that call */
	__u32 out_state;		/* follow: state at the last switch-out */
	__u32 preempt;			/* follow: the last switch-out was a preemption */
	__u64 run_delay_out;		/* sched_info.run_delay at the last switch-out */
	__u64 exec_since;		/* se.sum_exec_runtime when running began (~0: unknown) */
	__u64 csw_out;			/* nvcsw + nivcsw at the last switch-out (0: none seen) */
	__u64 nivcsw_out;		/* nivcsw at the last switch-out */
};

/* One row of the iter/task dump: a thread with its accounting so far. */
struct proc_row {
	__u32 tid, tgid, ppid, state;
	__u64 ns[PROC_NSTATES];		/* including the current state until now */
	__u64 nvcsw, nivcsw, lock_ns, lock_count, futex_ns, futex_count;
	__u64 start_time;		/* task start, ns of CLOCK_MONOTONIC */
	/* the kernel's own counters (no hook needed): what the system-wide table shows */
	__u64 sum_exec_ns;		/* se.sum_exec_runtime: time on a CPU */
	__u64 run_delay_ns;		/* sched_info.run_delay: time runnable, waiting for a CPU */
	__u64 knvcsw, knivcsw;		/* task->nvcsw, nivcsw */
	__u32 kstate;			/* task->__state now */
	__u32 kthread;
	__u32 accounted;		/* the ns/state fields above are ours (follow mode) */
	__u32 _pad;
	char comm[TASK_COMM_LEN];
};

/* follow: why threads switched out, per kernel and user stack at switch-out */
struct proc_reason_key {
	__u32 tgid, tid;
	__s32 kstack, ustack;
	__u32 state;			/* PROC_* the thread switched out into */
	__u32 preempt;
};

struct proc_reason_val {
	__u64 count, ns;		/* switch-outs and time until switched back in */
};

/* follow: waits on one futex word, or one kernel lock, per thread */
struct proc_wait_key {
	__u32 tgid, tid;
	__u64 addr;			/* futex user address, or kernel lock address */
	__u32 flags;			/* kernel lock: LCB_F_*; futex: 0 */
	__u32 _pad;
};

struct proc_wait_val {
	__u64 count, ns, max_ns;
};

/* --pthread: which libc lock function took a lock (proc_wait_key.flags of `pholds`) */
#define PROC_PT_MUTEX 1
#define PROC_PT_RDLOCK 2
#define PROC_PT_WRLOCK 3
#define PROC_PT_SPIN 4

/* --pthread: a lock held by a thread, from its lock call's return to its unlock */
struct proc_held_key {
	__u32 tid, _pad;
	__u64 addr;
};

struct proc_held {
	__u64 since;
	__u32 kind, _pad;
};

struct proc_span {
	__u32 type;			/* PROC_EV_SPAN */
	__u32 tid, tgid, state;
	__u64 start, end;
};

struct proc_life {
	__u32 type;			/* PROC_EV_FORK / EXEC / EXIT */
	__u32 tid, tgid;
	__u32 ptid, ppid;		/* fork: the parent thread and process */
	__u32 thread;			/* fork: the child is a thread of the parent's process */
	__s32 exit_code;		/* exit: task->exit_code (status << 8, or the signal | 0x80 core) */
	__u32 group_dead;		/* exit: the last thread of its process */
	__u64 ts, start_time;
	__u64 ns[PROC_NSTATES];		/* exit: the thread's totals */
	__u64 nvcsw, nivcsw, lock_ns, lock_count, futex_ns, futex_count;
	char comm[TASK_COMM_LEN];
	char filename[PROC_FILENAME_LEN];	/* exec */
};

#endif

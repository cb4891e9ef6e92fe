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

/* stack_key.source: a mode that watches two things keeps their rows apart (io: syscalls
 * and block requests; mem --kernel: libc and kmem allocations) */
#define STACK_SRC_MAIN 0		/* the mode's own hooks (samples, switches, libc, syscalls) */
#define STACK_SRC_BLOCK 1		/* block requests (block_* tracepoints) */
#define STACK_SRC_KMEM 2		/* kernel allocations (kmem tracepoints) */

/* One row of `counts`: who (process, thread, command, cgroup) was where (the two stack
 * ids; negative: no stack, see stack_errors) in which state. */
struct stack_key {
	__u32 pid;			/* tgid */
	__u32 tid;
	__u64 cgroup_id;		/* cgroup v2 id (the inode number of its directory) */
	__s32 user_stack_id;
	__s32 kernel_stack_id;
	__u32 state;			/* STACK_STATE_* */
	__u32 source;			/* STACK_SRC_*: which hooks counted it */
	char comm[TASK_COMM_LEN];
};

struct stack_val {
	__u64 count;			/* samples (cpu), blocks (offcpu), outstanding blocks (mem) */
	__u64 ns;			/* offcpu: time blocked */
	__s64 bytes;			/* mem: outstanding bytes */
};

/* mem: a live allocation or mapping by process and address (two processes may use the
 * same address, e.g. without ASLR); kernel objects (mem --kernel) have tgid 0 */
struct alloc_key {
	__u32 tgid;
	__u32 _pad;
	__u64 addr;
};

/* mem: one live allocation, by address: its size and the key it was counted under */
struct alloc_info {
	__u64 size;
	struct stack_key key;
};

/* mem: realloc's arguments, between its entry and its return (the old block is forgotten
 * only once the call succeeded: a failed realloc leaves it allocated) */
struct realloc_call {
	__u64 ptr;
	__u64 size;
};

/* offcpu: per task, what is known between its switch-out and its switch-in. At every
 * switch-out: the time, the state and the user stack id. The id comes from one of the
 * task's last two walks (a task often switches out at two sites in turn: preempted by the
 * task it woke, then blocked waiting for it) whose user ip, bp and sp (registers, no
 * memory read) are the same; the two innermost frame records are read and compared too
 * unless exactly one walk has these registers and its last OFFCPU_VERIFY blocks were not
 * counted (`verify` counts down). A site with no such walk is walked. The kernel stack is
 * taken at switch-in, and only for a counted block. */
#define OFFCPU_REGS 3			/* user ip, bp, sp */
#define OFFCPU_RECS 4			/* [bp], [bp+8], [[bp]], [[bp]+8] */
#define OFFCPU_WALKS 2
#define OFFCPU_VERIFY 16		/* a walk, or a counted block, verifies the next 16 reuses */
#define OFFCPU_NO_SLOT 0xff		/* the switch-out used no walk slot (kthread, no user stacks) */
struct offcpu_walk {
	__u64 regs[OFFCPU_REGS];	/* the user registers the walk started from */
	__u64 recs[OFFCPU_RECS];	/* and the frame records */
	__s32 user_stack_id;
	__u32 gen;			/* stack map generation + 1 of the id (0: empty) */
	__u8 verify;			/* reuses left that read the records (see above) */
	__u8 _pad[7];
};

struct offcpu_start {
	__u64 ts;			/* switch-out time (the run queue's clock); 0: not blocked */
	__u32 state;
	__s32 user_stack_id;		/* of this switch-out */
	__u8 slot;			/* the walk slot it came from, or OFFCPU_NO_SLOT */
	__u8 unverified;		/* reused on the registers alone (frame records not read) */
	__u8 last;			/* the walk slot filled last */
	__u8 _pad[5];
	struct offcpu_walk walks[OFFCPU_WALKS];
};

/* offcpu: a kernel stack taken with bpf_get_task_stack (zero-filled after the last frame) */
struct kstack {
	__u64 ips[STACK_MAX_DEPTH];
};

/* block: one request between its start (submitter's context) and its completion */
struct block_start {
	__u64 issue_ts;			/* 0 until the driver is given it */
	struct stack_key key;
};

/* load: the gate user space opens while the load is above --threshold */
struct load_gate {
	__u32 armed;
	__u32 load;			/* the load it was opened at (run-queue length or PSI %) */
};

/* user stacks with build ids: the plain-address stack id a process's event took (the
 * aggregation key of `counts`) -> the same stack as (build id, file offset) frames in
 * `ustacks`, resolved once per (process, stack), not per event. A plain id names the same
 * addresses in every process, hence the tgid. */
struct ubuild_key {
	__u32 tgid;
	__s32 user_stack_id;		/* of stack_traces */
};

struct ubuild_val {
	__s32 build_id_stack_id;	/* of ustacks; negative: the kernel could not store it */
	__u32 gen;			/* stack_gen when resolved: an older pair is stale */
	__u64 mm;			/* the process's mm then: an exec maps other files there */
};

/* the file a process exec'd, as execve() was given it (absolute when a shell or
 * execvp() found it on PATH): where user space looks for the build id of the main
 * binary's frames once the process has exited */
#define EXEC_PATH_LEN 256
struct exec_path {
	__u64 vdso;			/* where the vDSO was mapped (0: unknown): it has no file */
	char path[EXEC_PATH_LEN];
};

/* indexes of the per-CPU `stats` array */
#define STAT_STACK_ERRORS 0		/* bpf_get_stackid failed (hash collision, map full) */
#define STAT_MAP_FULL 1			/* a sample fit nowhere in `counts` */
#define STAT_SAMPLES 2			/* samples / blocks counted */
#define STAT_ALLOCS_FULL 3		/* mem: an allocation not tracked (allocs map full) */
#define STAT_USER_WALKS 4		/* offcpu: user stacks walked at switch-out (site changed) */
#define STAT_KERNEL_WALKS 5		/* offcpu: kernel stacks taken at switch-in (counted blocks) */
#define STAT_USER_UNVERIFIED 6		/* offcpu: counted blocks whose user stack id was reused on the
					 * registers alone (the site's previous block was not counted) */
#define STAT_UNSEEN_SWITCH_IN 7		/* offcpu: blocks whose end passed no sched_switch tracepoint,
					 * counted at the next switch-out (kernel stack lost) */
#define STAT_BUILD_ID_WALKS 8		/* user stacks taken with build ids (a new (process, stack) pair) */
#define STAT_N 9

#endif

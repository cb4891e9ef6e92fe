/* Shared layout of sys.bpf.c maps: the object's BTF carries it to Python. */
#ifndef BPFSCOPE_SYS_H
#define BPFSCOPE_SYS_H

#define TASK_COMM_LEN 16
#define SYS_MAX_ENTRIES 16384
#define SYS_SLOTS 4096		/* default slot count of the fast path; a power of two */

struct sys_key {
	__u32 tgid;
	__u32 nr;		/* syscall number */
};

struct sys_val {
	__u64 count;
	char comm[TASK_COMM_LEN];	/* written once, when the key is first seen */
};

/* One slot of the per-CPU direct-mapped table: owned by the first (tgid, nr) that
 * hashes there on that CPU; its count only grows until user space frees the slot. */
struct sys_slot {
	__u32 tgid;
	__u32 nr;
	__u64 count;
	char comm[TASK_COMM_LEN];
};

#endif

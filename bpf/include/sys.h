/* Shared layout of sys.bpf.c maps: the object's BTF carries it to Python. */
#ifndef BPFSCOPE_SYS_H
#define BPFSCOPE_SYS_H

#define TASK_COMM_LEN 16
#define SYS_MAX_ENTRIES 16384

struct sys_key {
	__u32 tgid;
	__u32 nr;		/* syscall number */
};

struct sys_val {
	__u64 count;
	char comm[TASK_COMM_LEN];	/* written once, when the key is first seen */
};

#endif

// SPDX-License-Identifier: GPL-2.0
/* bpfscope stack: call stacks counted in the kernel, per task and stack.
 *
 * cpu:    perf_event, software cpu-clock at --freq on every online CPU: one sample is
 *         one bpf_get_stackid() for the kernel and one for the user stack of whatever
 *         runs there, then one hash update. 49 Hz x 2 CPUs is ~100 samples/s: nothing.
 * offcpu: tp_btf/sched_switch alone, at the context-switch rate (up to ~10^5/s on a busy
 *         host); no second hook (a wake-up needs no record: the switch-in ends the block).
 *         At switch-out (current == prev): the time (the run queue's clock, three loads),
 *         the state and the user stack id into prev's task storage (`starts`); the id is
 *         reused from the task's walk at the same user ip/bp/sp, reading two user frame
 *         records to confirm it only near a walk or a counted block there, or when two
 *         walks share the registers. At switch-in of
 *         next: the blocked time; only a block >= min_block_ns takes the kernel stack
 *         (bpf_get_task_stack: next still waits in the scheduler), comm and cgroup, and
 *         updates the hash. A short block costs the hook, two task-storage lookups and a
 *         few loads (~100 ns over an empty program on the dev VM; a user read ~70 ns, a
 *         kernel walk ~2.2 us, a user walk ~0.9 us): bench/stack_offcpu_overhead.py.
 *
 * Stacks are interned in a BPF_MAP_TYPE_STACK_TRACE map (no BPF_F_REUSE_STACKID: an
 * id, once given, keeps naming the same stack until user space clears the map, so a
 * count read later can never be attributed to a different stack). A collision or a
 * full map is counted in `stats` and the key gets a negative id ("[lost stack]").
 * mem:    uprobes/uretprobes on libc's allocators and free, and on mmap/munmap (the
 *         program's own mappings: one user read of the return address per mmap); with --kernel,
 *         tp_btf kmalloc/kmem_cache_alloc/mm_page_alloc and their frees too (key.source
 *         tells them apart): a hash lookup per free and a stack walk per tracked
 *         allocation (filter with --pid or --comm).
 * load:   the cpu program behind a gate (an array user space arms every 100 ms while
 *         the run-queue length or PSI cpu some is above --threshold); quiet otherwise.
 * io:     raw_tp sys_exit (every syscall; a switch on the number keeps the work to the
 *         read/write family): bytes per user stack; and the block programs below.
 *
 * block (alone, or as io's second part, key.source STACK_SRC_BLOCK): tp_btf block_io_start (a request is made, in the submitter's context: stacks,
 *         task) -> block_rq_issue (given to the driver) -> block_rq_complete: device
 *         latency and bytes per stack. Three hash operations per request; the kernel
 *         stack is interned in kstacks (a lost stack would lose every request made there).
 *
 * See docs/design/stack-attribution.md for how pid/tid/comm/cgroup attach to a key.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "stack.h"

#define EFAULT 14
#define EEXIST 17
#define ENOMEM 12

const volatile __u32 target_tgid = 0;		/* 0: every process */
const volatile __u32 self_tgid = 0;		/* the exporter itself, never counted */
/* --comm: only tasks of this name (zero-padded, as bpf_get_current_comm fills it), so
 * that other tasks never take a slot in `counts` or a stack in stack_traces */
const volatile bool comm_filter = false;
const volatile char target_comm[TASK_COMM_LEN] = {};
const volatile __u64 target_cgroup_id = 0;	/* 0: every cgroup; else it and its descendants */
const volatile __u32 target_cgroup_level = 0;	/* depth of target_cgroup_id under the v2 root */
const volatile bool user_stacks = true;
const volatile bool kernel_stacks = true;
const volatile bool include_idle = false;	/* cpu: samples of the idle task (pid 0) */
const volatile __u64 min_block_ns = 10000;	/* offcpu: shorter blocks are not counted */
const volatile __u64 max_block_ns = ~0ULL;
const volatile __u32 sample_every = 1;		/* mem: track one allocation in N */
const volatile bool gated = false;		/* load: sample only while `gate` is armed */
/* mem: libc's mmap, to tell libc's own calls (malloc's large blocks) from the program's */
const volatile __u64 libc_mmap_vaddr = 0;	/* mmap's link-time address in libc */
const volatile __u64 libc_text_lo = 0;		/* libc's executable segment, link-time */
const volatile __u64 libc_text_hi = 0;		/* 0: unknown, every mmap is the program's */
const volatile __u64 page_size = 4096;
/* user stacks as (build id, file offset) frames, in `ustacks`: named after the process
 * exited (its /proc/PID/maps gone before the interval's read) */
const volatile bool user_build_id = false;

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, STACK_TRACES);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, STACK_MAX_DEPTH * sizeof(__u64));
} stack_traces SEC(".maps");

/* user stacks with user_build_id: each frame the kernel resolved to its file's GNU build
 * id and the file offset (status VALID), or left as an address (status IP: anonymous
 * memory, a file without a build id, a page of its headers not in the page cache).
 * Taken once per (process, plain stack id): see `ubuild` */
struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(map_flags, BPF_F_STACK_BUILD_ID);
	__uint(max_entries, STACK_TRACES / 4);	/* 4 KiB a stack: sized by user space */
	__uint(key_size, sizeof(__u32));
	__uint(value_size, STACK_MAX_DEPTH * sizeof(struct bpf_stack_build_id));
} ustacks SEC(".maps");

/* user_build_id: (tgid, plain user stack id) -> its build-id stack in `ustacks`. Every
 * event takes the cheap plain stack (the key of `counts`); the kernel resolves build ids
 * on every bpf_get_stackid() into ustacks, even for a stack it holds already (~8 us a
 * user stack here), so that is done only when this lookup misses. LRU: bounded, the
 * least used pairs go first; user space deletes the pairs of exited processes once their
 * last rows were read, and all of them when it clears the stack maps. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, STACK_MAX_ENTRIES);	/* sized by user space */
	__type(key, struct ubuild_key);
	__type(value, struct ubuild_val);
} ubuild SEC(".maps");

/* the file each process exec'd (tgid -> path), for user space to find a build id in */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct exec_path);
} execs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct exec_path);
} exec_buf SEC(".maps");

/* the tgids that exec'd a relative path (./prog): user space resolves it at once, through
 * /proc/PID/exe while the process lives (later the path means nothing without its cwd) */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 * 4096);
} relative_execs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, STACK_MAX_ENTRIES);
	__type(key, struct stack_key);
	__type(value, struct stack_val);
} counts SEC(".maps");

/* offcpu: per-task storage (no hash lookup; freed with the task, so a task that
 * exits while blocked leaves nothing behind) */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct offcpu_start);
} starts SEC(".maps");

/* offcpu: kernel stacks taken at switch-in (bpf_get_stackid can only walk `current`),
 * interned by content: the id is a hash of the frames; a different stack under a taken
 * id is a collision, counted like one of stack_traces. mem --kernel and block intern here too.
 * Preallocated: an insert never allocates, so a burst of new stacks is never refused. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, STACK_TRACES);
	__type(key, __u32);
	__type(value, struct kstack);
} kstacks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct kstack);
} kstack_buf SEC(".maps");

/* offcpu: bumped by user space each time it clears stack_traces, so that a user stack
 * id cached in `starts` from before the clear is walked again, not reused */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} stack_gen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, STAT_N);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

/* mem: live allocations by (tgid, address): an address alone is shared by processes (the
 * same heap address in two of them, one's free would take back the other's block); sizes
 * between a call's entry and its return */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, struct alloc_key);
	__type(value, struct alloc_info);
} allocs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u64);
} alloc_sizes SEC(".maps");

/* mem: the program's mappings by (tgid, start address) (alloc_info.size: whole pages),
 * the start of each by (tgid, its end) (to follow a munmap of a mapping's tail), and
 * mmap's length between entry and return */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct alloc_key);
	__type(value, struct alloc_info);
} mmaps SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct alloc_key);
	__type(value, __u64);
} mmap_ends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u64);
} mmap_lens SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct realloc_call);
} realloc_calls SEC(".maps");

/* mem: posix_memalign's out-pointer, between entry and return */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u64);
} memptrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} sample_tick SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct load_gate);
} gate SEC(".maps");

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&stats, &idx);

	if (v)
		(*v)++;
}

static __always_inline bool wanted(__u32 tgid)
{
	if (target_tgid && tgid != target_tgid)
		return false;
	if (tgid == self_tgid)
		return false;
	if (target_cgroup_id && bpf_get_current_ancestor_cgroup_id(target_cgroup_level) != target_cgroup_id)
		return false;
	if (comm_filter) {
		__u64 comm[TASK_COMM_LEN / 8] = {};

		bpf_get_current_comm(comm, sizeof(comm));
		if (comm[0] != ((const volatile __u64 *)target_comm)[0] ||
		    comm[1] != ((const volatile __u64 *)target_comm)[1])
			return false;
	}
	return true;
}

/* user_build_id: make sure `ubuild` pairs the current process's plain user stack id with
 * its build-id stack; the build-id walk (the expensive part) only on a miss: a new stack
 * of this process, a pair from before user space cleared the stack maps (gen) or from
 * before an exec (mm) */
static __always_inline void ubuild_note(void *ctx, __s32 id, __u64 flags)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct ubuild_key k = { .tgid = bpf_get_current_pid_tgid() >> 32, .user_stack_id = id };
	struct ubuild_val v = { .mm = (__u64)task->mm }, *old;
	__u32 zero = 0, *g;

	g = bpf_map_lookup_elem(&stack_gen, &zero);
	if (g)
		v.gen = *g;
	old = bpf_map_lookup_elem(&ubuild, &k);
	if (old && old->gen == v.gen && old->mm == v.mm)
		return;
	stat_inc(STAT_BUILD_ID_WALKS);
	v.build_id_stack_id = bpf_get_stackid(ctx, &ustacks, flags);
	/* a stack ustacks cannot hold is paired all the same (user space names it from its
	 * addresses), not walked again at every event until the maps are cleared */
	if (v.build_id_stack_id < 0 && v.build_id_stack_id != -EFAULT)
		stat_inc(STAT_STACK_ERRORS);
	bpf_map_update_elem(&ubuild, &k, &v, BPF_ANY);
}

static __always_inline __s32 stack_id(void *ctx, bool on, __u64 flags)
{
	long id;

	if (!on)
		return -1;
	id = bpf_get_stackid(ctx, &stack_traces, flags);
	if (id < 0) {
		if (id != -EFAULT)	/* -EFAULT: no such stack (a kernel thread's user side) */
			stat_inc(STAT_STACK_ERRORS);
		return id;
	}
	if (user_build_id && (flags & BPF_F_USER_STACK))
		ubuild_note(ctx, id, flags);
	return id;
}

static __always_inline void add(struct stack_key *key, __u64 ns)
{
	struct stack_val *val = bpf_map_lookup_elem(&counts, key);

	if (!val) {
		struct stack_val zero = {};

		bpf_map_update_elem(&counts, key, &zero, BPF_NOEXIST);
		val = bpf_map_lookup_elem(&counts, key);
		if (!val) {
			stat_inc(STAT_MAP_FULL);
			return;
		}
	}
	__sync_fetch_and_add(&val->count, 1);
	if (ns)
		__sync_fetch_and_add(&val->ns, ns);
	stat_inc(STAT_SAMPLES);
}

SEC("perf_event")
int cpu_sample(struct bpf_perf_event_data *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32, tid = (__u32)id;
	struct stack_key key = {};

	if (!tid && !include_idle)
		return 0;
	if (!wanted(tgid))
		return 0;
	key.state = STACK_STATE_RUNNING;
	if (gated) {	/* load mode: quiet unless user space armed the gate */
		__u32 zero = 0;
		struct load_gate *g = bpf_map_lookup_elem(&gate, &zero);

		if (!g || !g->armed)
			return 0;
		key.state = g->load;	/* load: the load the sample was taken at */
	}
	key.pid = tgid;
	key.tid = tid;
	key.cgroup_id = bpf_get_current_cgroup_id();
	key.user_stack_id = stack_id(ctx, user_stacks && tid, BPF_F_USER_STACK);
	key.kernel_stack_id = stack_id(ctx, kernel_stacks, 0);
	bpf_get_current_comm(key.comm, sizeof(key.comm));
	add(&key, 0);
	return 0;
}

/* every mode with user_build_id: the file a process exec'd (one hash update per exec) */
SEC("tp_btf/sched_process_exec")
int BPF_PROG(stack_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32, zero = 0;
	struct exec_path *buf;

	if (!wanted(tgid))	/* the new comm: set before the tracepoint */
		return 0;
	buf = bpf_map_lookup_elem(&exec_buf, &zero);
	if (!buf)
		return 0;
	buf->vdso = 0;	/* mapped by now (the binary's loader ran); x86 and arm64 keep it here */
	if (bpf_core_field_exists(p->mm->context.vdso))
		buf->vdso = (__u64)BPF_CORE_READ(p, mm, context.vdso);
	if (bpf_probe_read_kernel_str(buf->path, sizeof(buf->path), BPF_CORE_READ(bprm, filename)) <= 0)
		return 0;
	bpf_map_update_elem(&execs, &tgid, buf, BPF_ANY);
	if (buf->path[0] != '/')
		bpf_ringbuf_output(&relative_execs, &tgid, sizeof(tgid), 0);
	return 0;
}

static __always_inline __u32 state_class(bool preempt, unsigned int state)
{
	if (preempt || state == 0)	/* TASK_RUNNING: preempted, still runnable */
		return STACK_STATE_RUNNING;
	if (state & 1)			/* TASK_INTERRUPTIBLE */
		return STACK_STATE_SLEEP;
	if (state & 0x400)		/* TASK_IDLE = NOLOAD | UNINTERRUPTIBLE: an idle kthread */
		return STACK_STATE_SLEEP;
	if (state & 2)			/* TASK_UNINTERRUPTIBLE (incl. KILLABLE) */
		return STACK_STATE_DISK;
	return STACK_STATE_OTHER;
}

#define PF_KTHREAD 0x00200000

/* a frame record (saved bp, return address) can only be on the stack, above sp */
static __always_inline bool frame_record(__u64 addr, __u64 sp)
{
	return !(addr & 7) && addr >= sp && addr - sp < (8 << 20);
}

/* The user stack id of prev (current) at switch-out. A walk costs ~1 us; a user memory
 * read ~70 ns (bpf_probe_read_user: access checks, SMAP, speculation barriers), which at
 * ~10^5 switches/s is most of the program. So the id of one of the task's last two walks
 * is reused when its user ip, bp and sp (registers: plain loads) are the same; the two
 * innermost frame records ([bp], [bp+8], [[bp]], [[bp]+8]: two reads) are compared as well
 * unless that walk is the only one with these registers and it has gone OFFCPU_VERIFY
 * blocks without a counted one (a hot site of short blocks reads nothing). A frame-pointer
 * walk is a function of ip, bp and the chain of records, so a verified reuse is exact up
 * to a difference 3 or more frames above the leaf; an unverified one up to a difference 1
 * or more frames above it with ip, bp and sp equal (the same code at the same stack depth
 * reached from another caller), and only for the first counted block after 16 uncounted
 * ones at that site (STAT_USER_UNVERIFIED counts them). */
static __always_inline void read_records(__u64 *recs, __u64 bp, __u64 sp)
{
	/* only where a record can be: a faulting user read costs ~1 us (code without
	 * frame pointers leaves anything in bp) */
	if (frame_record(bp, sp)) {
		bpf_probe_read_user(&recs[0], 16, (void *)bp);
		if (recs[0] > bp && frame_record(recs[0], sp))
			bpf_probe_read_user(&recs[2], 16, (void *)recs[0]);
	}
}

static __always_inline __s32 offcpu_user_id(void *ctx, struct task_struct *prev, struct offcpu_start *s)
{
	struct pt_regs *regs;
	__u64 ip, bp, sp, recs[OFFCPU_RECS] = {};
	__u32 zero = 0, gen = 1, *g;
	bool read = false;
	int i, w, match = -1, matches = 0;

	s->slot = OFFCPU_NO_SLOT;
	s->unverified = 0;
	if (prev->flags & PF_KTHREAD)
		return -EFAULT;
	regs = (struct pt_regs *)bpf_task_pt_regs(prev);
#if defined(__TARGET_ARCH_x86)
	ip = regs->ip;	/* BTF loads: no helper call */
	bp = regs->bp;
	sp = regs->sp;
#else
	ip = PT_REGS_IP_CORE(regs);
	bp = PT_REGS_FP_CORE(regs);
	sp = PT_REGS_SP_CORE(regs);
#endif
	g = bpf_map_lookup_elem(&stack_gen, &zero);
	if (g)
		gen = *g + 1;	/* 0 in a walk slot: empty */
	for (w = 0; w < OFFCPU_WALKS; w++) {
		struct offcpu_walk *walk = &s->walks[w];

		if (walk->gen == gen && walk->user_stack_id >= 0 && walk->regs[0] == ip && walk->regs[1] == bp &&
		    walk->regs[2] == sp) {
			if (match < 0)
				match = w;
			matches++;
		}
	}
	if (matches == 1 && match >= 0 && match < OFFCPU_WALKS && !s->walks[match].verify) {
		s->slot = match;
		s->unverified = 1;
		return s->walks[match].user_stack_id;
	}
	if (matches) {	/* verify, or tell apart two walks with the same registers */
		read_records(recs, bp, sp);
		read = true;
		for (w = 0; w < OFFCPU_WALKS; w++) {
			struct offcpu_walk *walk = &s->walks[w];
			bool same = walk->gen == gen && walk->user_stack_id >= 0 && walk->regs[0] == ip &&
				    walk->regs[1] == bp && walk->regs[2] == sp;

			for (i = 0; i < OFFCPU_RECS; i++)
				if (walk->recs[i] != recs[i])
					same = false;
			if (same) {
				s->slot = w;
				return walk->user_stack_id;
			}
		}
	}
	if (!read)
		read_records(recs, bp, sp);
	stat_inc(STAT_USER_WALKS);
	w = (s->last + 1) % OFFCPU_WALKS;
	s->last = w;
	if (w < OFFCPU_WALKS) {	/* (for the verifier) */
		struct offcpu_walk *walk = &s->walks[w];

		walk->regs[0] = ip;
		walk->regs[1] = bp;
		walk->regs[2] = sp;
		__builtin_memcpy(walk->recs, recs, sizeof(recs));
		walk->gen = gen;
		walk->verify = OFFCPU_VERIFY;	/* a new site: verified for a while */
		walk->user_stack_id = stack_id(ctx, true, BPF_F_USER_STACK);
		s->slot = w;
		return walk->user_stack_id;
	}
	return -ENOMEM;
}

/* A kernel stack walked into buf (n bytes, the rest zero-filled by the helper), interned
 * in kstacks under a 31-bit hash of its frames: two stacks share an id about once in 2^31
 * pairs, where a BPF_MAP_TYPE_STACK_TRACE bucket (2^14 of them) loses one stack in a
 * hundred once a few hundred are stored. */
static __always_inline __s32 kstack_intern(struct kstack *buf, long n)
{
	__u64 h = 14695981039346656037ULL;	/* FNV-1a over the frames */
	struct kstack *old;
	__u32 id;
	long err;
	int i;

	if (n <= 0)
		return -EFAULT;
	for (i = 0; i < STACK_MAX_DEPTH && i * 8 < n; i++)
		h = (h ^ buf->ips[i]) * 1099511628211ULL;
	id = (__u32)(h ^ (h >> 32)) & 0x7fffffff;
	err = bpf_map_update_elem(&kstacks, &id, buf, BPF_NOEXIST);
	if (!err)
		return id;
	old = bpf_map_lookup_elem(&kstacks, &id);
	if (err != -EEXIST || !old) {
		stat_inc(STAT_STACK_ERRORS);
		return -ENOMEM;
	}
	for (i = 0; i < STACK_MAX_DEPTH; i++) {
		if (old->ips[i] != buf->ips[i]) {
			stat_inc(STAT_STACK_ERRORS);
			return -EEXIST;
		}
	}
	return id;
}

/* A kernel stack, interned: of task when given (offcpu: a task being switched in still
 * sits in __schedule), else of current (mem --kernel: ids live as long as the allocation,
 * so a stack lost to a shared bucket would stay lost; block: a lost stack loses every
 * request made there, bytes and all, not one sample of many). */
static __always_inline __s32 kstack_id(void *ctx, struct task_struct *task)
{
	struct kstack *buf;
	__u32 zero = 0;
	long n;

	buf = bpf_map_lookup_elem(&kstack_buf, &zero);
	if (!buf)
		return -ENOMEM;
	stat_inc(STAT_KERNEL_WALKS);
	if (task)
		n = bpf_get_task_stack(task, buf->ips, sizeof(buf->ips), 0);
	else
		n = bpf_get_stack(ctx, buf->ips, sizeof(buf->ips), 0);
	return kstack_intern(buf, n);
}

/* The time __schedule just read: rq->clock of this CPU (sched_clock-based; what
 * schedstat's run_delay is measured with), reached through the switching task's
 * cfs_rq (set for a task of any class on the CPU it is on). Three loads instead of a
 * clock read of our own (bpf_ktime_get_ns ~65 ns on the dev VM; `runqueues` itself is not
 * a ksym here: no KALLSYMS_ALL). After a wake-up preemption __schedule skips its clock
 * update, so the value is that of the wake-up, microseconds earlier, as in schedstat. */
static __always_inline __u64 sched_now(struct task_struct *task)
{
	if (bpf_core_field_exists(struct cfs_rq, rq)) {	/* CONFIG_FAIR_GROUP_SCHED */
		struct cfs_rq *cfs = task->se.cfs_rq;
		struct rq *rq = cfs ? cfs->rq : NULL;
		__u64 clock = rq ? rq->clock : 0;

		if (clock)
			return clock;
	}
	return bpf_ktime_get_ns();
}

/* A block of task ends: counted under the user stack taken at its switch-out and kstack. */
static __always_inline void count_block(struct task_struct *task, struct offcpu_start *s, __s32 kstack,
					__u64 delta)
{
	struct stack_key key = {};

	if (s->unverified)
		stat_inc(STAT_USER_UNVERIFIED);
	key.pid = task->tgid;
	key.tid = task->pid;
	key.cgroup_id = BPF_CORE_READ(task, cgroups, dfl_cgrp, kn, id);
	key.user_stack_id = s->user_stack_id;
	key.kernel_stack_id = kstack;
	key.state = s->state;
	bpf_probe_read_kernel(key.comm, sizeof(key.comm), task->comm);
	add(&key, delta);
}

SEC("tp_btf/sched_switch")
int BPF_PROG(offcpu_switch, bool preempt, struct task_struct *prev, struct task_struct *next,
	     unsigned int prev_state)
{
	__u64 now = sched_now(prev);
	__u32 prev_tid = prev->pid, next_tid = next->pid;
	struct offcpu_start *s;

	/* switch-out: the time, the state and (cheap when the site is known) the user stack */
	if (prev_tid && wanted(prev->tgid)) {
		s = bpf_task_storage_get(&starts, prev, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
		if (s) {
			/* a block whose end we did not see: this kernel now and then switches a
			 * task in without the tracepoint. It ended when the task last got a CPU
			 * (sched_info.last_arrival: the same run-queue clock); the kernel stack it
			 * had then is gone ("[lost stack]"). */
			if (s->ts) {
				__u64 arrived = prev->sched_info.last_arrival;

				if (arrived > s->ts && arrived - s->ts >= min_block_ns &&
				    arrived - s->ts <= max_block_ns) {
					stat_inc(STAT_UNSEEN_SWITCH_IN);
					count_block(prev, s, kernel_stacks ? -ENOMEM : -1, arrived - s->ts);
				}
			}
			s->ts = now;
			s->state = state_class(preempt, prev_state);
			if (user_stacks) {
				s->user_stack_id = offcpu_user_id(ctx, prev, s);
			} else {
				s->user_stack_id = -1;
				s->slot = OFFCPU_NO_SLOT;
			}
		}
	}

	/* switch-in: next's time off-CPU ends now; only a counted block costs more */
	if (!next_tid)
		return 0;
	s = bpf_task_storage_get(&starts, next, 0, 0);
	if (!s || !s->ts)
		return 0;
	if (now > s->ts) {
		__u64 delta = now - s->ts;
		bool counted = delta >= min_block_ns && delta <= max_block_ns;
		__u32 slot = s->slot;

		/* a counted block makes the next reuses at this site read the frame records */
		if (slot < OFFCPU_WALKS) {
			struct offcpu_walk *walk = &s->walks[slot];

			if (counted && walk->verify != OFFCPU_VERIFY)
				walk->verify = OFFCPU_VERIFY;
			else if (!counted && walk->verify)
				walk->verify--;
		}
		if (counted)
			count_block(next, s, kernel_stacks ? kstack_id(ctx, next) : -1, delta);
	}
	s->ts = 0;	/* counted once */
	return 0;
}

/* ---- mem: libc allocations through uprobes ------------------------------------------ */

/* one call in sample_every is tracked */
static __always_inline bool mem_sampled(void)
{
	__u32 zero = 0;
	__u64 *tick;

	if (sample_every > 1) {
		tick = bpf_map_lookup_elem(&sample_tick, &zero);
		if (!tick || (*tick)++ % sample_every)
			return false;
	}
	return true;
}

static __always_inline void mem_enter(__u64 size)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;

	if (!wanted(id >> 32) || !mem_sampled())
		return;
	bpf_map_update_elem(&alloc_sizes, &tid, &size, BPF_ANY);
}

/* the key of a live allocation or mapping: user addresses are per process, kernel
 * objects (tgid 0) are shared */
static __always_inline struct alloc_key akey(__u32 tgid, __u64 addr)
{
	struct alloc_key k = { .tgid = tgid, .addr = addr };

	return k;
}

/* count one live allocation at ptr (in `live`: allocs or mmaps) under the current task
 * and stacks; false if it could not be */
static __always_inline bool mem_track(void *ctx, void *live, __u64 ptr, __u64 size, __u32 source)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	struct alloc_key k = akey(source == STACK_SRC_KMEM ? 0 : id >> 32, ptr);
	struct alloc_info info = {};
	struct stack_val *val;

	info.size = size;
	info.key.pid = id >> 32;
	info.key.tid = tid;
	info.key.cgroup_id = bpf_get_current_cgroup_id();
	info.key.user_stack_id = stack_id(ctx, user_stacks && tid, BPF_F_USER_STACK);
	/* a uprobe's kernel stack is the breakpoint's handling: only kmem takes one */
	info.key.kernel_stack_id = kernel_stacks && source == STACK_SRC_KMEM ? kstack_id(ctx, NULL) : -1;
	info.key.source = source;
	bpf_get_current_comm(info.key.comm, sizeof(info.key.comm));
	if (bpf_map_update_elem(live, &k, &info, BPF_ANY)) {
		stat_inc(STAT_ALLOCS_FULL);
		return false;
	}
	val = bpf_map_lookup_elem(&counts, &info.key);
	if (!val) {
		struct stack_val zero = {};

		bpf_map_update_elem(&counts, &info.key, &zero, BPF_NOEXIST);
		val = bpf_map_lookup_elem(&counts, &info.key);
		if (!val) {
			stat_inc(STAT_MAP_FULL);
			bpf_map_delete_elem(live, &k);
			return false;
		}
	}
	__sync_fetch_and_add(&val->count, 1);
	__sync_fetch_and_add(&val->bytes, info.size);
	stat_inc(STAT_SAMPLES);
	return true;
}

/* take blocks and bytes back from the key an allocation was counted under */
static __always_inline void mem_uncount(struct stack_key *key, __s64 blocks, __s64 bytes)
{
	struct stack_val *val = bpf_map_lookup_elem(&counts, key);

	if (val) {
		__sync_fetch_and_add(&val->count, -blocks);
		__sync_fetch_and_add(&val->bytes, -bytes);
	}
}

static __always_inline void mem_return(void *ctx, __u64 ptr)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u64 *size = bpf_map_lookup_elem(&alloc_sizes, &tid);
	__u64 n;

	if (!size)
		return;
	n = *size;
	bpf_map_delete_elem(&alloc_sizes, &tid);
	if (ptr)
		mem_track(ctx, &allocs, ptr, n, STACK_SRC_MAIN);
}

/* tgid: the freeing process (libc), 0 for a kernel object */
static __always_inline void mem_free(__u32 tgid, __u64 ptr)
{
	struct alloc_key k = akey(tgid, ptr);
	struct alloc_info *info;

	if (!ptr)
		return;
	info = bpf_map_lookup_elem(&allocs, &k);
	if (!info)
		return;
	mem_uncount(&info->key, 1, info->size);
	bpf_map_delete_elem(&allocs, &k);
}

static __always_inline void mem_free_user(__u64 ptr)
{
	mem_free(bpf_get_current_pid_tgid() >> 32, ptr);
}

SEC("uprobe")
int BPF_KPROBE(malloc_enter, __u64 size) { mem_enter(size); return 0; }

SEC("uretprobe")
int BPF_KRETPROBE(malloc_return, void *ret) { mem_return(ctx, (__u64)ret); return 0; }

SEC("uprobe")
int BPF_KPROBE(calloc_enter, __u64 n, __u64 size) { mem_enter(n * size); return 0; }

SEC("uretprobe")
int BPF_KRETPROBE(calloc_return, void *ret) { mem_return(ctx, (__u64)ret); return 0; }

SEC("uprobe")
int BPF_KPROBE(realloc_enter, void *ptr, __u64 size)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;
	struct realloc_call call = { .ptr = (__u64)ptr, .size = size };

	/* every call, sampled or not: the old block may have been */
	if (ptr && wanted(id >> 32))
		bpf_map_update_elem(&realloc_calls, &tid, &call, BPF_ANY);
	mem_enter(size);
	return 0;
}

SEC("uretprobe")
int BPF_KRETPROBE(realloc_return, void *ret)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	struct realloc_call *call = bpf_map_lookup_elem(&realloc_calls, &tid);

	if (call) {
		/* the old block is gone (moved, or kept as the new one) once realloc returned
		 * one; NULL is a failure that leaves it allocated, except for realloc(p, 0),
		 * which frees p (glibc) */
		if (ret || !call->size)
			mem_free_user(call->ptr);
		bpf_map_delete_elem(&realloc_calls, &tid);
	}
	mem_return(ctx, (__u64)ret);	/* after the free: the new block may be the old one */
	return 0;
}

SEC("uprobe")
int BPF_KPROBE(aligned_alloc_enter, __u64 align, __u64 size) { mem_enter(size); return 0; }

SEC("uretprobe")
int BPF_KRETPROBE(aligned_alloc_return, void *ret) { mem_return(ctx, (__u64)ret); return 0; }

SEC("uprobe")
int BPF_KPROBE(posix_memalign_enter, void **memptr, __u64 align, __u64 size)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u64 where = (__u64)memptr;

	mem_enter(size);
	bpf_map_update_elem(&memptrs, &tid, &where, BPF_ANY);
	return 0;
}

SEC("uretprobe")
int BPF_KRETPROBE(posix_memalign_return, int ret)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid();
	__u64 *where = bpf_map_lookup_elem(&memptrs, &tid);
	__u64 ptr = 0;

	if (!where)
		return 0;
	if (ret == 0)
		bpf_probe_read_user(&ptr, sizeof(ptr), (void *)*where);
	bpf_map_delete_elem(&memptrs, &tid);
	mem_return(ctx, ptr);
	return 0;
}

SEC("uprobe")
int BPF_KPROBE(free_enter, void *ptr) { mem_free_user((__u64)ptr); return 0; }

/* ---- mem: the program's own mappings (libc mmap/munmap) ------------------------------
 * A mapping counts its whole pages on the stack that mapped it until they are unmapped.
 * munmap(addr, len) over [addr, addr + len rounded up to pages) follows:
 * - whole mappings starting at addr and laid end to end in the range (up to MUNMAP_SPAN):
 *   freed;
 * - a range that ends inside the mapping starting at addr (its head): the mapping is
 *   counted smaller, from the range's end on;
 * - a range ending where a mapping that starts below addr ends (its tail): smaller too.
 * A hole punched in the middle of a mapping, mremap and a MAP_FIXED mapping over part of
 * another are not followed: those bytes stay counted until the process exits. */
#define MUNMAP_SPAN 16

/* libc's own mmap calls (malloc's large blocks, counted by malloc) return into libc:
 * the return address, less the load bias (the probe sits at mmap's first instruction),
 * lies in libc's executable segment */
static __always_inline bool called_from_libc(struct pt_regs *ctx)
{
	__u64 ret = 0, bias;

	if (!libc_text_hi)
		return false;
#if defined(__TARGET_ARCH_x86)
	if (bpf_probe_read_user(&ret, sizeof(ret), (void *)PT_REGS_SP(ctx)))
		return false;
#else
	ret = PT_REGS_RET(ctx);	/* the link register */
#endif
	bias = PT_REGS_IP(ctx) - libc_mmap_vaddr;
	return ret - bias >= libc_text_lo && ret - bias < libc_text_hi;
}

static __always_inline __u64 page_up(__u64 n)
{
	return (n + page_size - 1) & ~(page_size - 1);
}

/* forget the whole mapping of process tgid at start */
static __always_inline void mmap_forget(__u32 tgid, __u64 start, struct alloc_info *info)
{
	struct alloc_key s = akey(tgid, start), e = akey(tgid, start + info->size);

	mem_uncount(&info->key, 1, info->size);
	bpf_map_delete_elem(&mmap_ends, &e);
	bpf_map_delete_elem(&mmaps, &s);
}

SEC("uprobe")
int BPF_KPROBE(mmap_enter, void *addr, __u64 len)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id;

	if (!wanted(id >> 32) || called_from_libc(ctx) || !mem_sampled())
		return 0;
	bpf_map_update_elem(&mmap_lens, &tid, &len, BPF_ANY);
	return 0;
}

SEC("uretprobe")
int BPF_KRETPROBE(mmap_return, void *ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tid = (__u32)id, tgid = id >> 32;
	__u64 *lenp = bpf_map_lookup_elem(&mmap_lens, &tid);
	__u64 ptr = (__u64)ret, size;
	struct alloc_key k, e;
	struct alloc_info *old;

	if (!lenp)
		return 0;
	size = page_up(*lenp);
	bpf_map_delete_elem(&mmap_lens, &tid);
	if (ptr == ~0ULL || !ptr || !size)	/* MAP_FAILED */
		return 0;
	k = akey(tgid, ptr);
	old = bpf_map_lookup_elem(&mmaps, &k);
	if (old)	/* MAP_FIXED over a mapping of ours at the same start: it is gone */
		mmap_forget(tgid, ptr, old);
	if (mem_track(ctx, &mmaps, ptr, size, STACK_SRC_MAIN)) {
		e = akey(tgid, ptr + size);
		bpf_map_update_elem(&mmap_ends, &e, &ptr, BPF_ANY);
	}
	return 0;
}

SEC("uprobe")
int BPF_KPROBE(munmap_enter, __u64 addr, __u64 len)
{
	__u32 pid = bpf_get_current_pid_tgid() >> 32;
	__u64 end, start, *startp, cut;
	struct alloc_key k, e;
	struct alloc_info *info, moved;
	int i;

	if (!len || (addr & (page_size - 1)))	/* EINVAL: nothing is unmapped */
		return 0;
	end = addr + page_up(len);
	/* the tail of a mapping that starts below addr */
	e = akey(pid, end);
	startp = bpf_map_lookup_elem(&mmap_ends, &e);
	if (startp && *startp < addr) {
		start = *startp;
		k = akey(pid, start);
		info = bpf_map_lookup_elem(&mmaps, &k);
		if (!info)
			return 0;
		cut = end - addr;
		mem_uncount(&info->key, 0, cut);
		info->size -= cut;
		bpf_map_delete_elem(&mmap_ends, &e);
		e = akey(pid, addr);
		bpf_map_update_elem(&mmap_ends, &e, &start, BPF_ANY);
		return 0;
	}
	for (i = 0; i < MUNMAP_SPAN && addr < end; i++) {
		k = akey(pid, addr);
		info = bpf_map_lookup_elem(&mmaps, &k);
		if (!info)
			break;
		if (addr + info->size <= end) {
			__u64 next = addr + info->size;

			mmap_forget(pid, addr, info);
			addr = next;
			continue;
		}
		/* its head: the rest, from end on, is still mapped */
		cut = end - addr;
		moved = *info;
		moved.size -= cut;
		mem_uncount(&info->key, 0, cut);
		e = akey(pid, addr + info->size);
		k = akey(pid, end);
		if (!bpf_map_update_elem(&mmaps, &k, &moved, BPF_ANY))
			bpf_map_update_elem(&mmap_ends, &e, &end, BPF_ANY);	/* now starts at end */
		k = akey(pid, addr);
		bpf_map_delete_elem(&mmaps, &k);
		break;
	}
	return 0;
}

/* ---- mem --kernel: kernel allocations (kmem tracepoints), outstanding per stack ------- */

static __always_inline bool kmem_sampled(void)
{
	__u32 zero = 0;
	__u64 *tick;

	if (!wanted(bpf_get_current_pid_tgid() >> 32))
		return false;
	if (sample_every > 1) {
		tick = bpf_map_lookup_elem(&sample_tick, &zero);
		if (!tick || (*tick)++ % sample_every)
			return false;
	}
	return true;
}

SEC("tp_btf/kmalloc")
int BPF_PROG(kmem_kmalloc, unsigned long call_site, const void *ptr, size_t bytes_req, size_t bytes_alloc)
{
	if (ptr && kmem_sampled())
		mem_track(ctx, &allocs, (__u64)ptr, bytes_alloc, STACK_SRC_KMEM);
	return 0;
}

SEC("tp_btf/kmem_cache_alloc")
int BPF_PROG(kmem_cache_alloc, unsigned long call_site, const void *ptr, struct kmem_cache *cache)
{
	if (ptr && kmem_sampled())
		mem_track(ctx, &allocs, (__u64)ptr, BPF_CORE_READ(cache, size), STACK_SRC_KMEM);
	return 0;
}

SEC("tp_btf/kfree")
int BPF_PROG(kmem_kfree, unsigned long call_site, const void *ptr)
{
	mem_free(0, (__u64)ptr);
	return 0;
}

SEC("tp_btf/kmem_cache_free")
int BPF_PROG(kmem_cache_free, unsigned long call_site, const void *ptr)
{
	mem_free(0, (__u64)ptr);
	return 0;
}

SEC("tp_btf/mm_page_alloc")
int BPF_PROG(kmem_page_alloc, struct page *page, unsigned int order)
{
	if (page && kmem_sampled())
		mem_track(ctx, &allocs, (__u64)page, 4096ULL << order, STACK_SRC_KMEM);
	return 0;
}

SEC("tp_btf/mm_page_free")
int BPF_PROG(kmem_page_free, struct page *page, unsigned int order)
{
	mem_free(0, (__u64)page);
	return 0;
}

/* ---- io: bytes of read/write-family system calls per user stack ------------------------ */

#if defined(__TARGET_ARCH_x86)
static __always_inline int io_direction(long nr)
{
	switch (nr) {
	case 0: case 17: case 19: case 295: case 327:	/* read pread64 readv preadv preadv2 */
		return 0;
	case 1: case 18: case 20: case 296: case 328:	/* write pwrite64 writev pwritev pwritev2 */
		return 1;
	}
	return -1;
}
#else
static __always_inline int io_direction(long nr)
{
	switch (nr) {
	case 63: case 67: case 65: case 69: case 286:	/* read pread64 readv preadv preadv2 */
		return 0;
	case 64: case 68: case 66: case 70: case 287:	/* write pwrite64 writev pwritev pwritev2 */
		return 1;
	}
	return -1;
}
#endif

SEC("raw_tp/sys_exit")
int BPF_PROG(io_sys_exit, struct pt_regs *regs, long ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct stack_key key = {};
	struct stack_val *val;
	long nr;
	int dir;

	if (ret < 0)
		return 0;
	if (!wanted(id >> 32))
		return 0;
#if defined(__TARGET_ARCH_x86)
	nr = BPF_CORE_READ(regs, orig_ax);
#else
	nr = BPF_CORE_READ(regs, syscallno);
#endif
	dir = io_direction(nr);
	if (dir < 0)
		return 0;
	key.pid = id >> 32;
	key.tid = (__u32)id;
	key.cgroup_id = bpf_get_current_cgroup_id();
	key.state = dir;	/* io: 0 read, 1 write */
	key.user_stack_id = stack_id(ctx, user_stacks, BPF_F_USER_STACK);
	key.kernel_stack_id = -1;
	bpf_get_current_comm(key.comm, sizeof(key.comm));
	val = bpf_map_lookup_elem(&counts, &key);
	if (!val) {
		struct stack_val zero = {};

		bpf_map_update_elem(&counts, &key, &zero, BPF_NOEXIST);
		val = bpf_map_lookup_elem(&counts, &key);
		if (!val) {
			stat_inc(STAT_MAP_FULL);
			return 0;
		}
	}
	__sync_fetch_and_add(&val->count, 1);
	__sync_fetch_and_add(&val->bytes, ret);
	stat_inc(STAT_SAMPLES);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

/* ---- block: block-device request latency and bytes per submitting stack --------------- */

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);	/* a request never completed is pushed out */
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct block_start);
} block_starts SEC(".maps");

SEC("tp_btf/block_io_start")
int BPF_PROG(block_start, struct request *rq)
{
	__u64 id = bpf_get_current_pid_tgid(), addr = (__u64)rq;
	struct block_start st = {};
	__u32 op;

	if (!wanted(id >> 32))
		return 0;
	op = rq->cmd_flags & 0xff;	/* REQ_OP_MASK: 0 read, 1 write, else flush, discard, ... */
	st.key.pid = id >> 32;
	st.key.tid = (__u32)id;
	st.key.cgroup_id = bpf_get_current_cgroup_id();
	st.key.state = op <= 1 ? op : 2;
	st.key.source = STACK_SRC_BLOCK;
	st.key.user_stack_id = stack_id(ctx, user_stacks && (__u32)id, BPF_F_USER_STACK);
	st.key.kernel_stack_id = kernel_stacks ? kstack_id(ctx, NULL) : -1;
	bpf_get_current_comm(st.key.comm, sizeof(st.key.comm));
	if (bpf_map_update_elem(&block_starts, &addr, &st, BPF_ANY))
		stat_inc(STAT_MAP_FULL);
	return 0;
}

SEC("tp_btf/block_rq_issue")
int BPF_PROG(block_issue, struct request *rq)
{
	__u64 addr = (__u64)rq;
	struct block_start *st = bpf_map_lookup_elem(&block_starts, &addr);

	if (st)
		st->issue_ts = bpf_ktime_get_ns();
	return 0;
}

SEC("tp_btf/block_rq_complete")
int BPF_PROG(block_complete, struct request *rq, blk_status_t error, unsigned int nr_bytes)
{
	__u64 addr = (__u64)rq, now = bpf_ktime_get_ns();
	struct block_start *st = bpf_map_lookup_elem(&block_starts, &addr);
	struct stack_val *val;

	if (!st)
		return 0;
	if (st->issue_ts && now > st->issue_ts) {
		val = bpf_map_lookup_elem(&counts, &st->key);
		if (!val) {
			struct stack_val zero = {};

			bpf_map_update_elem(&counts, &st->key, &zero, BPF_NOEXIST);
			val = bpf_map_lookup_elem(&counts, &st->key);
		}
		if (val) {
			__sync_fetch_and_add(&val->count, 1);
			__sync_fetch_and_add(&val->ns, now - st->issue_ts);
			__sync_fetch_and_add(&val->bytes, nr_bytes);
			stat_inc(STAT_SAMPLES);
		} else {
			stat_inc(STAT_MAP_FULL);
		}
	}
	bpf_map_delete_elem(&block_starts, &addr);
	return 0;
}

// SPDX-License-Identifier: GPL-2.0
/* bpfscope proc: a process's life: time per state, switch reasons, locks, lifecycle.
 *
 * Hooks: a perf_event program on the followed threads' own software context-switches
 * events (or, as a fallback, tp_btf sched_switch for the whole host),
 * sched_process_fork/exec/exit, lock:contention_begin/end, tracepoints
 * syscalls:sys_enter/exit_futex, and an iter/task that dumps every thread's accounting in
 * one read.
 *
 * Per-thread accounting lives in task storage (no hash lookup on the hot path; freed
 * with the task). A thread is in one state at a time (proc.h PROC_*); every transition
 * adds the time since the last one to the state it leaves:
 *   switch-out -> runnable (preempted or still TASK_RUNNING), sleep, iowait, disk, stopped;
 *   switch-in  -> running; a sleep ends, as runnable, when the kernel queued the thread.
 * Only switch-outs are hooked: the switch-in since the previous one is read from what the
 * kernel recorded at it (sched_info.last_arrival, and run_delay's growth: how long it
 * waited for the CPU), so no hook runs on every wake-up or switch-in of the host.
 * Only threads of the processes in `follow_bits` (the --pid tree; fork adds children, so
 * they are followed from their first instruction) have task storage in follow mode, and
 * only they carry the perf event (inherited by the threads and children they create):
 * every other task pays perf's own check of each switch, no BPF program. For followed
 * threads the kernel also counts the kernel and user stacks at switch-out per reason
 * (`reasons`), sends every state span through the ring buffer (the timeline) and
 * fork/exec/exit events, and counts futex waits per address and kernel lock contention
 * per lock.
 *
 * System-wide (follow = false) the scheduler hooks are not attached at all: the table
 * needs time on CPU, run-queue wait and switch counts, which the kernel keeps per task
 * already (se.sum_exec_runtime, sched_info.run_delay, nvcsw/nivcsw); the iterator reads
 * them. Only the lock contention hooks (they fire on contention only) and, with --futex,
 * the futex syscall tracepoints are attached.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "bpfscope.h"
#include "proc.h"

const volatile bool follow = false;		/* --pid mode: only `followed` processes */
const volatile bool timeline = true;		/* follow: state spans through the ring buffer */
const volatile bool stacks = true;		/* follow: stacks at switch-out */
const volatile __u32 self_tgid = 0;		/* the exporter itself, never followed */

BTF_EXPORT_STRUCT(proc_row);
BTF_EXPORT_STRUCT(proc_span);
BTF_EXPORT_STRUCT(proc_life);

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct proc_task);
} tasks SEC(".maps");

/* follow: a bitmap of followed tgids (bit tgid % 64 of word tgid / 64; user space sizes
 * it from pid_max). An array lookup is inlined by the verifier: the check every context
 * switch on the host pays is a few loads. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 32768 / 64);
	__type(key, __u32);
	__type(value, __u64);
} follow_bits SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_STACK_TRACE);
	__uint(max_entries, 8192);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, PROC_STACK_DEPTH * sizeof(__u64));
} stack_traces SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct proc_reason_key);
	__type(value, struct proc_reason_val);
} reasons SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct proc_wait_key);
	__type(value, struct proc_wait_val);
} futexes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct proc_wait_key);
	__type(value, struct proc_wait_val);
} klocks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20);
} events SEC(".maps");

/* what could not be kept: events the ring buffer had no room for (the timeline then has
 * gaps), and sights of a followed thread whose task storage could not be made (its time
 * before it last got a CPU is not counted, running_since_arrival); user space reports both */
enum { LOST_EVENTS = 0, LOST_STORAGE = 1, LOST_N = 2 };

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LOST_N);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

static __always_inline void count_lost(__u32 what)
{
	__u64 *n = bpf_map_lookup_elem(&lost, &what);

	if (n)
		(*n)++;
}

static __always_inline bool is_followed(__u32 tgid)
{
	__u32 idx = tgid >> 6;
	__u64 *w = bpf_map_lookup_elem(&follow_bits, &idx);

	return w && ((*w >> (tgid & 63)) & 1);
}

static __always_inline void set_followed(__u32 tgid, bool on)
{
	__u32 idx = tgid >> 6;
	__u64 *w = bpf_map_lookup_elem(&follow_bits, &idx);

	if (!w)
		return;
	if (on)
		__sync_fetch_and_or(w, 1ULL << (tgid & 63));
	else
		__sync_fetch_and_and(w, ~(1ULL << (tgid & 63)));
}

/* The accounting of a thread, created on first sight; in follow mode NULL unless its
 * process is followed (for every other task: one bitmap test, no storage). */
static __always_inline struct proc_task *task_of(struct task_struct *t)
{
	struct proc_task *s;

	if (follow && !is_followed(t->tgid))
		return NULL;
	s = bpf_task_storage_get(&tasks, t, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!s && follow)	/* no memory at hand (inside the scheduler), or storage busy */
		count_lost(LOST_STORAGE);
	return s;
}

/* Spans do not wake the reader: it drains the ring every 100 ms (a wake-up per span cost
 * the exporter a thread wake-up per context switch of the followed threads). Only when a
 * quarter of the ring is full does a span wake it early. */
static __always_inline __u64 span_wakeup(void)
{
	return bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) > (2 << 20) ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
}

static __always_inline void emit_span(struct task_struct *t, __u32 state, __u64 start, __u64 end)
{
	struct proc_span *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e) {
		count_lost(LOST_EVENTS);
		return;
	}
	e->type = PROC_EV_SPAN;
	e->tid = t->pid;
	e->tgid = t->tgid;
	e->state = state;
	e->start = start;
	e->end = end;
	bpf_ringbuf_submit(e, span_wakeup());
}

/* proc_task.exec_since when the CPU time at the start of a running stretch is not known:
 * not 0, which is a new thread's real CPU time at its first switch-in */
#define EXEC_UNKNOWN ((__u64)-1)

/* The time t ran in a running stretch of `wall` ns: the CPU time the kernel counted for it
 * meanwhile (what utime+stime and top show: a vCPU the host took away, or an interrupt
 * handled on its CPU, is not its time), else the wall time. */
static __always_inline __u64 running_ns(struct task_struct *t, struct proc_task *s, __u64 wall)
{
	__u64 exec = t->se.sum_exec_runtime;

	if (s->exec_since != EXEC_UNKNOWN && exec >= s->exec_since && exec - s->exec_since <= wall)
		return exec - s->exec_since;
	return wall;
}

/* Close the current state (its time goes to its bucket) and begin `state` now. */
static __always_inline void enter_state(struct task_struct *t, struct proc_task *s, __u32 state, __u64 now)
{
	if (s->since && now > s->since) {
		__u64 ns = now - s->since;

		if (s->state == PROC_RUNNING)
			ns = running_ns(t, s, ns);
		s->ns[s->state & (PROC_NSTATES - 1)] += ns;
		if (follow && timeline)
			emit_span(t, s->state, s->since, now);
	}
	s->state = state;
	s->since = now;
	s->exec_since = state == PROC_RUNNING ? t->se.sum_exec_runtime : EXEC_UNKNOWN;
}

static __always_inline void add_wait(void *map, struct task_struct *t, __u64 addr, __u32 flags, __u64 ns)
{
	struct proc_wait_key key = { .tgid = t->tgid, .tid = t->pid, .addr = addr, .flags = flags };
	struct proc_wait_val *v = bpf_map_lookup_elem(map, &key);

	if (!v) {
		struct proc_wait_val zero = {};

		bpf_map_update_elem(map, &key, &zero, BPF_NOEXIST);
		v = bpf_map_lookup_elem(map, &key);
		if (!v)
			return;
	}
	__sync_fetch_and_add(&v->count, 1);
	__sync_fetch_and_add(&v->ns, ns);
	if (ns > v->max_ns)
		v->max_ns = ns;
}

static __always_inline bool futex_waiting_cmd(__u32 op)
{
	__u32 cmd = op & ~(128 | 256);	/* FUTEX_PRIVATE_FLAG, FUTEX_CLOCK_REALTIME */

	/* WAIT, LOCK_PI, WAIT_BITSET, WAIT_REQUEUE_PI, LOCK_PI2 */
	return cmd == 0 || cmd == 6 || cmd == 9 || cmd == 11 || cmd == 13;
}

/* follow: a thread that blocks inside futex() starts a futex wait, read from the syscall's
 * own registers; it ends when the thread is switched back in. No syscall tracepoint (they
 * would send every syscall on the host through the traced path). */
static __always_inline void futex_sleep(struct task_struct *prev, struct proc_task *s, __u64 now)
{
#if defined(__TARGET_ARCH_x86)
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(prev);

	if (!regs || regs->orig_ax != 202 || !futex_waiting_cmd(regs->si))	/* __NR_futex */
		return;
	s->futex_uaddr = regs->di;
	s->futex_begin = now;
#elif defined(__TARGET_ARCH_arm64)
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(prev);

	if (!regs || regs->syscallno != 98 || !futex_waiting_cmd(regs->regs[1]))
		return;
	s->futex_uaddr = regs->regs[0];
	s->futex_begin = now;
#endif
}

static __always_inline __u32 state_at_switch_out(struct task_struct *prev, bool preempt, unsigned int prev_state)
{
	if (preempt || prev_state == 0)		/* TASK_RUNNING: still wants the CPU */
		return PROC_RUNNABLE;
	if (prev_state & 1)			/* TASK_INTERRUPTIBLE */
		return PROC_SLEEP;
	if (prev_state & 2) {			/* TASK_UNINTERRUPTIBLE */
		if (prev_state & 0x400)		/* TASK_NOLOAD: TASK_IDLE, an idle kthread */
			return PROC_SLEEP;
		if (BPF_CORE_READ_BITFIELD_PROBED(prev, in_iowait))
			return PROC_IOWAIT;
		return PROC_DISK;
	}
	if (prev_state & (4 | 8))		/* __TASK_STOPPED, __TASK_TRACED */
		return PROC_STOPPED;
	return PROC_OTHER;
}

/* The clock of the run queue t is on: the clock of sched_info (last_queued, run_delay).
 * Reached through the task (se.cfs_rq->rq is kept for every task with group scheduling):
 * this kernel has no data symbols in kallsyms, so no `runqueues` ksym. 0 when unknown. */
static __always_inline __u64 rq_clock_of(struct task_struct *t)
{
	if (!bpf_core_field_exists(t->se.cfs_rq))
		return 0;
	return BPF_CORE_READ(t, se.cfs_rq, rq, clock);
}

/* Time a thread switched in now spent queued for a CPU since its last switch-out: waits
 * the kernel already added to run_delay (before a migration) plus the one in progress. */
static __always_inline __u64 runnable_since_out(struct task_struct *t, struct proc_task *s)
{
	__u64 queued = t->sched_info.last_queued, clock = rq_clock_of(t), ns = 0;

	if (queued && clock > queued)
		ns = clock - queued;
	if (s->since && t->sched_info.run_delay > s->run_delay_out)
		ns += t->sched_info.run_delay - s->run_delay_out;
	return ns;
}

/* A thread is back on a CPU: its futex wait (if any) ends and its last switch-out's reason
 * gets the time it was off the CPU, both at `at` (its switch-in). */
static __always_inline void back_on_cpu(struct task_struct *t, struct proc_task *s, __u64 at)
{
	if (follow && s->futex_begin) {		/* a futex wait ends: the thread runs again */
		__u64 ns = at > s->futex_begin ? at - s->futex_begin : 0;

		s->futex_begin = 0;
		s->futex_ns += ns;
		s->futex_count++;
		add_wait(&futexes, t, s->futex_uaddr, 0, ns);
	}
	if (follow && stacks && s->out_ts) {
		struct proc_reason_key key = {
			.tgid = t->tgid, .tid = t->pid, .kstack = s->kstack, .ustack = s->ustack,
			.state = s->out_state, .preempt = s->preempt,
		};
		struct proc_reason_val *v = bpf_map_lookup_elem(&reasons, &key);

		if (!v) {
			struct proc_reason_val zero = {};

			bpf_map_update_elem(&reasons, &key, &zero, BPF_NOEXIST);
			v = bpf_map_lookup_elem(&reasons, &key);
		}
		if (v) {
			v->count++;
			v->ns += at > s->out_ts ? at - s->out_ts : 0;
		}
		s->out_ts = 0;
	}
}

/* When t, running now, arrived on its CPU: sched_info.last_arrival in its run queue's clock,
 * as a bpf_ktime_get_ns() time; 0 when not known. */
static __always_inline __u64 arrival_of(struct task_struct *t, __u64 now)
{
	__u64 arrived = t->sched_info.last_arrival, clock = rq_clock_of(t);

	return arrived && clock >= arrived && clock - arrived < now ? now - (clock - arrived) : 0;
}

/* A thread, running now (at its switch-out, or at its exit), not running by our account:
 *  - follow mode's perf_event hook sees only switch-outs: the switch-in since the last one
 *    is read here, from what the kernel recorded at that switch-in (sched_info);
 *  - first seen now (it was already on a CPU when following began);
 *  - with the tp_btf hook, a switch-in that passed no sched_switch tracepoint (seen on this
 *    VM's 6.18 kernel: a switch to another task, then the next switch-out of this one with
 *    no switch back in between, while /proc/PID/schedstat shows no wait).
 * It has been running since it last arrived on a CPU (sched_info.last_arrival); before
 * that it waited for the CPU for as long as its run_delay grew since its last switch-out
 * (the kernel adds each wait at the switch-in that ends it); the rest of the time since
 * then stays in the state it switched out into. An arrival before that state began means
 * the switch-out that began it never took the CPU away: the whole stretch was running. */
static __always_inline void running_since_arrival(struct task_struct *t, struct proc_task *s, __u64 now)
{
	__u64 at = arrival_of(t, now);
	__u64 exec_at = at ? t->se.prev_sum_exec_runtime : EXEC_UNKNOWN;	/* its CPU time when it arrived */
	__u64 waited = 0, rd = t->sched_info.run_delay;

	if (!s->since && s->state == PROC_RUNNABLE && at && rd < at) {
		/* a new child's first switch-out (proc_fork made its storage): it waited for its
		 * first CPU as long as its run_delay says, then ran */
		s->since = at - rd;
		enter_state(t, s, PROC_RUNNING, at);
		s->exec_since = exec_at;
	} else if (!s->since) {		/* first sight */
		s->state = PROC_RUNNING;
		s->since = at ?: now;
		s->exec_since = exec_at;
	} else if (at > s->since) {
		if (s->run_delay_out && rd > s->run_delay_out)
			waited = rd - s->run_delay_out;
		if (s->state != PROC_RUNNABLE && waited && at - waited > s->since)
			enter_state(t, s, PROC_RUNNABLE, at - waited);	/* woken, then queued */
		enter_state(t, s, PROC_RUNNING, at);
		s->exec_since = exec_at;
		back_on_cpu(t, s, at);
	} else if (at) {		/* never taken off the CPU: wall time (no CPU time at since) */
		s->state = PROC_RUNNING;
		s->exec_since = EXEC_UNKNOWN;
		back_on_cpu(t, s, s->since);
	}
}

/* The switch-out of prev, running now: what state it leaves for, its counts and stacks.
 * preempt: the kernel counted it as involuntary (nivcsw). */
static __always_inline void switch_out(void *ctx, struct task_struct *prev, struct proc_task *s, bool preempt,
				       unsigned int prev_state, __u64 now)
{
	__u32 state = state_at_switch_out(prev, preempt, prev_state);

	if (!s->since || (s->state != PROC_RUNNING && s->state != PROC_OTHER))	/* OTHER: exited */
		running_since_arrival(prev, s, now);
	enter_state(prev, s, state, now);
	s->run_delay_out = prev->sched_info.run_delay;
	s->csw_out = prev->nvcsw + prev->nivcsw;
	s->nivcsw_out = prev->nivcsw;
	if (preempt)
		s->nivcsw++;
	else
		s->nvcsw++;
	if (follow && !preempt && prev_state)
		futex_sleep(prev, s, now);
	if (follow && stacks) {
		s->kstack = bpf_get_stackid(ctx, &stack_traces, 0);
		s->ustack = bpf_get_stackid(ctx, &stack_traces, BPF_F_USER_STACK);
		s->out_state = state;
		s->preempt = preempt;
		s->out_ts = now;
	}
}

/* follow (the default hook): the switch-out of a followed thread, from a software
 * context-switches perf event of that thread (perf_event_open pid = the thread,
 * sample_period 1, inherit: its new threads and children get a copy of the event and of
 * this program). It runs in the thread's own context (current is the thread switching
 * out) and only for followed threads: every other task of the host pays perf's own check
 * of each switch, not a BPF program (bench/proc_hook_cost.py). The switch-in is read at the
 * next switch-out (running_since_arrival). */
SEC("perf_event")
int proc_switch_out(struct bpf_perf_event_data *ctx)
{
	struct task_struct *prev = bpf_get_current_task_btf();
	struct proc_task *s;
	__u64 csw = prev->nvcsw + prev->nivcsw;
	bool preempt;

	if (!prev->pid || !(s = task_of(prev)))
		return 0;
	if (s->csw_out == csw)		/* one thread, two events (opened on it and inherited): once */
		return 0;
	/* The kernel counted this switch-out already (nvcsw or nivcsw, in __schedule before
	 * the event): whichever grew since the last one says voluntary or involuntary, as
	 * /proc/PID/status counts them. First seen: still on the run queue (not blocked, nor
	 * dequeue-delayed) means preempted. */
	if (s->csw_out && csw == s->csw_out + 1)
		preempt = prev->nivcsw != s->nivcsw_out;
	else if (bpf_core_field_exists(prev->se.sched_delayed))
		preempt = prev->on_rq && !prev->se.sched_delayed;
	else
		preempt = prev->on_rq;
	switch_out(ctx, prev, s, preempt, prev->__state, bpf_ktime_get_ns());
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(proc_switch, bool preempt, struct task_struct *prev, struct task_struct *next,
	     unsigned int prev_state)
{
	__u64 now = 0, queued;
	struct proc_task *s;

	if (prev->pid && (s = task_of(prev))) {
		now = bpf_ktime_get_ns();
		switch_out(ctx, prev, s, preempt || !prev_state, prev_state, now);
	}
	if (!next->pid || !(s = task_of(next)))
		return 0;
	if (!now)
		now = bpf_ktime_get_ns();
	/* How long next waited for this CPU since it was queued (woken, or preempted): what
	 * the kernel adds to its run_delay right after this tracepoint, in the run queue's
	 * clock (already updated by this __schedule). */
	queued = runnable_since_out(next, s);
	if (!s->since) {			/* first sight (a new child): runnable until now */
		s->state = PROC_RUNNABLE;
		s->since = now - queued;
	} else if (s->state != PROC_RUNNING && s->state != PROC_RUNNABLE && queued &&
		   now - queued > s->since) {	/* a sleep closed by a wake-up */
		enter_state(next, s, PROC_RUNNABLE, now - queued);
	}
	enter_state(next, s, PROC_RUNNING, now);
	back_on_cpu(next, s, now);
	return 0;
}

/* ---- lifecycle (follow mode) --------------------------------------------------------- */

static __always_inline struct proc_life *new_event(__u32 type, struct task_struct *t)
{
	struct proc_life *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e) {
		count_lost(LOST_EVENTS);
		return NULL;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->type = type;
	e->tid = t->pid;
	e->tgid = t->tgid;
	e->ts = bpf_ktime_get_ns();
	e->start_time = t->start_time;
	bpf_probe_read_kernel_str(e->comm, sizeof(e->comm), t->comm);
	return e;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(proc_fork, struct task_struct *parent, struct task_struct *child)
{
	struct proc_task *s;
	struct proc_life *e;
	__u32 tgid = child->tgid;

	if (!follow || !task_of(parent))
		return 0;
	/* the child is followed from now on, before it runs its first instruction */
	set_followed(tgid, true);
	s = bpf_task_storage_get(&tasks, child, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (s)
		s->state = PROC_RUNNABLE;	/* since stays 0: its first switch-in sets it */
	e = new_event(PROC_EV_FORK, child);
	if (!e)
		return 0;
	e->ptid = parent->pid;
	e->ppid = parent->tgid;
	e->thread = child->tgid == parent->tgid;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(proc_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	struct proc_life *e;

	if (!follow || !task_of(p))
		return 0;
	e = new_event(PROC_EV_EXEC, p);
	if (!e)
		return 0;
	e->ptid = old_pid;
	bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), BPF_CORE_READ(bprm, filename));
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(proc_exit, struct task_struct *p, bool group_dead)
{
	struct proc_task *s;
	struct proc_life *e;
	__u64 now;

	if (!follow || !(s = task_of(p)))
		return 0;
	now = bpf_ktime_get_ns();
	if (s->state != PROC_RUNNING)	/* it runs (this is its exit): a switch-in was not seen */
		running_since_arrival(p, s, now);
	enter_state(p, s, PROC_OTHER, now);	/* its running time ends here */
	e = new_event(PROC_EV_EXIT, p);
	if (!e)
		return 0;
	if (group_dead)		/* its pid may be given to an unrelated process next */
		set_followed(p->tgid, false);
	e->exit_code = BPF_CORE_READ(p, exit_code);
	e->group_dead = group_dead;
	e->ppid = BPF_CORE_READ(p, real_parent, tgid);
	__builtin_memcpy(e->ns, s->ns, sizeof(e->ns));
	e->nvcsw = s->nvcsw;
	e->nivcsw = s->nivcsw;
	e->lock_ns = s->lock_ns;
	e->lock_count = s->lock_count;
	e->futex_ns = s->futex_ns;
	e->futex_count = s->futex_count;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/* ---- waits: futexes (syscall tracepoints) and kernel locks ------------------------- */

SEC("tracepoint/syscalls/sys_enter_futex")
int proc_futex_enter(struct trace_event_raw_sys_enter *ctx)
{
	struct task_struct *t = bpf_get_current_task_btf();
	struct proc_task *s;
	__u32 cmd = ctx->args[1] & ~(128 | 256);	/* FUTEX_PRIVATE_FLAG, FUTEX_CLOCK_REALTIME */

	/* the waiting commands: WAIT, LOCK_PI, WAIT_BITSET, WAIT_REQUEUE_PI, LOCK_PI2 */
	if (cmd != 0 && cmd != 6 && cmd != 9 && cmd != 11 && cmd != 13)
		return 0;
	if (!(s = task_of(t)))
		return 0;
	s->futex_begin = bpf_ktime_get_ns();
	s->futex_uaddr = ctx->args[0];
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_futex")
int proc_futex_exit(struct trace_event_raw_sys_exit *ctx)
{
	struct task_struct *t = bpf_get_current_task_btf();
	struct proc_task *s = task_of(t);
	__u64 now, ns;

	if (!s || !s->futex_begin)
		return 0;
	now = bpf_ktime_get_ns();
	ns = now - s->futex_begin;
	s->futex_begin = 0;
	s->futex_ns += ns;
	s->futex_count++;
	if (follow)
		add_wait(&futexes, t, s->futex_uaddr, 0, ns);
	return 0;
}

SEC("tp_btf/contention_begin")
int BPF_PROG(proc_lock_begin, void *lock, unsigned int flags)
{
	struct proc_task *s = task_of(bpf_get_current_task_btf());

	if (!s)
		return 0;
	if (!s->lock_begin || s->lock_addr != (__u64)lock) {	/* a mutex spins, then sleeps: one wait */
		s->lock_begin = bpf_ktime_get_ns();
		s->lock_addr = (__u64)lock;
	}
	s->lock_flags = flags;
	return 0;
}

SEC("tp_btf/contention_end")
int BPF_PROG(proc_lock_end, void *lock, int ret)
{
	struct task_struct *t = bpf_get_current_task_btf();
	struct proc_task *s = task_of(t);
	__u64 ns;

	if (!s || !s->lock_begin || s->lock_addr != (__u64)lock)
		return 0;
	ns = bpf_ktime_get_ns() - s->lock_begin;
	s->lock_begin = 0;
	s->lock_ns += ns;
	s->lock_count++;
	/* system-wide: per thread and lock type only (the table's lock_type label), not per
	 * lock: a host has far more locks than a map should hold */
	add_wait(&klocks, t, follow ? (__u64)lock : 0, s->lock_flags, ns);
	return 0;
}

/* ---- --pthread: hold times of libc locks (uprobes; opt-in: every call pays a trap) -- */

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct proc_held_key);
	__type(value, struct proc_held);
} held SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct proc_wait_key);
	__type(value, struct proc_wait_val);
} pholds SEC(".maps");

static __always_inline void pt_lock(__u64 addr, __u32 kind)
{
	struct proc_task *s = task_of(bpf_get_current_task_btf());

	if (!s)
		return;
	s->ulock_addr = addr;
	s->ulock_kind = kind;
}

SEC("uprobe")
int BPF_KPROBE(pt_mutex_lock, void *lock) { pt_lock((__u64)lock, PROC_PT_MUTEX); return 0; }

SEC("uprobe")
int BPF_KPROBE(pt_rdlock, void *lock) { pt_lock((__u64)lock, PROC_PT_RDLOCK); return 0; }

SEC("uprobe")
int BPF_KPROBE(pt_wrlock, void *lock) { pt_lock((__u64)lock, PROC_PT_WRLOCK); return 0; }

SEC("uprobe")
int BPF_KPROBE(pt_spin_lock, void *lock) { pt_lock((__u64)lock, PROC_PT_SPIN); return 0; }

/* the lock call returned: held from now (when it succeeded) */
SEC("uretprobe")
int BPF_KRETPROBE(pt_lock_return, int ret)
{
	struct task_struct *t = bpf_get_current_task_btf();
	struct proc_task *s = task_of(t);
	struct proc_held_key key = {};
	struct proc_held h = {};

	if (!s || !s->ulock_addr)
		return 0;
	if (ret == 0) {
		key.tid = t->pid;
		key.addr = s->ulock_addr;
		h.since = bpf_ktime_get_ns();
		h.kind = s->ulock_kind;
		bpf_map_update_elem(&held, &key, &h, BPF_ANY);
	}
	s->ulock_addr = 0;
	return 0;
}

SEC("uprobe")
int BPF_KPROBE(pt_unlock, void *lock)
{
	struct task_struct *t = bpf_get_current_task_btf();
	struct proc_held_key key = { .tid = t->pid, .addr = (__u64)lock };
	struct proc_held *h;
	__u64 now;

	if (follow && !is_followed(t->tgid))
		return 0;
	h = bpf_map_lookup_elem(&held, &key);
	if (!h)
		return 0;
	now = bpf_ktime_get_ns();
	if (now > h->since)
		add_wait(&pholds, t, (__u64)lock, h->kind, now - h->since);
	bpf_map_delete_elem(&held, &key);
	return 0;
}

/* ---- iter/task: every accounted thread, one row each --------------------------------- */

SEC("iter/task")
int proc_dump(struct bpf_iter__task *ctx)
{
	struct task_struct *t = ctx->task;
	struct proc_task *s;
	struct proc_row row = {};
	__u64 now = bpf_ktime_get_ns();

	if (!t)
		return 0;
	s = bpf_task_storage_get(&tasks, t, 0, 0);
	if (follow && !s)
		return 0;
	row.tid = t->pid;
	row.tgid = t->tgid;
	row.ppid = BPF_CORE_READ(t, real_parent, tgid);
	row.start_time = t->start_time;
	row.sum_exec_ns = t->se.sum_exec_runtime;
	row.run_delay_ns = t->sched_info.run_delay;
	row.knvcsw = t->nvcsw;
	row.knivcsw = t->nivcsw;
	row.kstate = t->__state;
	row.kthread = !!(t->flags & 0x00200000);	/* PF_KTHREAD */
	__builtin_memcpy(row.comm, t->comm, sizeof(row.comm));
	if (s) {
		row.accounted = follow;
		row.state = s->state;
		__builtin_memcpy(row.ns, s->ns, sizeof(row.ns));
		if (s->since && now > s->since) {
			/* a sleeping thread already queued (woken, not on a CPU yet): runnable
			 * since then, by its run queue's clock (up to a tick behind) */
			__u64 queued = t->sched_info.last_queued, waiting = 0, clock, at = 0;

			/* on a CPU again since its last switch-out, which the perf_event hook
			 * reads at the next one: running since it arrived, after waiting as long
			 * as its run_delay grew (running_since_arrival) */
			if (s->state != PROC_RUNNING && t->on_cpu)
				at = arrival_of(t, now);
			if (at > s->since) {
				__u64 waited = 0, rd = t->sched_info.run_delay;

				if (s->run_delay_out && rd > s->run_delay_out)
					waited = rd - s->run_delay_out;
				if (s->state == PROC_RUNNABLE || waited > at - s->since)
					waited = at - s->since;
				row.ns[s->state & (PROC_NSTATES - 1)] += at - s->since - waited;
				row.ns[PROC_RUNNABLE & (PROC_NSTATES - 1)] += waited;
				row.ns[PROC_RUNNING] += now - at;
			} else {
				if (s->state != PROC_RUNNING && s->state != PROC_RUNNABLE && queued) {
					clock = rq_clock_of(t);
					waiting = clock > queued ? clock - queued : 0;
				}
				if (waiting > now - s->since)
					waiting = now - s->since;
				if (s->state == PROC_RUNNING)	/* sum_exec_runtime: up to a tick behind */
					row.ns[PROC_RUNNING] += running_ns(t, s, now - s->since);
				else
					row.ns[s->state & (PROC_NSTATES - 1)] += now - s->since - waiting;
				row.ns[PROC_RUNNABLE & (PROC_NSTATES - 1)] += waiting;
			}
		} else if (!s->since && s->state == PROC_RUNNABLE && t->on_cpu) {
			/* a new child on its first CPU, not switched out yet: it waited for as
			 * long as its run_delay says, then ran (running_since_arrival) */
			__u64 at = arrival_of(t, now), rd = t->sched_info.run_delay;

			if (at && rd < at) {
				row.ns[PROC_RUNNABLE & (PROC_NSTATES - 1)] += rd;
				row.ns[PROC_RUNNING] += now - at;
			}
		}
		row.nvcsw = s->nvcsw;
		row.nivcsw = s->nivcsw;
		row.lock_ns = s->lock_ns;
		row.lock_count = s->lock_count;
		row.futex_ns = s->futex_ns;
		row.futex_count = s->futex_count;
	}
	bpf_seq_write(ctx->meta->seq, &row, sizeof(row));
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

// SPDX-License-Identifier: GPL-2.0
/* bpfscope net: every TCP connection with its owner, direction and tcp_sock internals;
 * close records, TCP events and packet drops.
 *
 * Hooks and what they cost (no kprobes, no fentry: see docs/design/kernel-hooks.md):
 * - iter/tcp (net_iter_tcp): run by Python once per interval; one fixed-size record per
 *   full TCP socket of the exporter's network namespace (bpf_seq_write). Nothing fires
 *   between intervals.
 * - iter/task_file (net_iter_owner): run only when the last snapshot had sockets with no
 *   known owner (sockets older than bpfscope); walks every task's file table once.
 * - tp_btf/inet_sock_set_state: one firing per TCP state change. Records the owner of a
 *   connect()/listen() in the caller's context, marks accepted sockets, and sends the
 *   final record of a connection on its way to TCP_CLOSE (one ring-buffer record).
 * - tp_btf/sock_send_length, sock_recv_length: one firing per send/recv syscall on any
 *   socket; an array lookup by socket cookie (a socket-storage lookup when the socket's
 *   slot is another's), and the owner is written the first time only.
 * - With --events: tcp_retransmit_skb, tcp_send_reset, tcp_receive_reset,
 *   tcp_cong_state_set: one ring-buffer record each; tcp_probe (every segment a
 *   connection receives): a socket-storage lookup, a record when the connection leaves
 *   slow start or goes back to it, or its receive window closes.
 * - With --drops: skb:kfree_skb, counted per drop reason in a per-CPU hash; one
 *   ring-buffer record per dropped IP packet.
 * - With --latency: netif_rx, napi_gro_receive_entry, netif_receive_skb[_list]_entry,
 *   netif_receive_skb, tcp_probe, skb_copy_datagram_iovec, tcp_sendmsg_locked,
 *   net_dev_queue, net_dev_xmit: per packet and hook a per-CPU countdown (start hooks) or
 *   one inlined array read and two compares (the others); for the 1 in N sampled a mark
 *   written per layer, a per-CPU histogram increment per stage and the connection's sums
 *   in socket storage; net_dev_queue also reads one array slot for a pending sampled send
 *   of the socket. net_iter_tcp reads the sums with the snapshot (no second walk).
 * The owner lives in a slot of an array indexed by socket cookie, freed when the socket
 * closes, or, when another open socket holds that slot, in socket-local storage
 * (BPF_MAP_TYPE_SK_STORAGE, freed with the socket): no owner is ever read for a socket it
 * does not belong to (docs/design/net-attribution.md).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "bpfscope.h"
#include "net.h"

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6

const volatile bool emit_events = false;	/* connect/accept records (--events) */
const volatile __u32 latency_sample = 1;	/* --latency: follow 1 packet in N */
/* false when nothing reads close records (only the live table): closes are counted per
 * direction here instead of one ring-buffer record each */
const volatile bool close_records = true;
const volatile bool latency_on = false;	/* --latency */
/* owner_slots has owner_mask + 1 entries (a power of two; Python sizes both before load) */
const volatile __u32 owner_mask = NET_OWNER_SLOTS - 1;

static __always_inline void lat_forget_send(const struct sock *sk);

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct net_owner);
} owners SEC(".maps");

/* The owners of most sockets, direct-mapped by socket cookie: no allocation per socket
 * (socket storage costs a memcg-charged kzalloc and an RCU free, ~1 us a socket). Cookies
 * are handed out nearly in sequence, so live sockets rarely share a slot; a socket whose
 * slot another live socket holds keeps its owner in `owners` instead. A slot is freed when
 * its socket reaches TCP_CLOSE, and a closed socket never claims one: a slot only ever names
 * a socket that is still open, never a stale one (cookies are never reused). */
struct owner_slot {
	__u64 cookie;		/* 0: free */
	struct net_owner ow;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, NET_OWNER_SLOTS);
	__type(key, __u32);
	__type(value, struct owner_slot);
} owner_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 << 20);
} events SEC(".maps");

/* Packets freed with a drop reason, per reason (reason values come from kernel BTF). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, NET_MAX_DROP_REASONS);
	__type(key, __u32);
	__type(value, __u64);
} drops SEC(".maps");

/* Closed connections per enum net_dir, without close_records. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 3);
	__type(key, __u32);
	__type(value, __u64);
} closes SEC(".maps");

/* Ring-buffer records that did not fit (index 0), per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

/* Scratch space for the iterator's record (too big for comfort on the BPF stack). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct net_tcp_info);
} scratch SEC(".maps");

/* --latency, per connection: sampled packets' time per stage; only sockets that had a
 * sampled packet get one (no prealloc). */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct net_conn_lat);
} conn_lat SEC(".maps");

/* --events: what the last segment a connection received showed (TCP_SEEN_*), kept only
 * once something differs from a new connection's (in slow start, window open). */
#define TCP_SEEN_PAST_SLOW_START 1
#define TCP_SEEN_WINDOW_CLOSED 2

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u8);
} tcp_seen SEC(".maps");

static const struct net_conn_lat no_lat = {};

BTF_EXPORT_STRUCT(net_conn_lat);
BTF_EXPORT_STRUCT(net_event);
BTF_EXPORT_STRUCT(net_tcp_info);

static __always_inline bool is_inet_tcp(const struct sock *sk)
{
	__u16 family;

	if (!sk || sk->sk_protocol != IPPROTO_TCP)
		return false;
	family = sk->__sk_common.skc_family;
	return family == AF_INET || family == AF_INET6;
}

static __always_inline struct owner_slot *slot_of(__u64 cookie)
{
	__u32 i = cookie & owner_mask;

	return bpf_map_lookup_elem(&owner_slots, &i);
}

/* The owner record of sk, or NULL when none was written. */
static __always_inline struct net_owner *owner_find(void *sk, __u64 cookie)
{
	struct owner_slot *slot = slot_of(cookie);

	if (slot && slot->cookie == cookie)
		return &slot->ow;
	return bpf_sk_storage_get(&owners, sk, 0, 0);
}

/* The owner record of sk, created (zeroed) when it has none: in its slot when free, else in
 * socket storage. A closed socket (closing: it will not pass TCP_CLOSE again to free a slot)
 * gets socket storage. */
static __always_inline struct net_owner *owner_get(struct sock *sk, __u64 cookie, bool closed)
{
	struct owner_slot *slot = slot_of(cookie);
	struct net_owner *ow;
	__u64 old;

	if (!slot)
		return NULL;
	if (slot->cookie == cookie)
		return &slot->ow;
	ow = bpf_sk_storage_get(&owners, sk, 0, 0);
	if (ow || closed || slot->cookie)
		return ow ?: bpf_sk_storage_get(&owners, sk, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	old = __sync_val_compare_and_swap(&slot->cookie, 0, cookie);
	if (old == 0) {
		__builtin_memset(&slot->ow, 0, sizeof(slot->ow));
		return &slot->ow;
	}
	if (old == cookie)	/* another CPU claimed it for this socket just now */
		return &slot->ow;
	return bpf_sk_storage_get(&owners, sk, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
}

/* sk reached TCP_CLOSE: its slot is free for the next socket. */
static __always_inline void owner_release(__u64 cookie)
{
	struct owner_slot *slot = slot_of(cookie);

	if (slot && slot->cookie == cookie)
		__sync_val_compare_and_swap(&slot->cookie, cookie, 0);
}

static __always_inline void owner_from_current(struct net_owner *ow, __u8 src)
{
	__u64 id = bpf_get_current_pid_tgid();

	ow->pid = id >> 32;
	ow->tid = (__u32)id;
	ow->src = src;
	bpf_get_current_comm(ow->comm, sizeof(ow->comm));
}

static __always_inline void fill_tuple(struct net_tcp_info *ti, const struct sock_common *skc)
{
	ti->family = skc->skc_family;
	ti->state = skc->skc_state;
	ti->sport = skc->skc_num;
	ti->dport = bpf_ntohs(skc->skc_dport);
	if (ti->family == AF_INET) {
		__u32 s = skc->skc_rcv_saddr, d = skc->skc_daddr;

		__builtin_memcpy(ti->saddr, &s, 4);
		__builtin_memcpy(ti->daddr, &d, 4);
	} else {
		bpf_probe_read_kernel(ti->saddr, 16, &skc->skc_v6_rcv_saddr);
		bpf_probe_read_kernel(ti->daddr, 16, &skc->skc_v6_daddr);
	}
	/* tcp_set_state(TCP_CLOSE) releases the port (skc_num = 0) before the tracepoint;
	 * a full socket still has it in inet_sport */
	if (!ti->sport && ti->state != TCP_TIME_WAIT && ti->state != TCP_NEW_SYN_RECV)
		ti->sport = bpf_ntohs(BPF_CORE_READ((struct inet_sock *)skc, inet_sport));
	ti->netns = BPF_CORE_READ(skc, skc_net.net, ns.inum);
}

/* The addresses and ports of a packet (IPv4/IPv6, TCP/UDP ports); reply: seen from the
 * side that answers it (a reset sent for it). Returns the IP protocol, 0 if not IP. */
static __always_inline __u8 fill_from_skb(struct net_tcp_info *ti, const struct sk_buff *skb, bool reply)
{
	unsigned char *head = BPF_CORE_READ(skb, head);
	__u16 nh = BPF_CORE_READ(skb, network_header);
	__u16 th = BPF_CORE_READ(skb, transport_header);
	__u8 ver = 0, proto = 0;
	__u16 ports[2] = {};

	if (!head || nh == (__u16)~0)
		return 0;
	bpf_probe_read_kernel(&ver, 1, head + nh);
	ver >>= 4;
	if (ver == 4) {
		struct iphdr iph;

		if (bpf_probe_read_kernel(&iph, sizeof(iph), head + nh))
			return 0;
		ti->family = AF_INET;
		__builtin_memcpy(reply ? ti->daddr : ti->saddr, &iph.saddr, 4);
		__builtin_memcpy(reply ? ti->saddr : ti->daddr, &iph.daddr, 4);
		proto = iph.protocol;
		if (th == (__u16)~0 || th <= nh)
			th = nh + iph.ihl * 4;
	} else if (ver == 6) {
		struct ipv6hdr ip6;

		if (bpf_probe_read_kernel(&ip6, sizeof(ip6), head + nh))
			return 0;
		ti->family = AF_INET6;
		__builtin_memcpy(reply ? ti->daddr : ti->saddr, &ip6.saddr, 16);
		__builtin_memcpy(reply ? ti->saddr : ti->daddr, &ip6.daddr, 16);
		proto = ip6.nexthdr;
		if (th == (__u16)~0 || th <= nh)
			th = nh + sizeof(ip6);
	} else {
		return 0;
	}
	if ((proto == IPPROTO_TCP || proto == 17) && !bpf_probe_read_kernel(ports, sizeof(ports), head + th)) {
		ti->sport = bpf_ntohs(reply ? ports[1] : ports[0]);
		ti->dport = bpf_ntohs(reply ? ports[0] : ports[1]);
	}
	return proto;
}

static __always_inline void fill_tcp(struct net_tcp_info *ti, struct tcp_sock *tp)
{
	const struct sock *sk = &tp->inet_conn.icsk_inet.sk;

	ti->is_tcp = 1;
	ti->bytes_acked = tp->bytes_acked;
	ti->bytes_received = tp->bytes_received;
	ti->bytes_sent = tp->bytes_sent;
	ti->bytes_retrans = tp->bytes_retrans;
	ti->segs_in = tp->segs_in;
	ti->segs_out = tp->segs_out;
	ti->snd_wnd = tp->snd_wnd;
	ti->rcv_wnd = tp->rcv_wnd;
	ti->snd_cwnd = tp->snd_cwnd;
	ti->snd_ssthresh = tp->snd_ssthresh;
	ti->srtt_us = tp->srtt_us >> 3;
	ti->rttvar_us = tp->mdev_us >> 2;
	ti->min_rtt_us = tp->rtt_min.s[0].v;
	ti->total_retrans = tp->total_retrans;
	ti->retrans_out = tp->retrans_out;
	ti->lost_out = tp->lost_out;
	ti->sacked_out = tp->sacked_out;
	ti->packets_out = tp->packets_out;
	ti->ca_state = BPF_CORE_READ_BITFIELD(&tp->inet_conn, icsk_ca_state);
	ti->sndbuf = sk->sk_sndbuf;
	ti->wmem_queued = sk->sk_wmem_queued;
	ti->rcvbuf = sk->sk_rcvbuf;
	ti->rmem_alloc = sk->sk_backlog.rmem_alloc.counter;
	ti->send_q = tp->write_seq - tp->snd_una;
	ti->recv_q = tp->rcv_nxt - tp->copied_seq;
	ti->mss = tp->mss_cache;
	ti->rate_delivered = tp->rate_delivered;
	ti->rate_interval_us = tp->rate_interval_us;
}

static __always_inline void fill_owner(struct net_tcp_info *ti, struct net_owner *ow)
{
	if (!ow)
		return;
	ti->start_ns = ow->start_ns;
	ti->pid = ow->pid;
	ti->tid = ow->tid;
	__builtin_memcpy(ti->comm, ow->comm, sizeof(ti->comm));
	ti->dir = ow->dir;
	ti->owner_src = ow->src;
}

/* Everything we know of sk, in one record. */
static __always_inline void fill_info(struct net_tcp_info *ti, struct sock *sk)
{
	struct tcp_sock *tp;

	fill_tuple(ti, &sk->__sk_common);
	ti->cookie = bpf_get_socket_cookie(sk);
	fill_owner(ti, owner_find(sk, ti->cookie));
	tp = bpf_skc_to_tcp_sock(sk);
	if (tp)
		fill_tcp(ti, tp);
}

static __always_inline struct net_event *reserve(__u32 type)
{
	struct net_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);

	if (!e) {
		__u32 zero = 0;
		__u64 *n = bpf_map_lookup_elem(&lost, &zero);

		if (n)
			(*n)++;
		return NULL;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = bpf_ktime_get_boot_ns();
	e->type = type;
	return e;
}

/* An event about sk; in_task: the current task is the one acting on the socket. */
static __always_inline int emit(__u32 type, struct sock *sk, __u32 arg, __u32 arg2, bool in_task)
{
	struct net_event *e = reserve(type);

	if (!e)
		return 0;
	e->arg = arg;
	e->arg2 = arg2;
	if (in_task)
		e->cur_pid = bpf_get_current_pid_tgid() >> 32;
	if (sk)
		fill_info(&e->info, sk);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(net_state, const struct sock *csk, const int oldstate, const int newstate)
{
	struct sock *sk = (struct sock *)csk;
	struct net_owner *ow;
	__u64 cookie;

	/* most changes need nothing: look at the new state before touching the socket */
	if (newstate != TCP_SYN_SENT && newstate != TCP_LISTEN && newstate != TCP_SYN_RECV &&
	    newstate != TCP_CLOSE && !(newstate == TCP_ESTABLISHED && emit_events))
		return 0;
	if (!is_inet_tcp(sk))
		return 0;
	cookie = bpf_get_socket_cookie(sk);
	switch (newstate) {
	case TCP_SYN_SENT:	/* connect(): runs in the caller's context */
	case TCP_LISTEN:	/* listen(): likewise */
		ow = owner_get(sk, cookie, false);
		if (ow) {
			ow->start_ns = bpf_ktime_get_boot_ns();
			ow->dir = newstate == TCP_SYN_SENT ? NET_DIR_OUT : NET_DIR_IN;
			owner_from_current(ow, NET_OWNER_CONNECT);
		}
		return 0;
	case TCP_SYN_RECV:	/* a child of a listener, in softirq: current is unrelated */
		ow = owner_get(sk, cookie, false);
		if (ow && !ow->start_ns) {
			ow->start_ns = bpf_ktime_get_boot_ns();
			ow->dir = NET_DIR_IN;
		}
		return 0;
	case TCP_ESTABLISHED:	/* with the full 4-tuple now; arg2: handshake time in us */
		if (!emit_events || (oldstate != TCP_SYN_RECV && oldstate != TCP_SYN_SENT))
			return 0;
		ow = owner_find(sk, cookie);
		emit(oldstate == TCP_SYN_SENT ? NET_EV_CONNECT : NET_EV_ACCEPT, sk, oldstate,
		     ow && ow->start_ns ? (bpf_ktime_get_boot_ns() - ow->start_ns) / 1000 : 0, false);
		return 0;
	case TCP_CLOSE:	/* the final record: totals and lifetime */
		if (oldstate == TCP_CLOSE)
			return 0;
		if (oldstate != TCP_LISTEN) {
			if (latency_on)
				lat_forget_send(sk);
			if (close_records) {
				emit(NET_EV_CLOSE, sk, oldstate, 0, false);
			} else {
				__u32 dir;
				__u64 *n;

				ow = owner_find(sk, cookie);
				dir = ow && ow->dir <= NET_DIR_IN ? ow->dir : NET_DIR_UNKNOWN;
				n = bpf_map_lookup_elem(&closes, &dir);
				if (n)
					(*n)++;
			}
		}
		owner_release(cookie);
		return 0;
	}
	return 0;
}

/* The first send or receive names the owner of sockets that connect() did not (accepted
 * ones, and ones older than bpfscope). Runs in the syscall's context. */
static __always_inline void owner_on_io(struct sock *sk)
{
	struct net_owner *ow;

	if (!is_inet_tcp(sk))
		return;
	ow = owner_get(sk, bpf_get_socket_cookie(sk), sk->__sk_common.skc_state == TCP_CLOSE);
	if (ow && !ow->pid)
		owner_from_current(ow, NET_OWNER_IO);
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(net_send, struct sock *sk, int ret, int flags)
{
	owner_on_io(sk);
	return 0;
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(net_recv, struct sock *sk, int ret, int flags)
{
	owner_on_io(sk);
	return 0;
}

/* Snapshot: one net_tcp_info per full TCP socket (listeners included; time-wait and
 * request sockets have no tcp_sock and are skipped), with --latency followed by its
 * struct net_conn_lat (zero when it had no sampled packet). */
SEC("iter/tcp")
int net_iter_tcp(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct net_tcp_info *ti;
	struct tcp_sock *tp;
	__u32 zero = 0;

	if (!skc)
		return 0;
	tp = bpf_skc_to_tcp_sock(skc);
	if (!tp)
		return 0;
	ti = bpf_map_lookup_elem(&scratch, &zero);
	if (!ti)
		return 0;
	__builtin_memset(ti, 0, sizeof(*ti));
	fill_tuple(ti, skc);
	ti->cookie = bpf_get_socket_cookie(skc);
	fill_owner(ti, owner_find(tp, ti->cookie));
	fill_tcp(ti, tp);
	bpf_seq_write(ctx->meta->seq, ti, sizeof(*ti));
	if (latency_on) {	/* the same walk carries the latency sums: every record gets them */
		struct net_conn_lat *cl = bpf_sk_storage_get(&conn_lat, tp, 0, 0);

		bpf_seq_write(ctx->meta->seq, cl ?: &no_lat, sizeof(*cl));
	}
	return 0;
}

/* Owners of sockets nobody has named yet: the task whose file table holds the socket. */
SEC("iter/task_file")
int net_iter_owner(struct bpf_iter__task_file *ctx)
{
	struct task_struct *task = ctx->task;
	struct file *file = ctx->file;
	struct net_owner *ow;
	struct socket *sock;
	struct sock *sk;

	if (!task || !file)
		return 0;
	sock = bpf_sock_from_file(file);
	if (!sock)
		return 0;
	sk = sock->sk;
	if (!is_inet_tcp(sk))
		return 0;
	ow = owner_get(sk, bpf_get_socket_cookie(sk), sk->__sk_common.skc_state == TCP_CLOSE);
	if (!ow || ow->pid)
		return 0;
	ow->pid = task->tgid;
	ow->tid = task->pid;
	ow->src = NET_OWNER_FILE;
	bpf_probe_read_kernel_str(ow->comm, sizeof(ow->comm), task->comm);
	return 0;
}

/* ---- --events ----------------------------------------------------------------------- */

SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(net_retransmit, const struct sock *sk, const struct sk_buff *skb, int err)
{
	return emit(NET_EV_RETRANS, (struct sock *)sk, sk ? sk->__sk_common.skc_state : 0, err, false);
}

/* sk is NULL for a reset that answers a packet no socket wanted (a closed port): the
 * 4-tuple then comes from that packet, seen from our side. */
SEC("tp_btf/tcp_send_reset")
int BPF_PROG(net_send_reset, const struct sock *sk, const struct sk_buff *skb, const enum sk_rst_reason reason)
{
	struct net_event *e;

	if (sk)
		return emit(NET_EV_RST_SENT, (struct sock *)sk, sk->__sk_common.skc_state, reason, false);
	e = reserve(NET_EV_RST_SENT);
	if (!e)
		return 0;
	e->arg2 = reason;
	if (skb)
		fill_from_skb(&e->info, skb, true);
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(net_receive_reset, struct sock *sk)
{
	return emit(NET_EV_RST_RECV, sk, sk->__sk_common.skc_state, 0, false);
}

/* Fires before icsk_ca_state changes: the record's ca_state is the old one. Setting the
 * same state again (every new connection sets Open) is not a change. */
SEC("tp_btf/tcp_cong_state_set")
int BPF_PROG(net_cong_state, struct sock *sk, const u8 ca_state)
{
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);

	if (!tp || BPF_CORE_READ_BITFIELD(&tp->inet_conn, icsk_ca_state) == ca_state)
		return 0;
	return emit(NET_EV_CONG, sk, ca_state, 0, false);
}

/* Two changes no other tracepoint shows, watched on every segment a connection receives:
 * - slow start is cwnd < ssthresh: a connection leaves it when HyStart or its first loss
 *   sets ssthresh, and goes back to it when a retransmission timeout restarts cwnd at one
 *   (neither is a congestion-state change, tcp_cong_state_set);
 * - the receive queue is full when the window this host offers has closed (rcv_wup +
 *   rcv_wnd - rcv_nxt <= 0: the application does not read). TCP never queues past its
 *   window, so sock_rcvqueue_full (other protocols' overflow) never fires for it; a
 *   segment arriving on a closed window (a zero-window probe, data in flight) does. */
SEC("tp_btf/tcp_probe")
int BPF_PROG(net_tcp_seen, struct sock *sk, const struct sk_buff *skb)
{
	struct tcp_sock *tp = bpf_skc_to_tcp_sock(sk);
	__u8 now = 0, *seen;
	__u32 cwnd;

	if (!tp)
		return 0;
	cwnd = tp->snd_cwnd;
	if (cwnd >= tp->snd_ssthresh)
		now |= TCP_SEEN_PAST_SLOW_START;
	if ((__s32)(tp->rcv_wup + tp->rcv_wnd - tp->rcv_nxt) <= 0)
		now |= TCP_SEEN_WINDOW_CLOSED;
	seen = bpf_sk_storage_get(&tcp_seen, tp, 0, now ? BPF_SK_STORAGE_GET_F_CREATE : 0);
	if (!seen || *seen == now)	/* as a new connection, or no change */
		return 0;
	if ((*seen ^ now) & TCP_SEEN_PAST_SLOW_START)
		emit(NET_EV_SLOW_START, sk, cwnd, !!(now & TCP_SEEN_PAST_SLOW_START), false);
	if (now & ~*seen & TCP_SEEN_WINDOW_CLOSED)	/* arg: bytes waiting for the application */
		emit(NET_EV_RCVQ_FULL, sk, tp->rcv_nxt - tp->copied_seq, tp->rcv_wnd, false);
	*seen = now;
	return 0;
}

/* ---- --drops ------------------------------------------------------------------------ */

SEC("tp_btf/kfree_skb")
int BPF_PROG(net_kfree_skb, struct sk_buff *skb, void *location, enum skb_drop_reason reason,
	     struct sock *rx_sk)
{
	__u32 key = reason;
	__u64 *n, one = 1;
	struct net_event *e;
	struct sock *sk;
	__u16 family;

	/* not a drop (the enum shifts between kernels: its value comes from the kernel's BTF) */
	if (reason <= (bpf_core_enum_value_exists(enum skb_drop_reason, SKB_CONSUMED) ?
		       bpf_core_enum_value(enum skb_drop_reason, SKB_CONSUMED) : SKB_NOT_DROPPED_YET))
		return 0;
	n = bpf_map_lookup_elem(&drops, &key);
	if (n)
		(*n)++;
	else
		bpf_map_update_elem(&drops, &key, &one, BPF_NOEXIST);
	sk = skb->sk;
	if (!sk)
		sk = rx_sk;
	if (sk) {
		family = sk->__sk_common.skc_family;
		if (family != AF_INET && family != AF_INET6)
			return 0;
	}
	e = reserve(NET_EV_DROP);
	if (!e)
		return 0;
	e->arg = reason;
	if (sk) {
		/* skb->sk is an RCU pointer the socket helpers refuse: the 4-tuple only */
		e->arg2 = sk->sk_protocol;
		fill_tuple(&e->info, &sk->__sk_common);
	} else {
		/* no socket: the packet's own addresses, as it travelled */
		e->arg2 = fill_from_skb(&e->info, skb, false);
		if (!e->arg2) {
			bpf_ringbuf_discard(e, 0);
			return 0;
		}
	}
	bpf_ringbuf_submit(e, 0);
	return 0;
}


/* ---- --latency ----------------------------------------------------------------------
 * A sampled packet is followed by its skb pointer from one layer to the next; the time
 * between them goes into a per-CPU log2 histogram per stage, and into the connection's
 * own sums (socket storage) once the socket is known. Receive: the device hands the skb
 * over (netif_rx, napi_gro_receive_entry, netif_receive_skb[_list]_entry) -> L2
 * (netif_receive_skb) -> TCP (tcp_probe, in tcp_rcv_established) -> copied to the
 * application. Send: a sampled send call (tcp_sendmsg_locked) -> TCP transmits the segment
 * holding its first byte (skb_mstamp_ns, CLOCK_MONOTONIC) -> queued to the device -> handed
 * to the driver.
 *
 * Every packet passes every hook, sampled or not, so the unsampled path must be nearly
 * free: the sampling decision is a per-CPU countdown (a random number only per sample),
 * and a sampled packet is found again in a small 2-way table indexed by a hash of its skb
 * pointer (an inlined array lookup and two compares per hook, no hash map, no lock). */

enum lat_path { LAT_RX = 0, LAT_TX = 1, LAT_SEND = 2, LAT_PATHS = 3 };

/* How far a followed packet got: each hook only takes a mark at the previous stage. */
enum lat_step { LAT_STARTED = 1, LAT_PAST_L2 = 2, LAT_PAST_TCP = 3 };

struct lat_mark {
	__u64 skb;		/* 0: free */
	__u64 ts;		/* when it passed the last stage (bpf_ktime_get_ns) */
	__u64 dev_l2_ns;	/* device -> L2, added to the connection once TCP names it */
	__u32 step;		/* enum lat_step */
	__u32 pad;
};

struct lat_set {
	struct lat_mark m[2];
};

#define LAT_SETS 1024	/* power of two */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LAT_SETS);
	__type(key, __u32);
	__type(value, struct lat_set);
} lat_rx SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LAT_SETS);
	__type(key, __u32);
	__type(value, struct lat_set);
} lat_tx SEC(".maps");

/* A sampled send call waiting for TCP to transmit its first byte, per socket (direct-mapped
 * by socket pointer; forgotten when the socket closes). */
struct lat_send {
	__u64 sk;		/* 0: free */
	__u64 ts;
	__u32 seq;		/* the sequence number of the send's first byte */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LAT_SETS);
	__type(key, __u32);
	__type(value, struct lat_send);
} lat_sends SEC(".maps");

/* Packets (send calls) left before the next sample, per CPU and enum lat_path. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LAT_PATHS);
	__type(key, __u32);
	__type(value, __u32);
} lat_countdown SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NET_LAT_STAGES);
	__type(key, __u32);
	__type(value, struct net_lat_hist);
} lat_hist SEC(".maps");

static __always_inline bool sampled(__u32 path)
{
	__u32 *left;

	if (latency_sample <= 1)
		return true;
	left = bpf_map_lookup_elem(&lat_countdown, &path);
	if (!left)
		return false;
	if (*left > 1) {
		(*left)--;
		return false;
	}
	/* the next sample 1..2N-1 packets later: 1 in N on average, never in lock-step with
	 * traffic of a fixed period (10 packets per connection would always sample the same one) */
	*left = 1 + bpf_get_prandom_u32() % (2 * latency_sample - 1);
	return true;
}

/* The verifier allows no arithmetic on a kernel pointer, but what is read back from map
 * memory is a plain number: a per-CPU word turns a pointer into one. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lat_word SEC(".maps");

static __always_inline __u32 lat_slot(const void *ptr)
{
	__u32 zero = 0;
	volatile __u64 *w = bpf_map_lookup_elem(&lat_word, &zero);

	if (!w)
		return 0;
	*w = (__u64)ptr;
	return ((__u32)*w * 2654435769U) >> 22;	/* Fibonacci hash of the low half, 10 bits: LAT_SETS */
}

static __always_inline struct lat_set *lat_set_of(void *map, const struct sk_buff *skb)
{
	__u32 i = lat_slot(skb);

	return bpf_map_lookup_elem(map, &i);
}

static __always_inline struct lat_mark *lat_find(void *map, const struct sk_buff *skb, __u32 step)
{
	struct lat_set *s = lat_set_of(map, skb);

	if (!s)
		return NULL;
	if (s->m[0].skb == (__u64)skb && s->m[0].step == step)
		return &s->m[0];
	if (s->m[1].skb == (__u64)skb && s->m[1].step == step)
		return &s->m[1];
	return NULL;
}

/* A packet enters a path: a followed packet that lived at this address before ended where
 * no hook saw it (dropped, merged into another, a pure ACK): forget it. */
static __always_inline void lat_forget(struct lat_set *s, const struct sk_buff *skb)
{
	if (s->m[0].skb == (__u64)skb)
		s->m[0].skb = 0;
	if (s->m[1].skb == (__u64)skb)
		s->m[1].skb = 0;
}

/* Follow skb from now: into a free mark, else the one least far along (keep a packet
 * waiting for the application), else the older. */
static __always_inline void lat_follow(struct lat_set *s, const struct sk_buff *skb, __u64 now)
{
	struct lat_mark *m;

	if (!s->m[0].skb)
		m = &s->m[0];
	else if (!s->m[1].skb)
		m = &s->m[1];
	else if (s->m[0].step != s->m[1].step)
		m = s->m[0].step < s->m[1].step ? &s->m[0] : &s->m[1];
	else
		m = s->m[0].ts <= s->m[1].ts ? &s->m[0] : &s->m[1];
	m->skb = (__u64)skb;
	m->ts = now;
	m->dev_l2_ns = 0;
	m->step = LAT_STARTED;
}

static __always_inline void lat_add(__u32 stage, __u64 delta)
{
	struct net_lat_hist *h = bpf_map_lookup_elem(&lat_hist, &stage);
	__u32 slot = 0;
	__u64 v = delta;

	if (!h)
		return;
	/* log2: highest set bit */
	if (v >= (1ULL << 32)) { slot += 32; v >>= 32; }
	if (v >= (1 << 16)) { slot += 16; v >>= 16; }
	if (v >= (1 << 8)) { slot += 8; v >>= 8; }
	if (v >= (1 << 4)) { slot += 4; v >>= 4; }
	if (v >= (1 << 2)) { slot += 2; v >>= 2; }
	if (v >= (1 << 1)) { slot += 1; }
	if (slot >= NET_LAT_SLOTS)
		slot = NET_LAT_SLOTS - 1;
	h->slots[slot]++;
	h->count++;
	h->sum_ns += delta;
}

/* sk may be NULL or not TCP: then only the histogram counts the sample. */
static __always_inline void conn_add(struct sock *sk, __u32 stage, __u64 delta)
{
	struct net_conn_lat *cl;

	if (!sk || sk->sk_protocol != IPPROTO_TCP || stage >= NET_LAT_STAGES)
		return;
	cl = bpf_sk_storage_get(&conn_lat, sk, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!cl)
		return;
	cl->sum_ns[stage] += delta;
	cl->count[stage]++;
}

static __always_inline bool is_tcp_skb_sk(const struct sk_buff *skb)
{
	struct sock *sk = skb->sk;

	return sk && sk->sk_protocol == IPPROTO_TCP;
}

/* The device hands a packet to the stack. */
static __always_inline int lat_rx_start(const struct sk_buff *skb)
{
	struct lat_set *s = lat_set_of(&lat_rx, skb);

	if (!s)
		return 0;
	lat_forget(s, skb);
	if (sampled(LAT_RX))
		lat_follow(s, skb, bpf_ktime_get_ns());
	return 0;
}

SEC("tp_btf/netif_rx")
int BPF_PROG(net_lat_rx_dev, struct sk_buff *skb)
{
	return lat_rx_start(skb);
}

SEC("tp_btf/napi_gro_receive_entry")
int BPF_PROG(net_lat_rx_gro, const struct sk_buff *skb)
{
	return lat_rx_start(skb);
}

SEC("tp_btf/netif_receive_skb_entry")
int BPF_PROG(net_lat_rx_entry, const struct sk_buff *skb)
{
	return lat_rx_start(skb);
}

SEC("tp_btf/netif_receive_skb_list_entry")
int BPF_PROG(net_lat_rx_list, const struct sk_buff *skb)
{
	return lat_rx_start(skb);
}

SEC("tp_btf/netif_receive_skb")
int BPF_PROG(net_lat_rx_l2, struct sk_buff *skb)
{
	struct lat_mark *m = lat_find(&lat_rx, skb, LAT_STARTED);
	__u64 now;

	if (!m)
		return 0;
	now = bpf_ktime_get_ns();
	m->dev_l2_ns = now - m->ts ?: 1;
	lat_add(NET_LAT_RX_DEV_L2, m->dev_l2_ns);
	m->ts = now;
	m->step = LAT_PAST_L2;
	return 0;
}

SEC("tp_btf/tcp_probe")
int BPF_PROG(net_lat_rx_tcp, struct sock *sk, const struct sk_buff *skb)
{
	struct lat_mark *m = lat_find(&lat_rx, skb, LAT_PAST_L2);
	__u32 seq[2] = {};	/* struct tcp_skb_cb: seq, end_seq */
	__u64 now, delta;

	if (!m)
		return 0;
	now = bpf_ktime_get_ns();
	delta = now - m->ts;
	lat_add(NET_LAT_RX_L2_TCP, delta);
	conn_add(sk, NET_LAT_RX_DEV_L2, m->dev_l2_ns);
	conn_add(sk, NET_LAT_RX_L2_TCP, delta);
	bpf_probe_read_kernel(seq, sizeof(seq), skb->cb);
	if (seq[0] == seq[1]) {	/* no data (an ACK): never copied to the application */
		m->skb = 0;
		return 0;
	}
	m->ts = now;
	m->step = LAT_PAST_TCP;
	return 0;
}

SEC("tp_btf/skb_copy_datagram_iovec")
int BPF_PROG(net_lat_rx_app, const struct sk_buff *skb, int len)
{
	struct lat_mark *m = lat_find(&lat_rx, skb, LAT_PAST_TCP);
	__u64 delta;

	if (!m)
		return 0;
	m->skb = 0;
	if (!is_tcp_skb_sk(skb))	/* another socket's skb at the address of a lost one */
		return 0;
	delta = bpf_ktime_get_ns() - m->ts;
	lat_add(NET_LAT_RX_TCP_APP, delta);
	conn_add(skb->sk, NET_LAT_RX_TCP_APP, delta);
	return 0;
}

static __always_inline struct lat_send *lat_send_of(const struct sock *sk)
{
	__u32 i = lat_slot(sk);

	return bpf_map_lookup_elem(&lat_sends, &i);
}

/* A sampled send call: remember when, and where its bytes start in the stream (one
 * pending send per socket). */
SEC("tp_btf/tcp_sendmsg_locked")
int BPF_PROG(net_lat_tx_send, const struct sock *csk, const struct msghdr *msg, const struct sk_buff *skb,
	     int size_goal)
{
	struct lat_send *p;
	struct tcp_sock *tp;

	if (!sampled(LAT_SEND))
		return 0;
	tp = bpf_skc_to_tcp_sock((struct sock *)csk);
	p = lat_send_of(csk);
	if (!tp || !p || p->sk == (__u64)csk)
		return 0;
	p->sk = (__u64)csk;
	p->seq = tp->write_seq;
	p->ts = bpf_ktime_get_ns();
	return 0;
}

/* The first segment holding the pending send's first byte closes the app -> TCP stage. */
static __always_inline void lat_tx_app(struct sk_buff *skb, struct sock *sk)
{
	struct lat_send *p = lat_send_of(sk);
	unsigned char *th;
	__u64 stamp, ts;
	__u8 hdr[16];
	__u32 seq, end;
	int data;

	if (!p || p->sk != (__u64)sk || sk->sk_protocol != IPPROTO_TCP)
		return;
	th = skb->head + skb->transport_header;
	if (bpf_probe_read_kernel(hdr, sizeof(hdr), th))
		return;
	seq = ((__u32)hdr[4] << 24) | ((__u32)hdr[5] << 16) | ((__u32)hdr[6] << 8) | hdr[7];
	data = (int)skb->len - (int)(th - skb->data) - (hdr[12] >> 4) * 4;
	end = seq + (data > 0 ? data : 0);
	if ((int)(end - p->seq) <= 0)	/* older data, still ahead of the send */
		return;
	stamp = skb->skb_mstamp_ns;
	ts = p->ts;
	p->sk = 0;
	if (stamp >= ts) {
		lat_add(NET_LAT_TX_APP_TCP, stamp - ts);
		conn_add(sk, NET_LAT_TX_APP_TCP, stamp - ts);
	}
}

/* A closed socket's pending send is forgotten: a later socket at its address is another. */
static __always_inline void lat_forget_send(const struct sock *sk)
{
	struct lat_send *p = lat_send_of(sk);

	if (p && p->sk == (__u64)sk)
		p->sk = 0;
}

SEC("tp_btf/net_dev_queue")
int BPF_PROG(net_lat_tx_queue, struct sk_buff *skb)
{
	struct lat_set *s = lat_set_of(&lat_tx, skb);
	struct sock *sk = skb->sk;
	__u64 now, stamp;

	if (sk)
		lat_tx_app(skb, sk);
	if (!s)
		return 0;
	lat_forget(s, skb);
	if (!sampled(LAT_TX) || !is_tcp_skb_sk(skb))
		return 0;
	now = bpf_ktime_get_ns();
	stamp = skb->skb_mstamp_ns;
	if (stamp && stamp <= now) {	/* a paced (future) departure time is not a delay */
		lat_add(NET_LAT_TX_TCP_DEV, now - stamp);
		conn_add(sk, NET_LAT_TX_TCP_DEV, now - stamp);
	}
	lat_follow(s, skb, now);
	return 0;
}

SEC("tp_btf/net_dev_xmit")
int BPF_PROG(net_lat_tx_xmit, struct sk_buff *skb, int rc, struct net_device *dev, unsigned int len)
{
	struct lat_mark *m = lat_find(&lat_tx, skb, LAT_STARTED);
	__u64 delta;

	if (!m)
		return 0;
	delta = bpf_ktime_get_ns() - m->ts;
	m->skb = 0;
	lat_add(NET_LAT_TX_DEV_XMIT, delta);
	conn_add(skb->sk, NET_LAT_TX_DEV_XMIT, delta);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

// SPDX-License-Identifier: GPL-2.0
/* bpfscope lb: pick a backend for a service VIP once, at connect(), in the kernel.
 *
 * Hooks: cgroup/connect4|6 rewrite the destination of connect(), cgroup/sendmsg4|6 that
 * of each datagram of an unconnected UDP socket; cgroup/getpeername4|6 and recvmsg4|6
 * give the VIP back to the application.
 * Cost per connect: a service lookup, at most two backend lookups (alias method,
 * O(1) whatever the weights; none for a table of <= LB_INLINE backends, kept inside the
 * service entry), a per-CPU counter and, for getpeername answering with the VIP (the
 * default), one store into the socket's lb_peers slot. Nothing per packet. Only services
 * that ask for more pay for it: the socket's local storage (VIP and backend, LB_F_ORIGIN)
 * is created only for services whose record must live with the socket (UDP, least-conn,
 * passive health, draining): allocating it and freeing it with the socket costs more than
 * the rest of a connect's program together (measured: bench/lb_paths.py,
 * docs/design/lb-connect-cost.md). Least-conn scans its (<= 64) backends' open
 * counts, affinity looks up and refreshes the client's entry, and least-conn and passive
 * health need tp_btf/inet_sock_set_state (attached by user space on first use), which
 * counts the connections of their sockets (SYN_SENT +1, CLOSE -1) and the failed
 * connects (SYN_SENT -> CLOSE). iter/tcp + bpf_sock_destroy closes a drained backend's
 * remaining connections when user space runs it.
 *
 * Maps are pinned under /sys/fs/bpf/bpfscope/lb by user space and shared by every
 * controller run; a change to a service writes its backends under a fresh id first and
 * then switches the service entry in one update, so a connect sees all or nothing.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_tracing.h>
#include "bpfscope.h"
#include "lb.h"

#define AF_INET 2
#define AF_INET6 10
#define EHOSTUNREACH 113
#define ECONNREFUSED 111
#define NSEC 1000000000ULL
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_CLOSE 7

extern int bpf_sock_destroy(struct sock_common *sk) __ksym __weak;

/* Not preallocated: an update allocates a new element and frees the old one only after
 * every program that may still read it is done (RCU), so a connect never reads an entry
 * being rewritten (a preallocated element can be reused at once by another update). The
 * elements come from the slab instead of one big vmalloc area (measured at 10,000
 * services: connect p50 no worse, within noise). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, LB_MAX_SERVICES);
	__type(key, struct lb_addr);
	__type(value, struct lb_service);
} lb_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_MAX_BACKENDS);
	__type(key, struct lb_backend_key);
	__type(value, struct lb_backend);
} lb_backends SEC(".maps");

/* Socket-local storage: lives and dies with the socket, no eviction, no cookie hashing. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct lb_origin);
} lb_origins SEC(".maps");

/* The VIP of each socket of a LB_F_PEER service, for getpeername: a slot per socket cookie
 * (low bits), written at connect with no allocation (socket storage created per connect cost
 * ~650 ns of ~1.6 us). A slot taken over by a newer socket is a miss: getpeername then
 * answers the backend. BPF_F_MMAPABLE only for the page-aligned values (one cache line a slot). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(max_entries, LB_PEER_SLOTS);
	__type(key, __u32);
	__type(value, struct lb_peer);
} lb_peers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, LB_MAX_BACKENDS);
	__type(key, struct lb_stats_key);
	__type(value, __u64);
} lb_choices SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_MAX_SERVICES);
	__type(key, struct lb_addr);	/* the service VIP */
	__type(value, struct lb_bucket);
} lb_buckets SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct lb_canary_client);
	__type(value, __u8);
} lb_canary_clients SEC(".maps");

/* Connects over a service's rate: [0] refused, [1] degraded to the fallback. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} lb_limited SEC(".maps");

/* Active connections per backend (least-conn): +1 at SYN_SENT, -1 at CLOSE. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, LB_MAX_SERVICES);
	__type(key, struct lb_addr);
	__type(value, __s64);
} lb_active SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, LB_MAX_SERVICES);
	__type(key, struct lb_addr);
	__type(value, struct lb_passive);
} lb_passive SEC(".maps");

/* LRU: a client that stops connecting is forgotten first. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct lb_affinity_key);
	__type(value, struct lb_affinity);
} lb_affinity SEC(".maps");

/* Backends whose remaining connections the drain iterator closes. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 4096);
	__type(key, struct lb_addr);
	__type(value, __u8);
} lb_drain SEC(".maps");

/* Connects refused because a service had no backend. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lb_no_backend SEC(".maps");

#define barrier() asm volatile("" ::: "memory")

/* Record the VIP of this socket in its lb_peers slot. The cookie is cleared while the VIP is
 * written and set last, so a reader that sees its cookie before and after copying has a
 * whole record (stores and loads keep their order on x86; the barriers keep the compiler's). */
static __always_inline void peer_record(struct bpf_sock_addr *ctx, struct lb_addr *vip)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	__u32 slot = cookie & (LB_PEER_SLOTS - 1);
	struct lb_peer *p = bpf_map_lookup_elem(&lb_peers, &slot);

	if (!p)
		return;
	*(volatile __u64 *)&p->cookie = 0;
	barrier();
	p->vip = *vip;
	barrier();
	*(volatile __u64 *)&p->cookie = cookie;
}

/* The VIP this socket asked for, from its lb_peers slot; 0 when another socket took the slot. */
static __always_inline int peer_lookup(struct bpf_sock_addr *ctx, struct lb_addr *out)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	__u32 slot = cookie & (LB_PEER_SLOTS - 1);
	struct lb_peer *p = bpf_map_lookup_elem(&lb_peers, &slot);

	if (!p || *(volatile __u64 *)&p->cookie != cookie)
		return 0;
	barrier();
	*out = p->vip;
	barrier();
	return *(volatile __u64 *)&p->cookie == cookie;
}

static __always_inline void bump(void *map, void *key)
{
	__u64 *v = bpf_map_lookup_elem(map, key), one = 1;

	if (v)
		(*v)++;
	else
		bpf_map_update_elem(map, key, &one, BPF_NOEXIST);
}

/* The canary table for a share of connects and for chosen client cgroups, else the main one. */
static __always_inline int wants_canary(struct lb_service *svc, struct lb_addr *vip)
{
	struct lb_canary_client c = { .vip = *vip };

	if (!svc->canary_count)
		return 0;
	if (!svc->count)
		return 1;
	c.cgroup_id = bpf_get_current_cgroup_id();
	if (bpf_map_lookup_elem(&lb_canary_clients, &c))
		return 1;
	return bpf_get_prandom_u32() < svc->canary_share;
}

/* Scan a least-conn table for the fewest active connections; ties are broken uniformly at
 * random (reservoir sampling: the k-th tie replaces the pick with probability 1/k). */
static __always_inline struct lb_backend *least_conn(__u32 id, __u32 base, __u32 count, __u32 *index)
{
	struct lb_backend_key k = { .service_id = id };
	struct lb_backend *b, *best = NULL;
	__s64 fewest = 0x7fffffffffffffffLL, *n, v;
	__u32 i, ties = 0;

	for (i = 0; i < LB_LEAST_CONN_MAX && i < count; i++) {
		k.index = base + i;
		b = bpf_map_lookup_elem(&lb_backends, &k);
		if (!b)
			continue;
		n = bpf_map_lookup_elem(&lb_active, &b->to);
		v = n ? *n : 0;
		if (v < fewest)
			ties = 0;
		else if (v > fewest)
			continue;
		if (bpf_get_prandom_u32() % ++ties == 0) {
			fewest = v;
			best = b;
			*index = k.index;
		}
	}
	return best;
}

static __always_inline struct lb_backend *choose(struct lb_service *svc, struct lb_addr *vip, __u32 *index)
{
	struct lb_backend_key k = { .service_id = svc->id };
	struct lb_backend *b;
	__u32 base = 0, count = svc->count;

	if (wants_canary(svc, vip)) {
		base = LB_CANARY_BASE;
		count = svc->canary_count;
	}
	if (!count)
		return NULL;
	if (svc->algo == LB_ALGO_LEAST_CONN)
		return least_conn(svc->id, base, count, index);
	if (!base && count <= LB_INLINE) {	/* the table inside the entry: no more lookups */
		/* i < count <= LB_INLINE (a power of two): the mask changes nothing but shows
		 * the verifier the bound (a compare would be folded away by the compiler) */
		__u32 i = (bpf_get_prandom_u32() % count) & (LB_INLINE - 1);

		b = &svc->table[i];
		if (svc->algo == LB_ALGO_WEIGHTED && bpf_get_prandom_u32() >= b->prob) {
			i = b->alias & (LB_INLINE - 1);
			b = &svc->table[i];
		}
		*index = i;
		return b;
	}
	k.index = base + bpf_get_prandom_u32() % count;
	b = bpf_map_lookup_elem(&lb_backends, &k);
	if (!b)
		return NULL;
	if (svc->algo == LB_ALGO_WEIGHTED && bpf_get_prandom_u32() >= b->prob) {
		k.index = base + b->alias;
		b = bpf_map_lookup_elem(&lb_backends, &k);
	}
	*index = k.index;
	return b;
}

/* The client's remembered backend while it is fresh and the table unchanged, else a new
 * choice that is remembered. */
static __always_inline struct lb_backend *choose_affine(struct bpf_sock_addr *ctx, struct lb_service *svc,
							struct lb_addr *vip)
{
	struct lb_affinity_key ak = { .vip = *vip };
	struct lb_affinity *a, fresh = {};
	struct lb_backend_key k = { .service_id = svc->id };
	struct lb_backend *b;
	__u64 now = bpf_ktime_get_ns();
	__u32 index = 0;

	ak.client = svc->flags & LB_F_AFFINITY_NETNS ? bpf_get_netns_cookie(ctx) : bpf_get_current_cgroup_id();
	a = bpf_map_lookup_elem(&lb_affinity, &ak);
	if (a && a->service_id == svc->id && now - a->last_ns < svc->affinity_ns) {
		k.index = a->index;
		b = bpf_map_lookup_elem(&lb_backends, &k);
		if (b) {
			a->last_ns = now;
			return b;
		}
	}
	b = choose(svc, vip, &index);
	if (b) {
		fresh.service_id = svc->id;
		fresh.index = index;
		fresh.last_ns = now;
		bpf_map_update_elem(&lb_affinity, &ak, &fresh, BPF_ANY);
	}
	return b;
}

/* 1: leave the connect alone; 0 with retval set: refuse it. */
/* 1 when the service's token bucket has a token for this connect (and takes it). */
static __always_inline int take_token(struct lb_service *svc, struct lb_addr *vip)
{
	struct lb_bucket *b = bpf_map_lookup_elem(&lb_buckets, vip), init = {};
	__u64 now = bpf_ktime_get_ns(), cap = (__u64)svc->burst * NSEC, elapsed;
	int ok = 0;

	if (!b) {
		init.tokens_ns = cap;
		init.last_ns = now;
		bpf_map_update_elem(&lb_buckets, vip, &init, BPF_NOEXIST);
		b = bpf_map_lookup_elem(&lb_buckets, vip);
		if (!b)
			return 1;
	}
	bpf_spin_lock(&b->lock);
	elapsed = now > b->last_ns ? now - b->last_ns : 0;
	if (elapsed > 1000 * NSEC)	/* bounds the multiplication below */
		elapsed = 1000 * NSEC;
	b->tokens_ns += elapsed * svc->rate_per_s;
	if (b->tokens_ns > cap)
		b->tokens_ns = cap;
	b->last_ns = now;
	if (b->tokens_ns >= NSEC) {
		b->tokens_ns -= NSEC;
		ok = 1;
	}
	bpf_spin_unlock(&b->lock);
	return ok;
}

/* family is a literal at each call site, so connect4 never touches user_ip6 (the
 * verifier refuses that even on a dead path). */
static __always_inline int redirect(struct bpf_sock_addr *ctx, struct lb_addr *vip, const int family)
{
	struct lb_service *svc = bpf_map_lookup_elem(&lb_services, vip);
	struct lb_stats_key sk = {};
	struct lb_origin *origin;
	struct lb_backend *b;
	__u32 zero = 0, index, flags;

	if (!svc)
		return 1;
	flags = svc->flags;	/* the VIP asked for decides what getpeername answers */
	if (svc->rate_per_s && !take_token(svc, vip)) {
		__u32 slot = svc->limit_action == LB_LIMIT_DEGRADE;

		bump(&lb_limited, &slot);
		if (!slot) {
			bpf_set_retval(-ECONNREFUSED);
			return 0;
		}
		svc = bpf_map_lookup_elem(&lb_services, &svc->fallback);
		if (!svc)
			return 1;
	}
	if (svc->count == 0 && svc->canary_count == 0) {
		/* none healthy: another service's backends when it names one and that one has any */
		struct lb_service *backup = svc->backup.family ? bpf_map_lookup_elem(&lb_services, &svc->backup) : NULL;

		if (!backup || (backup->count == 0 && backup->canary_count == 0)) {
			bump(&lb_no_backend, &zero);
			bpf_set_retval(-EHOSTUNREACH);
			return 0;
		}
		svc = backup;
	}
	if (svc->flags & (LB_F_AFFINITY_CGROUP | LB_F_AFFINITY_NETNS))
		b = choose_affine(ctx, svc, vip);
	else
		b = choose(svc, vip, &index);
	if (!b || b->to.family != family)
		return 1;
	if (family == AF_INET) {
		ctx->user_ip4 = *(__u32 *)b->to.addr;
	} else {
		ctx->user_ip6[0] = *(__u32 *)&b->to.addr[0];
		ctx->user_ip6[1] = *(__u32 *)&b->to.addr[4];
		ctx->user_ip6[2] = *(__u32 *)&b->to.addr[8];
		ctx->user_ip6[3] = *(__u32 *)&b->to.addr[12];
	}
	ctx->user_port = b->to.port;
	if (((flags | svc->flags) & (LB_F_PEER | LB_F_ORIGIN)) == LB_F_PEER)
		peer_record(ctx, vip);
	if ((flags | svc->flags) & LB_F_ORIGIN) {
		origin = bpf_sk_storage_get(&lb_origins, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (origin) {
			origin->vip = *vip;
			origin->backend = b->to;
			origin->flags = svc->flags & (LB_F_TRACK | LB_F_PASSIVE);
		}
	}
	sk.backend = b->to;
	bump(&lb_choices, &sk);
	return 1;
}

static __always_inline void vip4(struct bpf_sock_addr *ctx, struct lb_addr *a)
{
	*(__u32 *)a->addr = ctx->user_ip4;
	a->port = (__u16)ctx->user_port;
	a->proto = ctx->protocol;
	a->family = AF_INET;
}

static __always_inline void vip6(struct bpf_sock_addr *ctx, struct lb_addr *a)
{
	*(__u32 *)&a->addr[0] = ctx->user_ip6[0];
	*(__u32 *)&a->addr[4] = ctx->user_ip6[1];
	*(__u32 *)&a->addr[8] = ctx->user_ip6[2];
	*(__u32 *)&a->addr[12] = ctx->user_ip6[3];
	a->port = (__u16)ctx->user_port;
	a->proto = ctx->protocol;
	a->family = AF_INET6;
}

SEC("cgroup/connect4")
int lb_connect4(struct bpf_sock_addr *ctx)
{
	struct lb_addr vip = {};

	vip4(ctx, &vip);
	return redirect(ctx, &vip, AF_INET);
}

SEC("cgroup/connect6")
int lb_connect6(struct bpf_sock_addr *ctx)
{
	struct lb_addr vip = {};

	vip6(ctx, &vip);
	return redirect(ctx, &vip, AF_INET6);
}

static __always_inline int restore_vip(struct bpf_sock_addr *ctx, __u8 family);

/* Unconnected UDP: translate each datagram; a socket keeps its backend while it keeps
 * talking to the same VIP (a request and its retries reach the same server). */
static __always_inline int sendmsg_redirect(struct bpf_sock_addr *ctx, struct lb_addr *vip, const int family)
{
	struct lb_origin *o = bpf_sk_storage_get(&lb_origins, ctx->sk, 0, 0);

	if (o && __builtin_memcmp(&o->vip, vip, sizeof(*vip)) == 0) {
		if (family == AF_INET) {
			ctx->user_ip4 = *(__u32 *)o->backend.addr;
		} else {
			ctx->user_ip6[0] = *(__u32 *)&o->backend.addr[0];
			ctx->user_ip6[1] = *(__u32 *)&o->backend.addr[4];
			ctx->user_ip6[2] = *(__u32 *)&o->backend.addr[8];
			ctx->user_ip6[3] = *(__u32 *)&o->backend.addr[12];
		}
		ctx->user_port = o->backend.port;
		return 1;
	}
	return redirect(ctx, vip, family);
}

SEC("cgroup/sendmsg4")
int lb_sendmsg4(struct bpf_sock_addr *ctx)
{
	struct lb_addr vip = {};

	vip4(ctx, &vip);
	return sendmsg_redirect(ctx, &vip, AF_INET);
}

SEC("cgroup/sendmsg6")
int lb_sendmsg6(struct bpf_sock_addr *ctx)
{
	struct lb_addr vip = {};

	vip6(ctx, &vip);
	return sendmsg_redirect(ctx, &vip, AF_INET6);
}

/* A reply from the backend a socket's datagrams went to is shown as coming from the VIP. */
static __always_inline int recvmsg_restore(struct bpf_sock_addr *ctx, const int family)
{
	struct lb_origin *o = bpf_sk_storage_get(&lb_origins, ctx->sk, 0, 0);
	struct lb_addr from = {};

	if (!o)
		return 1;
	if (family == AF_INET)
		vip4(ctx, &from);
	else
		vip6(ctx, &from);
	if (*(__u64 *)&from.addr[0] != *(__u64 *)&o->backend.addr[0] ||
	    *(__u64 *)&from.addr[8] != *(__u64 *)&o->backend.addr[8] || from.port != o->backend.port)
		return 1;
	return restore_vip(ctx, family);
}

SEC("cgroup/recvmsg4")
int lb_recvmsg4(struct bpf_sock_addr *ctx)
{
	return recvmsg_restore(ctx, AF_INET);
}

SEC("cgroup/recvmsg6")
int lb_recvmsg6(struct bpf_sock_addr *ctx)
{
	return recvmsg_restore(ctx, AF_INET6);
}

/* The socket's own record when it has one (no eviction), else its lb_peers slot. */
static __always_inline int restore_vip(struct bpf_sock_addr *ctx, __u8 family)
{
	struct lb_origin *o = bpf_sk_storage_get(&lb_origins, ctx->sk, 0, 0);
	struct lb_addr vip;

	if (o)
		vip = o->vip;
	else if (!peer_lookup(ctx, &vip))
		return 1;
	if (vip.family != family)
		return 1;
	if (family == AF_INET) {
		ctx->user_ip4 = *(__u32 *)vip.addr;
	} else {
		ctx->user_ip6[0] = *(__u32 *)&vip.addr[0];
		ctx->user_ip6[1] = *(__u32 *)&vip.addr[4];
		ctx->user_ip6[2] = *(__u32 *)&vip.addr[8];
		ctx->user_ip6[3] = *(__u32 *)&vip.addr[12];
	}
	ctx->user_port = vip.port;
	return 1;
}

SEC("cgroup/getpeername4")
int lb_getpeername4(struct bpf_sock_addr *ctx)
{
	return restore_vip(ctx, AF_INET);
}

SEC("cgroup/getpeername6")
int lb_getpeername6(struct bpf_sock_addr *ctx)
{
	return restore_vip(ctx, AF_INET6);
}

/* Connection ends and failed connects of the sockets a tracking service redirected (this
 * program is attached only once some service uses least-conn or passive health). */
SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(lb_sock_state, const struct sock *csk, const int oldstate, const int newstate)
{
	struct sock *sk = (struct sock *)csk;
	struct lb_origin *o;
	struct lb_passive *p, init = {};
	__s64 *n, one = 1;

	if (newstate != TCP_SYN_SENT && newstate != TCP_CLOSE && newstate != TCP_ESTABLISHED)
		return 0;
	o = bpf_sk_storage_get(&lb_origins, sk, 0, 0);
	if (!o || !(o->flags & (LB_F_TRACK | LB_F_PASSIVE)))
		return 0;
	if (newstate == TCP_SYN_SENT && (o->flags & LB_F_TRACK) && !(o->flags & LB_O_COUNTED)) {
		o->flags |= LB_O_COUNTED;
		n = bpf_map_lookup_elem(&lb_active, &o->backend);
		if (n)
			__sync_fetch_and_add(n, 1);
		else if (bpf_map_update_elem(&lb_active, &o->backend, &one, BPF_NOEXIST) && (n = bpf_map_lookup_elem(&lb_active, &o->backend)))
			__sync_fetch_and_add(n, 1);	/* another CPU created it first */
	}
	if (newstate == TCP_CLOSE && (o->flags & LB_O_COUNTED)) {
		o->flags &= ~LB_O_COUNTED;
		n = bpf_map_lookup_elem(&lb_active, &o->backend);
		if (n)
			__sync_fetch_and_add(n, -1);
	}
	if (oldstate == TCP_SYN_SENT && (o->flags & LB_F_PASSIVE)) {
		p = bpf_map_lookup_elem(&lb_passive, &o->backend);
		if (!p) {
			bpf_map_update_elem(&lb_passive, &o->backend, &init, BPF_NOEXIST);
			p = bpf_map_lookup_elem(&lb_passive, &o->backend);
			if (!p)
				return 0;
		}
		if (newstate == TCP_ESTABLISHED) {
			p->consecutive = 0;
			__sync_fetch_and_add(&p->succeeded, 1);
		} else if (newstate == TCP_CLOSE) {
			__sync_fetch_and_add(&p->consecutive, 1);
			__sync_fetch_and_add(&p->failed, 1);
		}
	}
	return 0;
}

/* Close the remaining connections to drained backends (run once per drain by user space). */
SEC("iter/tcp")
int lb_drain_iter(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct tcp_sock *tp;
	struct lb_origin *o;

	if (!skc)
		return 0;
	tp = bpf_skc_to_tcp_sock(skc);
	if (!tp)
		return 0;
	o = bpf_sk_storage_get(&lb_origins, tp, 0, 0);
	if (o && bpf_map_lookup_elem(&lb_drain, &o->backend) && bpf_sock_destroy(skc) == 0)
		BPF_SEQ_PRINTF(ctx->meta->seq, "x");
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

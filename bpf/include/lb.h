/* bpfscope lb: socket-level load balancing at connect(). Shared map layouts. */
#ifndef BPFSCOPE_LB_H
#define BPFSCOPE_LB_H

#define LB_MAX_SERVICES 65536
#define LB_MAX_BACKENDS 1048576
#define LB_MAX_SOCKETS 262144
#define LB_NAME_LEN 32

enum lb_algo {
	LB_ALGO_RANDOM = 0,
	LB_ALGO_WEIGHTED = 1,
	LB_ALGO_LEAST_CONN = 2,	/* the backend with the fewest active connections */
};

/* lb_service.flags: per-connect work only the services that ask for it pay for. */
#define LB_F_TRACK		1	/* count active connections (least-conn) */
#define LB_F_PASSIVE		2	/* count connects that fail (passive health) */
#define LB_F_AFFINITY_CGROUP	4	/* same backend per client cgroup for affinity_ns */
#define LB_F_AFFINITY_NETNS	8	/* same backend per client network namespace */
#define LB_F_ORIGIN		16	/* record each socket's VIP and backend in socket storage: for
					 * UDP, least-conn, passive health, draining (per-socket life) */
#define LB_F_PEER		32	/* record each socket's VIP in lb_peers: getpeername answers it */

/* lb_peers: a direct-mapped table indexed by the socket cookie's low bits. 2^17 slots of
 * 64 bytes (8 MiB): a slot is overwritten only after 2^17 newer sockets (cookies are
 * handed out in sequence), and then getpeername answers the real peer (the backend). */
#define LB_PEER_BITS 17
#define LB_PEER_SLOTS (1u << LB_PEER_BITS)

#define LB_LEAST_CONN_MAX 64	/* backends a least-conn service may have (scanned per connect) */

/* A service address: IPv4 in addr[0..3] with family 2, IPv6 in addr[0..15] with 10. */
struct lb_addr {
	__u8 addr[16];
	__u16 port;		/* network byte order, as in the socket */
	__u8 proto;		/* IPPROTO_TCP / IPPROTO_UDP */
	__u8 family;		/* AF_INET / AF_INET6 */
};

struct lb_backend_key {
	__u32 service_id;
	__u32 index;
};

/* Walker's alias method: index i is kept with probability prob/2^32, else `alias`. */
struct lb_backend {
	struct lb_addr to;
	__u32 prob;
	__u32 alias;
};

/* A main table of at most LB_INLINE backends is also kept inside the service entry: a
 * random or weighted connect then reads it from the entry it already looked up instead
 * of one or two lb_backends lookups (each a cold bucket and element on a busy machine). */
#define LB_INLINE 16

enum lb_limit_action {
	LB_LIMIT_REFUSE = 0,	/* over the rate: connect() fails with ECONNREFUSED */
	LB_LIMIT_DEGRADE = 1,	/* over the rate: use the fallback service's backends */
};

struct lb_service {
	__u32 id;		/* backends live under this id; a new id per change (atomic switch) */
	__u32 count;		/* backends in the choice table */
	__u32 algo;
	__u32 flags;
	char name[LB_NAME_LEN];
	__u32 rate_per_s;	/* new connections per second; 0: no limit */
	__u32 burst;
	__u32 limit_action;
	__u32 canary_count;	/* backends of the canary table, at index LB_CANARY_BASE + i */
	struct lb_addr fallback;	/* the service to degrade to */
	__u32 canary_share;	/* a connect goes to the canary when a random u32 is below it */
	__u32 pad2;
	struct lb_addr backup;	/* the service to use when this one has no backend (family 0: none) */
	__u64 affinity_ns;	/* with LB_F_AFFINITY_*: how long a client keeps its backend */
	struct lb_backend table[LB_INLINE];	/* the main table when count <= LB_INLINE */
};

/* Client affinity: (service VIP, client cgroup id or netns cookie) -> the backend's index in
 * the table of service id `service_id` (a changed table means a new choice). */
struct lb_affinity_key {
	struct lb_addr vip;
	__u32 pad;
	__u64 client;
};

struct lb_affinity {
	__u32 service_id;
	__u32 index;
	__u64 last_ns;
};

/* Passive health of a backend, from the kernel's view of the connects sent to it. */
struct lb_passive {
	__u64 consecutive;	/* failed connects since the last one that succeeded */
	__u64 failed;
	__u64 succeeded;
};

#define LB_CANARY_BASE (1u << 20)

/* Clients (cgroups) that always get a service's canary. */
struct lb_canary_client {
	struct lb_addr vip;
	__u32 pad;
	__u64 cgroup_id;
};

/* Token bucket of a rate-limited service, shared by every CPU (hence the lock). */
struct lb_bucket {
	struct bpf_spin_lock lock;
	__u64 tokens_ns;	/* tokens x 1e9 */
	__u64 last_ns;
};

/* What a redirected socket of a LB_F_ORIGIN service asked for and where it went:
 * getpeername() and UDP replies (recvmsg) answer with the VIP; later datagrams of the
 * socket go to the same backend; least-conn, passive health and draining find it here. */
struct lb_origin {
	struct lb_addr vip;
	struct lb_addr backend;
	__u32 flags;		/* LB_F_TRACK / LB_F_PASSIVE of the service, LB_O_COUNTED */
	__u32 pad;
};

/* One lb_peers slot (a cache line): the VIP a socket (`cookie`, 0: none) asked for. */
struct lb_peer {
	__u64 cookie;
	struct lb_addr vip;
	__u8 pad[36];
};

#define LB_O_COUNTED 0x100	/* this socket is in lb_active: take it out when it closes */

struct lb_stats_key {
	struct lb_addr backend;
};

#endif

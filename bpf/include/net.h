/* Shared layout of net.bpf.c: the object's BTF carries every struct here to Python. */
#ifndef BPFSCOPE_NET_H
#define BPFSCOPE_NET_H

#define NET_COMM_LEN 16
#define NET_MAX_DROP_REASONS 1024
#define NET_OWNER_SLOTS (1 << 17)	/* owner_slots entries (a power of two), unless set at load */

/* Who opened the connection. */
enum net_dir {
	NET_DIR_UNKNOWN = 0,
	NET_DIR_OUT = 1,	/* this host called connect() */
	NET_DIR_IN = 2,		/* accepted here */
};

/* Where the owner (pid, comm) came from, best first. */
enum net_owner_src {
	NET_OWNER_NONE = 0,
	NET_OWNER_CONNECT = 1,	/* connect(): SYN_SENT, in the caller's context */
	NET_OWNER_IO = 2,	/* first send/recv on the socket, in the caller's context */
	NET_OWNER_FILE = 3,	/* found in a task's file table (iter/task_file) */
};

/* Per-socket owner, kept in socket-local storage (freed with the socket). */
struct net_owner {
	__u64 start_ns;		/* CLOCK_BOOTTIME of connect / SYN_RECV; 0: before we started */
	__u32 pid;		/* tgid; 0: not known yet */
	__u32 tid;
	char comm[NET_COMM_LEN];
	__u8 dir;		/* enum net_dir */
	__u8 src;		/* enum net_owner_src */
	__u8 pad[6];
};

/* One TCP socket with its internals: written by iter/tcp with bpf_seq_write (one fixed
 * record per socket) and carried by every socket event of the ring buffer. */
struct net_tcp_info {
	__u64 cookie;		/* socket cookie: a stable connection id */
	__u64 start_ns;
	__u64 bytes_acked;
	__u64 bytes_received;
	__u64 bytes_sent;
	__u64 bytes_retrans;
	__u32 pid;
	__u32 tid;
	char comm[NET_COMM_LEN];
	__u8 saddr[16];		/* IPv4 in the first 4 bytes */
	__u8 daddr[16];
	__u16 sport;		/* host order */
	__u16 dport;		/* host order */
	__u16 family;		/* AF_INET / AF_INET6 */
	__u8 state;		/* TCP_ESTABLISHED ... */
	__u8 dir;		/* enum net_dir */
	__u8 owner_src;		/* enum net_owner_src */
	__u8 ca_state;		/* TCP_CA_Open, Disorder, CWR, Recovery, Loss */
	__u8 is_tcp;		/* 0: only the 4-tuple is valid (not a full tcp_sock) */
	__u8 pad1;
	__u32 segs_in;
	__u32 segs_out;
	__u32 snd_wnd;
	__u32 rcv_wnd;
	__u32 snd_cwnd;
	__u32 snd_ssthresh;
	__u32 srtt_us;		/* smoothed RTT in us (tp->srtt_us >> 3) */
	__u32 rttvar_us;	/* tp->mdev_us >> 2, as tcp_info and ss report it */
	__u32 min_rtt_us;
	__u32 total_retrans;
	__u32 retrans_out;
	__u32 lost_out;
	__u32 sacked_out;
	__u32 packets_out;
	__u32 sndbuf;
	__u32 wmem_queued;
	__u32 rcvbuf;
	__u32 rmem_alloc;
	__u32 send_q;		/* write_seq - snd_una (ss Send-Q) */
	__u32 recv_q;		/* rcv_nxt - copied_seq (ss Recv-Q) */
	__u32 mss;
	__u32 rate_delivered;	/* delivery rate = rate_delivered * mss / rate_interval_us */
	__u32 rate_interval_us;
	__u32 netns;		/* network namespace inode */
};

enum net_event_type {
	NET_EV_CLOSE = 1,	/* final record: lifetime and totals */
	NET_EV_CONNECT = 2,
	NET_EV_ACCEPT = 3,
	NET_EV_RETRANS = 4,
	NET_EV_RST_SENT = 5,
	NET_EV_RST_RECV = 6,
	NET_EV_CONG = 7,	/* congestion state change: arg = new ca_state */
	NET_EV_RCVQ_FULL = 8,	/* the receive window closed: arg = bytes unread, arg2 = rcv_wnd */
	NET_EV_DROP = 9,	/* arg = skb_drop_reason */
	NET_EV_SLOW_START = 10,	/* arg = snd_cwnd, arg2 = 1: left slow start, 0: back in it */
};

struct net_event {
	__u64 ts_ns;		/* CLOCK_BOOTTIME */
	__u32 type;		/* enum net_event_type */
	__u32 arg;		/* per type: old state, ca_state, drop reason, ... */
	__u32 arg2;
	__u32 cur_pid;		/* the task in whose context the event ran (0: softirq / unknown) */
	struct net_tcp_info info;
};

/* --latency: time per packet between layers, log2 histograms (slot i: [2^i, 2^(i+1)) ns) */
enum net_lat_stage {
	NET_LAT_RX_DEV_L2 = 0,	/* from the device (netif_rx, napi_gro_receive, netif_receive_skb
				 * entry) -> L2 receive (netif_receive_skb) */
	NET_LAT_RX_L2_TCP = 1,	/* netif_receive_skb -> tcp_rcv_established (tcp_probe) */
	NET_LAT_RX_TCP_APP = 2,	/* tcp_probe -> copied to the application (skb_copy_datagram_iovec) */
	NET_LAT_TX_APP_TCP = 3,	/* the application's send (tcp_sendmsg_locked) -> TCP transmits
				 * the segment holding its first byte (skb_mstamp_ns) */
	NET_LAT_TX_TCP_DEV = 4,	/* TCP transmit (skb_mstamp_ns) -> queued to the device (net_dev_queue) */
	NET_LAT_TX_DEV_XMIT = 5,	/* net_dev_queue -> handed to the driver (net_dev_xmit) */
	NET_LAT_STAGES = 6,
};

#define NET_LAT_SLOTS 40

struct net_lat_hist {
	__u64 slots[NET_LAT_SLOTS];
	__u64 count;
	__u64 sum_ns;
};

/* --latency per connection: sampled packets' time per stage, kept in socket storage and
 * written by iter/tcp (net_iter_tcp) after each socket's net_tcp_info. */
struct net_conn_lat {
	__u64 sum_ns[NET_LAT_STAGES];
	__u32 count[NET_LAT_STAGES];
};

#endif

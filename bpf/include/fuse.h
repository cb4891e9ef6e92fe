/* Shared layout of fuse.bpf.c maps: the object's BTF carries it to Python. */
#ifndef BPFSCOPE_FUSE_H
#define BPFSCOPE_FUSE_H

#define FUSE_HIST_SLOTS 40	/* log2(ns) buckets: slot i counts latencies in [2^i, 2^(i+1)) ns */
#define FUSE_MAX_OPS 4096	/* (connection, opcode) pairs */
#define FUSE_MAX_INFLIGHT 65536

struct fuse_req_key {
	__u32 conn;		/* the connection's device minor: /sys/fs/fuse/connections/<conn> */
	__u32 pad;
	__u64 unique;
};

struct fuse_req_start {
	__u64 ts;
	__u32 opcode;
	__u32 len;		/* request length (header included) */
};

struct fuse_op_key {
	__u32 conn;
	__u32 opcode;
};

struct fuse_op_val {
	__u64 count;		/* requests that ended */
	__u64 errors;		/* ... with a negative error in the reply */
	__u64 request_bytes;	/* sum of request lengths */
	__u64 reply_bytes;	/* sum of reply lengths */
	__u64 total_ns;		/* sum of send-to-end latencies */
	__u64 hist[FUSE_HIST_SLOTS];
};

#endif

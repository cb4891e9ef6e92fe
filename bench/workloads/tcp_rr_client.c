/* Client of the lb benchmark: short connections (connect, 1 byte each way, close) to
 * targets picked at random from files of "ip port" lines.
 *
 *   tcp_rr_client NETNS BLOCK ROUNDS TARGETS_A CGROUP_A [TARGETS_B CGROUP_B]
 *
 * The client enters the network namespace NETNS (a /run/netns path) itself. With one path
 * it runs ROUNDS blocks of BLOCK connections. With two, each round is BLOCK connections of
 * each path made in slices of SLICE, alternating A B A B ... (B A B A ... in odd rounds),
 * after an unrecorded warm-up round: both paths run in one process, on one CPU, with one
 * memory layout, and a drift of this VM (another process, the host) weighs on both alike.
 * Before each slice the process moves itself into that path's cgroup (CGROUP_* are cgroup
 * directories, "-" stays put; a move costs ~10 us, outside the timed part).
 *
 * Output, one line per path and round:  B path round p50_ns p99_ns connects ns fails
 * and per path over all its rounds:     P path p50_ns p99_ns
 * (ns: the sum, over the path's slices, of the time from the first socket() to the last
 * close(): requests/s = connects / ns). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SLICE 10

struct path {
	struct sockaddr_in *t;
	int n;
	const char *cgroup;
	long long *all;		/* latencies of every recorded connect */
	int recorded;
};

static long long now_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static int cmp(const void *a, const void *b)
{
	long long x = *(const long long *)a, y = *(const long long *)b;

	return x < y ? -1 : x > y;
}

static void die(const char *what)
{
	perror(what);
	exit(2);
}

static void read_targets(struct path *p, const char *file)
{
	FILE *f = fopen(file, "r");
	int cap = 1024, port;
	char ip[64];

	if (!f)
		die(file);
	p->t = malloc(cap * sizeof(*p->t));
	while (fscanf(f, "%63s %d", ip, &port) == 2) {
		if (p->n == cap)
			p->t = realloc(p->t, (cap *= 2) * sizeof(*p->t));
		p->t[p->n] = (struct sockaddr_in){ .sin_family = AF_INET, .sin_port = htons(port) };
		inet_pton(AF_INET, ip, &p->t[p->n].sin_addr);
		p->n++;
	}
	fclose(f);
	if (!p->n) {
		fprintf(stderr, "%s: no targets\n", file);
		exit(2);
	}
}

static void join(const char *cgroup)
{
	char path[4096], pid[32];
	int fd, len;

	if (!strcmp(cgroup, "-"))
		return;
	snprintf(path, sizeof(path), "%s/cgroup.procs", cgroup);
	len = snprintf(pid, sizeof(pid), "%d\n", getpid());
	fd = open(path, O_WRONLY);
	if (fd < 0 || write(fd, pid, len) != len)
		die(path);
	close(fd);
}

/* `count` connections; latencies into lat[0..count), time and failures added to *ns, *fails. */
static void block(struct path *p, int count, long long *lat, long long *ns, int *fails)
{
	long long start = now_ns();

	for (int i = 0; i < count; i++) {
		struct linger lg = { 1, 0 };	/* RST on close: no TIME_WAIT pile-up in a long run */
		/* copied before the clock starts: reading 1 of 10,000 targets can miss the cache,
		 * reading 1 of 10 does not, and neither is the connect's cost */
		struct sockaddr_in dst = p->t[rand() % p->n];
		int s = socket(AF_INET, SOCK_STREAM, 0);
		long long a = now_ns();
		char c = 'x';

		if (connect(s, (struct sockaddr *)&dst, sizeof(dst))) {
			(*fails)++;
			close(s);
			lat[i] = 0;
			continue;
		}
		lat[i] = now_ns() - a;
		if (write(s, &c, 1) != 1 || read(s, &c, 1) != 1)
			(*fails)++;
		setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
		close(s);
	}
	*ns += now_ns() - start;
}

/* One round: `count` connects per path, in slices that alternate between the paths. */
static void round_of(struct path *paths, int npaths, int count, int odd, long long **lat, long long *ns, int *fails)
{
	for (int done = 0; done < count; done += SLICE) {
		int n = count - done < SLICE ? count - done : SLICE;

		for (int j = 0; j < npaths; j++) {
			int p = odd ? npaths - 1 - j : j;

			if (npaths == 2)
				join(paths[p].cgroup);
			block(&paths[p], n, lat[p] + done, &ns[p], &fails[p]);
		}
	}
}

int main(int argc, char **argv)
{
	struct path paths[2] = {};
	int npaths = argc >= 8 ? 2 : 1, count, rounds, fd;
	long long *lat[2], *sorted;

	if (argc != 6 && argc != 8) {
		fprintf(stderr, "usage: %s NETNS BLOCK ROUNDS TARGETS CGROUP [TARGETS CGROUP]\n", argv[0]);
		return 2;
	}
	fd = open(argv[1], O_RDONLY);
	if (fd < 0 || setns(fd, CLONE_NEWNET))
		die(argv[1]);
	close(fd);
	count = atoi(argv[2]);
	rounds = atoi(argv[3]);
	if (count < 1 || rounds < 1) {
		fprintf(stderr, "BLOCK and ROUNDS must be positive\n");
		return 2;
	}
	sorted = malloc(count * sizeof(*sorted));
	for (int p = 0; p < npaths; p++) {
		read_targets(&paths[p], argv[4 + 2 * p]);
		paths[p].cgroup = argv[5 + 2 * p];
		paths[p].all = malloc((long)count * rounds * sizeof(long long));
		lat[p] = malloc(count * sizeof(long long));
	}
	srand(42);
	join(paths[0].cgroup);
	for (int r = -1; r < rounds; r++) {	/* round -1: warm-up (caches, slabs, accept queues) */
		long long ns[2] = {};
		int fails[2] = {};

		round_of(paths, npaths, count, r & 1, lat, ns, fails);
		if (r < 0)
			continue;
		for (int p = 0; p < npaths; p++) {
			struct path *pp = &paths[p];

			memcpy(pp->all + pp->recorded, lat[p], count * sizeof(long long));
			pp->recorded += count;
			memcpy(sorted, lat[p], count * sizeof(long long));
			qsort(sorted, count, sizeof(*sorted), cmp);
			printf("B %d %d %lld %lld %d %lld %d\n", p, r, sorted[count / 2], sorted[count * 99 / 100],
			       count, ns[p], fails[p]);
		}
	}
	for (int p = 0; p < npaths; p++) {
		struct path *pp = &paths[p];

		qsort(pp->all, pp->recorded, sizeof(long long), cmp);
		printf("P %d %lld %lld\n", p, pp->all[pp->recorded / 2], pp->all[(long)pp->recorded * 99 / 100]);
	}
	return 0;
}

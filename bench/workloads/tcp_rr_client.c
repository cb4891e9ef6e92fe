/* Client of the lb benchmark: COUNT short connections (connect, 1 byte each way, close)
 * to targets picked at random from a file of "ip port" lines. Prints the connect()
 * latency p50 and p99 in ns and the requests per second of the whole run. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

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

int main(int argc, char **argv)
{
	FILE *f = fopen(argv[1], "r");
	int count = atoi(argv[2]), n = 0, cap = 1024, fails = 0;
	struct sockaddr_in *t = malloc(cap * sizeof(*t));
	long long *lat = malloc(count * sizeof(*lat)), start;
	char ip[64];
	int port;

	while (fscanf(f, "%63s %d", ip, &port) == 2) {
		if (n == cap)
			t = realloc(t, (cap *= 2) * sizeof(*t));
		t[n] = (struct sockaddr_in){ .sin_family = AF_INET, .sin_port = htons(port) };
		inet_pton(AF_INET, ip, &t[n].sin_addr);
		n++;
	}
	srand(42);
	start = now_ns();
	for (int i = 0; i < count; i++) {
		struct linger lg = { 1, 0 };	/* RST on close: no TIME_WAIT pile-up in a long run */
		int s = socket(AF_INET, SOCK_STREAM, 0);
		long long a = now_ns();
		char c = 'x';

		if (connect(s, (struct sockaddr *)&t[rand() % n], sizeof(t[0]))) {
			fails++;
			close(s);
			lat[i] = 0;
			continue;
		}
		lat[i] = now_ns() - a;
		if (write(s, &c, 1) != 1 || read(s, &c, 1) != 1)
			fails++;
		setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
		close(s);
	}
	double secs = (now_ns() - start) / 1e9;
	qsort(lat, count, sizeof(*lat), cmp);
	printf("%lld %lld %.0f %d\n", lat[count / 2], lat[count * 99 / 100], count / secs, fails);
	return 0;
}

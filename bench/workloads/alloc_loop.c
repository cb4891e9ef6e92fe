/* Allocation-heavy loop: N x (malloc of 64..1087 bytes, then free), after a line on
 * stdin. Prints the elapsed ns of the loop. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 1000000;
	struct timespec t0, t1;
	char buf[16];
	void *volatile p;

	if (read(0, buf, sizeof(buf)) < 0)
		return 1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (long i = 0; i < n; i++) {
		p = malloc(64 + (i & 1023));
		free(p);
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	printf("%ld\n", (t1.tv_sec - t0.tv_sec) * 1000000000L + (t1.tv_nsec - t0.tv_nsec));
	return 0;
}

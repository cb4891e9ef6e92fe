/* Context-switch-heavy workload: a parent and a child bounce one byte over two pipes
 * N times (every hop blocks one side and wakes the other). Prints the elapsed ns. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 200000;
	int a[2], b[2];
	char c = 0;
	struct timespec t0, t1;

	if (pipe(a) || pipe(b))
		return 1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	if (fork() == 0) {
		for (long i = 0; i < n; i++)
			if (read(a[0], &c, 1) != 1 || write(b[1], &c, 1) != 1)
				_exit(1);
		_exit(0);
	}
	for (long i = 0; i < n; i++)
		if (write(a[1], &c, 1) != 1 || read(b[0], &c, 1) != 1)
			return 1;
	wait(NULL);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	printf("%ld\n", (t1.tv_sec - t0.tv_sec) * 1000000000L + (t1.tv_nsec - t0.tv_nsec));
	return 0;
}

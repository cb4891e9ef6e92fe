/* Wait for a line on stdin, then spin on the CPU for argv[1] seconds. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv)
{
	char line[16];
	struct timespec ts;
	volatile unsigned long x = 0;
	double end;

	if (!fgets(line, sizeof(line), stdin))
		return 2;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	end = ts.tv_sec + ts.tv_nsec / 1e9 + (argc > 1 ? atof(argv[1]) : 1.0);
	for (;;) {
		for (int i = 0; i < 10000; i++)
			x += i;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		if (ts.tv_sec + ts.tv_nsec / 1e9 >= end)
			return 0;
	}
}

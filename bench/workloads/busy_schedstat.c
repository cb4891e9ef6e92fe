#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
/* burns CPU for SECONDS of wall time after a line on stdin, then prints /proc/self/schedstat */
int main(int argc, char **argv) {
	double s = atof(argv[1]); char buf[256]; struct timespec t0, t; volatile unsigned long x = 0;
	if (read(0, buf, sizeof buf) < 0) return 1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	do { for (int i = 0; i < 100000; i++) x++; clock_gettime(CLOCK_MONOTONIC, &t); }
	while ((t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) / 1e9 < s);
	FILE *f = fopen("/proc/self/schedstat", "r"); if (!f || !fgets(buf, sizeof buf, f)) return 1;
	fputs(buf, stdout); return 0;
}

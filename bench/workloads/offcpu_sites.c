/* Off-CPU at four call sites in turn, from the same sleeping function at the same stack
 * addresses: site_a()/site_b() differ in the caller of nap() (one frame above it),
 * site_c()/site_d() two frames above it (both call mid(), which calls nap()).
 * After a line on stdin: COUNT rounds of a (1 ms), b (2 ms), c (3 ms), d (4 ms), then
 * "done" on stdout, and exit when stdin closes.
 * Usage: offcpu_sites COUNT      Build with -O1 -fno-omit-frame-pointer. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

__attribute__((noinline)) void nap(long ms)
{
	struct timespec ts = { 0, ms * 1000000L };

	nanosleep(&ts, NULL);
	__asm__ volatile("");
}

__attribute__((noinline)) void site_a(void) { nap(1); __asm__ volatile(""); }
__attribute__((noinline)) void site_b(void) { nap(2); __asm__ volatile(""); }
__attribute__((noinline)) void mid(long ms) { nap(ms); __asm__ volatile(""); }
__attribute__((noinline)) void site_c(void) { mid(3); __asm__ volatile(""); }
__attribute__((noinline)) void site_d(void) { mid(4); __asm__ volatile(""); }

int main(int argc, char **argv)
{
	int count = argc > 1 ? atoi(argv[1]) : 40;
	char buf[64];

	if (read(0, buf, sizeof(buf)) < 0)
		return 1;
	for (int i = 0; i < count; i++) {
		site_a();
		site_b();
		site_c();
		site_d();
	}
	printf("done\n");
	fflush(stdout);
	while (read(0, buf, sizeof(buf)) > 0)
		;
	return 0;
}

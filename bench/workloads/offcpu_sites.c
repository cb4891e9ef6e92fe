/* Off-CPU at four call sites in turn, from the same sleeping function at the same stack
 * addresses: site_a()/site_b() differ in the caller of nap() (one frame above it),
 * site_c()/site_d() two frames above it (both call mid(), which calls nap()).
 * After a line on stdin: COUNT rounds of a (1 ms), b (2 ms), c (3 ms), d (4 ms), then
 * "done A B C D LA LB LC LD" on stdout (the nanoseconds each site's naps took by this
 * program's own clock, and how many of them took over 1.5 times their length: on a busy
 * host a nap overruns), and exit when stdin closes.
 * Usage: offcpu_sites COUNT      Build with -O1 -fno-omit-frame-pointer. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static long long napped[5];	/* ns per nap length (1-4 ms) */
static int overran[5];		/* naps that took over 1.5 times their length */

static long long now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

__attribute__((noinline)) void nap(long ms)
{
	struct timespec ts = { 0, ms * 1000000L };
	long long t0 = now_ns();

	nanosleep(&ts, NULL);
	t0 = now_ns() - t0;
	napped[ms] += t0;
	overran[ms] += t0 > ms * 1500000LL;
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
	printf("done %lld %lld %lld %lld %d %d %d %d\n", napped[1], napped[2], napped[3], napped[4],
	       overran[1], overran[2], overran[3], overran[4]);
	fflush(stdout);
	while (read(0, buf, sizeof(buf)) > 0)
		;
	return 0;
}

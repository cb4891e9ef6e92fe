/* Known CPU profile: main -> hot_a about 75% of the time, main -> hot_b about 25%.
 * Build with -O1 -fno-omit-frame-pointer. Usage: stack_hot SECONDS
 * Each round does 3 units of work in hot_a and 1 unit in hot_b (same loop body), so
 * the split does not depend on the machine's speed. The unit's size varies from round
 * to round (a fixed sequence, the same mean): with a fixed size the rounds can keep step
 * with the sampling timer, and the samples then land mostly in one phase (63% hot_a in
 * one test run, 70% in perf's view of another). */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static volatile unsigned long sink;

/* The loop is inlined into hot_a and hot_b so the samples land in them; the call to
 * tick() makes them non-leaf functions, which gcc gives a frame pointer even where it
 * omits leaf frames, so the frame-pointer walk sees main -> hot_a. */
static inline __attribute__((always_inline)) void work(unsigned long n)
{
	unsigned long x = sink;
	for (unsigned long i = 0; i < n; i++)
		x = x * 6364136223846793005UL + 1442695040888963407UL;
	sink = x;
}

__attribute__((noinline)) void tick(void) { __asm__ volatile(""); }
__attribute__((noinline)) void hot_a(unsigned long unit) { work(3 * unit); tick(); }
__attribute__((noinline)) void hot_b(unsigned long unit) { work(unit); tick(); }

int main(int argc, char **argv)
{
	double seconds = argc > 1 ? atof(argv[1]) : 5.0;
	struct timespec t0, t;
	unsigned long rounds = 0, seed = 1;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	do {
		for (int i = 0; i < 16; i++) {
			seed = seed * 6364136223846793005UL + 1;
			unsigned long unit = 100000 + (seed >> 33) % 200001; /* 100k-300k, mean 200k */
			hot_a(unit);
			hot_b(unit);
		}
		rounds += 16;
		clock_gettime(CLOCK_MONOTONIC, &t);
	} while ((t.tv_sec - t0.tv_sec) + (t.tv_nsec - t0.tv_nsec) / 1e9 < seconds);
	printf("%lu\n", rounds);
	return 0;
}

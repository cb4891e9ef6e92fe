/* Kernel lock contention: 8 threads map (MAP_POPULATE: the pages are faulted in inside the
 * call) and unmap memory for argv[1] seconds, all fighting over their process's mmap_lock
 * (an rwsem: populating reads, mmap/munmap write). Each worker times its own mmap and
 * munmap calls; main prints "thread TID SECONDS" per worker at the end: every kernel lock
 * a worker waits for is waited for inside those calls, the truth's upper bound. Workers
 * wait for each other before they exit, so no worker's exit (glibc's madvise of its
 * stack) meets another's mmap. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define WORKERS 8

static double seconds = 1.0;
static pthread_barrier_t done;

struct worker {
	pid_t tid;
	double in_calls;
};

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *worker(void *arg)
{
	struct worker *w = arg;

	w->tid = gettid();
	for (double end = now() + seconds; now() < end;) {
		double t0 = now();
		char *p = mmap(NULL, 1 << 18, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
		double t1 = now();

		if (p == MAP_FAILED)
			break;
		/* user-space work between the calls (the pages are there: no fault), so that a
		 * wait counted across it would exceed the time in the calls */
		for (int i = 0; i < 16; i++)
			memset(p, i, 1 << 18);
		double t2 = now();
		munmap(p, 1 << 18);
		w->in_calls += (t1 - t0) + (now() - t2);
	}
	pthread_barrier_wait(&done);
	return NULL;
}

int main(int argc, char **argv)
{
	pthread_t t[WORKERS];
	struct worker w[WORKERS] = {};
	char line[16];

	if (argc > 1)
		seconds = atof(argv[1]);
	if (!fgets(line, sizeof(line), stdin))
		return 2;
	pthread_barrier_init(&done, NULL, WORKERS);
	for (int i = 0; i < WORKERS; i++)
		pthread_create(&t[i], NULL, worker, &w[i]);
	for (int i = 0; i < WORKERS; i++)
		pthread_join(t[i], NULL);
	for (int i = 0; i < WORKERS; i++)
		printf("thread %d %.6f\n", w[i].tid, w[i].in_calls);
	return 0;
}

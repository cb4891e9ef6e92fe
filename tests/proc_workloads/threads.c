/* Threads with known lives: wait for a line on stdin, start 3 threads; thread i spins for
 * (i + 1) * 100 ms of its own CPU time, then sleeps 100 ms. Each prints "thread TID CPU_NS"
 * with its CPU time from CLOCK_THREAD_CPUTIME_ID (the truth the test compares with) just
 * before it returns; main joins them and prints its own line, its CPU time since the line
 * on stdin (before it, the test was not following it yet). */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t out = PTHREAD_MUTEX_INITIALIZER;

static long long cpu_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void report(long long since)
{
	pthread_mutex_lock(&out);
	printf("thread %d %lld\n", gettid(), cpu_ns() - since);
	fflush(stdout);
	pthread_mutex_unlock(&out);
}

static void *worker(void *arg)
{
	long n = (long)arg;
	volatile unsigned long x = 0;
	struct timespec nap = {0, 100 * 1000 * 1000};

	for (long long end = cpu_ns() + (n + 1) * 100000000LL; cpu_ns() < end;)
		for (int i = 0; i < 10000; i++)
			x += i;
	nanosleep(&nap, NULL);
	report(0);
	return NULL;
}

int main(void)
{
	pthread_t t[3];
	char line[16];

	long long at_go;

	if (!fgets(line, sizeof(line), stdin))
		return 2;
	at_go = cpu_ns();
	for (long i = 0; i < 3; i++)
		pthread_create(&t[i], NULL, worker, (void *)i);
	for (int i = 0; i < 3; i++)
		pthread_join(t[i], NULL);
	report(at_go);
	return 0;
}

/* Two threads contend for one pthread mutex, each holding it 10 ms, 100 times. Prints the
 * time each thread spent inside pthread_mutex_lock, "thread TID SECONDS" per worker (the
 * truth for futex wait time).
 *
 * After each unlock a worker pauses 0.2 ms before it locks again: a glibc mutex is not
 * fair, and a worker that re-locked at once usually won against the waiter it had just
 * woken (still being scheduled), so one worker could take all its 100 holds in a row
 * while the other only waited (1 run in ~6-12: the other never waited at all). With
 * the pause the woken waiter takes the lock: the two alternate and both wait. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
static pthread_barrier_t start;

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

struct worker {
	double waited;
	pid_t tid;
};

static void *worker(void *arg)
{
	struct worker *me = arg;
	double *waited = &me->waited;
	struct timespec hold = {0, 10 * 1000 * 1000}, pause = {0, 200 * 1000};

	me->tid = gettid();
	pthread_barrier_wait(&start);
	for (int i = 0; i < 100; i++) {
		double t0 = now();
		pthread_mutex_lock(&m);
		*waited += now() - t0;
		nanosleep(&hold, NULL);
		pthread_mutex_unlock(&m);
		nanosleep(&pause, NULL);
	}
	return NULL;
}

int main(void)
{
	pthread_t t[2];
	struct worker w[2] = {{0, 0}, {0, 0}};
	char line[16];

	if (!fgets(line, sizeof(line), stdin))
		return 2;
	pthread_barrier_init(&start, NULL, 2);
	for (int i = 0; i < 2; i++)
		pthread_create(&t[i], NULL, worker, &w[i]);
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	for (int i = 0; i < 2; i++)
		printf("thread %d %.6f\n", w[i].tid, w[i].waited);
	return 0;
}

/* Kernel lock contention: 8 threads map, touch and unmap memory for argv[1] seconds, all
 * fighting over their process's mmap_lock (an rwsem: page faults read, mmap/munmap write). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

static double seconds = 1.0;

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void *worker(void *arg)
{
	(void)arg;
	for (double end = now() + seconds; now() < end;) {
		char *p = mmap(NULL, 1 << 18, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (p == MAP_FAILED)
			return NULL;
		for (int i = 0; i < 1 << 18; i += 4096)
			p[i] = 1;
		munmap(p, 1 << 18);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	pthread_t t[8];
	char line[16];

	if (argc > 1)
		seconds = atof(argv[1]);
	if (!fgets(line, sizeof(line), stdin))
		return 2;
	for (int i = 0; i < 8; i++)
		pthread_create(&t[i], NULL, worker, NULL);
	for (int i = 0; i < 8; i++)
		pthread_join(t[i], NULL);
	return 0;
}

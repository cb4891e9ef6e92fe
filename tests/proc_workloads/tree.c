/* A family: 5 children (child 3 sleeps at the bottom of a 40-deep recursion, child 4 dies
 * of SIGSEGV, the others exit with their index) and 3 threads. Prints the pids. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void pause_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
	nanosleep(&ts, NULL);
}

__attribute__((noinline)) int recurse_deeply(int depth)
{
	if (depth == 0) {
		pause_ms(800);
		return 0;
	}
	return recurse_deeply(depth - 1) + 1;
}

static void *thread_main(void *arg)
{
	(void)arg;
	pause_ms(300);
	return NULL;
}

int main(void)
{
	pthread_t t[3];
	char line[16];

	if (!fgets(line, sizeof(line), stdin))
		return 2;
	for (int i = 0; i < 5; i++) {
		pid_t pid = fork();
		if (pid == 0) {
			if (i == 3)
				recurse_deeply(40);
			if (i == 4) {
				pause_ms(200);
				*(volatile int *)0 = 1;
			}
			pause_ms(300);
			_exit(i);
		}
		printf("child %d\n", pid);
	}
	for (int i = 0; i < 3; i++)
		pthread_create(&t[i], NULL, thread_main, NULL);
	fflush(stdout);
	for (int i = 0; i < 3; i++)
		pthread_join(t[i], NULL);
	while (wait(NULL) > 0)
		;
	return 0;
}

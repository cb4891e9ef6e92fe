/* Known off-CPU profile: waits (polling stdin every 20 ms) until a line arrives, then
 * sleeps COUNT x MS milliseconds with nanosleep() from sleep_step(), then exits.
 * Usage: sleep_loop COUNT MS      Build with -O1 -fno-omit-frame-pointer. */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

__attribute__((noinline)) void sleep_step(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

	nanosleep(&ts, NULL);
	__asm__ volatile("");
}

int main(int argc, char **argv)
{
	int count = argc > 1 ? atoi(argv[1]) : 10;
	long ms = argc > 2 ? atol(argv[2]) : 200;
	struct pollfd p = { .fd = 0, .events = POLLIN };
	char buf[64];

	while (poll(&p, 1, 20) == 0)
		;
	if (read(0, buf, sizeof(buf)) < 0)
		return 1;
	for (int i = 0; i < count; i++)
		sleep_step(ms);
	printf("done\n");
	return 0;
}

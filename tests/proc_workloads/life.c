/* Known life for `bpfscope proc`: wait for a line on stdin (the test attaches first),
 * spin for 1 s of CPU time, sleep 1 s, write 64 MiB with O_DIRECT + fsync to FILE, exit 3. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double cpu_time(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	char line[16];
	volatile unsigned long x = 0;
	void *buf;
	int fd;

	if (argc < 2)
		return 2;
	if (!fgets(line, sizeof(line), stdin))
		return 2;
	for (double end = cpu_time() + 1.0; cpu_time() < end;)	/* 1 s of CPU, however busy the host */
		for (int i = 0; i < 10000; i++)
			x += i;
	struct timespec one = {1, 0};
	nanosleep(&one, NULL);
	if (posix_memalign(&buf, 4096, 1 << 20))
		return 2;
	memset(buf, 0xab, 1 << 20);
	fd = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC | O_DIRECT, 0600);
	if (fd < 0)
		return 2;
	for (int i = 0; i < 64; i++)
		if (write(fd, buf, 1 << 20) != 1 << 20)
			return 2;
	fsync(fd);
	close(fd);
	return 3;
}

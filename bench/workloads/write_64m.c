/* Known I/O: after a line on stdin, writes exactly 64 MiB to /dev/null with write(2) in
 * 1 MiB calls from write_out(), then waits for stdin to close. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char buf[1 << 20];

__attribute__((noinline)) int write_out(int fd)
{
	for (int i = 0; i < 64; i++) {
		size_t done = 0;

		while (done < sizeof(buf)) {
			ssize_t n = write(fd, buf + done, sizeof(buf) - done);

			if (n <= 0)
				return 1;
			done += n;
		}
	}
	return 0;
}

int main(void)
{
	char line[64];
	int fd = open("/dev/null", O_WRONLY);

	memset(buf, 'x', sizeof(buf));
	if (fd < 0 || read(0, line, sizeof(line)) < 0 || write_out(fd))
		return 1;
	while (read(0, line, sizeof(line)) > 0)
		;
	return 0;
}

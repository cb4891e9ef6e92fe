/* Known resources for `bpfscope proc`: wait for a line on stdin, touch argv[2] MiB of
 * heap, write argv[3] MiB to FILE (argv[1]) and fsync it, print "ready", then hold still
 * (no allocation, no I/O) until a second line on stdin, and exit 0. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	char line[16];
	static char chunk[1 << 20];
	size_t heap;
	char *mem;
	int fd, mib;

	if (argc < 4)
		return 2;
	heap = (size_t)atoi(argv[2]) << 20;
	mib = atoi(argv[3]);
	if (!fgets(line, sizeof(line), stdin))
		return 2;
	mem = malloc(heap);
	if (!mem)
		return 2;
	memset(mem, 1, heap);	/* every page resident */
	memset(chunk, 2, sizeof(chunk));
	fd = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0600);
	if (fd < 0)
		return 2;
	for (int i = 0; i < mib; i++)
		if (write(fd, chunk, sizeof(chunk)) != (ssize_t)sizeof(chunk))
			return 2;
	if (fsync(fd) || close(fd))
		return 2;
	printf("ready\n");
	fflush(stdout);
	if (!fgets(line, sizeof(line), stdin))
		return 2;
	return mem[heap - 1] == 1 ? 0 : 2;
}

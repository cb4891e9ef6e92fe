/* Known allocation profile: after a line on stdin, leak_here() keeps 1,000 blocks of
 * 4 KiB; churn() allocates and frees 10,000 blocks through malloc, calloc, realloc,
 * posix_memalign and aligned_alloc. Then it prints "done" and waits for stdin to close.
 * Build with -O1 -fno-omit-frame-pointer. */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static void *kept[1000];

__attribute__((noinline)) void leak_here(void)
{
	for (int i = 0; i < 1000; i++)
		kept[i] = malloc(4096);
	__asm__ volatile("");
}

__attribute__((noinline)) void churn(void)
{
	for (int i = 0; i < 2000; i++) {
		void *a = malloc(100 + i), *b = calloc(10, 64 + i % 7), *c = realloc(NULL, 300);
		void *d = NULL, *e = aligned_alloc(64, 256);

		c = realloc(c, 5000 + i);
		if (posix_memalign(&d, 64, 1000))
			d = NULL;
		free(a); free(b); free(c); free(d); free(e);
	}
	__asm__ volatile("");
}

int main(void)
{
	char buf[64];

	if (read(0, buf, sizeof(buf)) < 0)
		return 1;
	leak_here();
	churn();
	printf("done\n");
	fflush(stdout);
	while (read(0, buf, sizeof(buf)) > 0)
		;
	return kept[0] == NULL;
}

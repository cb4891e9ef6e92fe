/* Backends for the lb benchmark: one thread per port on 127.0.0.1; each connection gets
 * one byte back for the byte it sends, then the server closes. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

static void *serve(void *arg)
{
	int port = (int)(long)arg, one = 1;
	int s = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(s, (struct sockaddr *)&a, sizeof(a)) || listen(s, 4096)) {
		perror("bind/listen");
		exit(1);
	}
	for (;;) {
		char c;
		int fd = accept(s, NULL, NULL);

		if (fd < 0)
			continue;
		if (read(fd, &c, 1) == 1 && write(fd, &c, 1) != 1)
			perror("write");
		close(fd);
	}
	return NULL;
}

int main(int argc, char **argv)
{
	int first = atoi(argv[1]), n = atoi(argv[2]);
	pthread_t t;

	for (int i = 0; i < n; i++)
		pthread_create(&t, NULL, serve, (void *)(long)(first + i));
	printf("ready\n");
	fflush(stdout);
	pause();
	return 0;
}

/* Known blocking for `bpfscope proc`: wait for a line on stdin (the test attaches first),
 * then, by argv[1]:
 *   futex  main blocks 5 times in futex(FUTEX_WAIT) until a helper thread wakes it 100 ms later
 *   pipe   main blocks 5 times in read() of an empty pipe that the helper writes 100 ms later
 *   tcp    main blocks 5 times in recv() of a loopback TCP socket the helper sends on 100 ms later
 *   vfork  main vforks a child that sleeps 1 s and exits: main waits for it uninterruptibly
 *          (D, not I/O wait) all that time
 *   stop   prints "ready", then sleeps 2 s (the test stops and continues it meanwhile)
 * and exits 0. The helper only sleeps and wakes: main's blocking is the known one. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <linux/futex.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define ROUNDS 5

static int mode_fd = -1;	/* pipe write end or TCP socket: where the helper sends */
static volatile int word;	/* futex mode: the futex */

static void nap_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
	while (nanosleep(&ts, &ts))
		;
}

static void *futex_waker(void *arg)
{
	(void)arg;
	for (int i = 1; i <= ROUNDS; i++) {
		nap_ms(100);
		__atomic_store_n(&word, i, __ATOMIC_SEQ_CST);
		syscall(SYS_futex, &word, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
	}
	return NULL;
}

static void *sender(void *arg)
{
	(void)arg;
	for (int i = 0; i < ROUNDS; i++) {
		nap_ms(100);
		if (write(mode_fd, "x", 1) != 1)
			return NULL;
	}
	return NULL;
}

static int tcp_pair(int *client)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(a);
	int l = socket(AF_INET, SOCK_STREAM, 0), s;

	if (l < 0 || bind(l, (void *)&a, sizeof(a)) || listen(l, 1) || getsockname(l, (void *)&a, &len))
		return -1;
	*client = socket(AF_INET, SOCK_STREAM, 0);
	if (*client < 0 || connect(*client, (void *)&a, sizeof(a)))
		return -1;
	s = accept(l, NULL, NULL);
	close(l);
	return s;
}

int main(int argc, char **argv)
{
	char line[16], c;
	pthread_t t;
	int fds[2], in = -1;

	if (argc < 2 || !fgets(line, sizeof(line), stdin))
		return 2;
	if (!strcmp(argv[1], "futex")) {
		pthread_create(&t, NULL, futex_waker, NULL);
		for (int i = 1; i <= ROUNDS; i++)
			while (__atomic_load_n(&word, __ATOMIC_SEQ_CST) < i)
				syscall(SYS_futex, &word, FUTEX_WAIT_PRIVATE, i - 1, NULL, NULL, 0);
	} else if (!strcmp(argv[1], "pipe") || !strcmp(argv[1], "tcp")) {
		if (!strcmp(argv[1], "pipe")) {
			if (pipe(fds))
				return 2;
			in = fds[0];
			mode_fd = fds[1];
		} else if ((mode_fd = tcp_pair(&in)) < 0) {
			return 2;
		}
		pthread_create(&t, NULL, sender, NULL);
		for (int i = 0; i < ROUNDS; i++)
			if (read(in, &c, 1) != 1)
				return 2;
	} else if (!strcmp(argv[1], "vfork")) {
		pid_t pid = vfork();

		if (pid == 0) {	/* shares main's memory: only a system call, then _exit */
			struct timespec one = {1, 0};
			syscall(SYS_nanosleep, &one, NULL);
			_exit(0);
		}
		if (pid < 0)
			return 2;
		return 0;	/* the child is reaped by init once this exits */
	} else if (!strcmp(argv[1], "stop")) {
		printf("ready\n");
		fflush(stdout);
		nap_ms(2000);
		return 0;
	} else {
		return 2;
	}
	/* no pthread_join: it would be one more futex wait whenever the helper, done after its
	 * last wake-up, has not exited yet (exit_group ends it without a wait) */
	(void)t;
	return 0;
}

/*
 * sockpair: a parent and a child talking over a unix stream socket pair.
 *
 * Each step the parent sends a line and reads the child's answer, a line
 * with the number doubled. Before the loop the child queues a greeting the
 * parent reads only at the end: a save always finds bytes in the socket.
 *
 *   ./sockpair [STEPS] [MS_PER_STEP]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void pause_ms(int ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

int main(int argc, char **argv)
{
	int steps = argc > 1 ? atoi(argv[1]) : 20;
	int ms = argc > 2 ? atoi(argv[2]) : 20;
	int sv[2], hello[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) || socketpair(AF_UNIX, SOCK_SEQPACKET, 0, hello))
		return 1;
	fflush(stdout);
	pid_t child = fork();
	if (child == 0) {
		close(sv[0]);
		close(hello[0]);
		send(hello[1], "greetings from the child", 24, 0);
		int n;
		while (read(sv[1], &n, sizeof n) == sizeof n) {
			n *= 2;
			if (write(sv[1], &n, sizeof n) != sizeof n)
				_exit(6);
		}
		_exit(4);	/* the parent closed its end */
	}
	close(sv[1]);
	close(hello[1]);
	printf("ready\n");
	fflush(stdout);
	for (int step = 1; step <= steps; step++) {
		int n = 0;
		if (write(sv[0], &step, sizeof step) != sizeof step ||
		    read(sv[0], &n, sizeof n) != sizeof n)
			printf("step %d: the child is gone\n", step);
		printf("step %d: the child says %d\n", step, n);
		fflush(stdout);
		pause_ms(ms);
	}
	char buf[64] = "";
	recv(hello[0], buf, sizeof buf - 1, 0);
	printf("queued: %s\n", buf);
	close(sv[0]);
	int status;
	waitpid(child, &status, 0);
	printf("child exited %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
	return 0;
}

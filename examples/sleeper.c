/*
 * sleeper: blocks in nanosleep, then in read, so that it can be saved while
 * inside a system call. A restore must make the call again, as the kernel
 * would: nanosleep returns 0 and read returns the line, not -EINTR or a
 * kernel-internal -ERESTART code.
 *
 *   ./sleeper [SECONDS] < input
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	int secs = argc > 1 ? atoi(argv[1]) : 2;
	printf("sleeping\n");
	fflush(stdout);
	struct timespec ts = { secs, 0 };
	int r = nanosleep(&ts, NULL);
	printf("nanosleep returned %d errno %d\n", r, r ? errno : 0);
	printf("reading\n");
	fflush(stdout);
	char buf[256];
	ssize_t n = read(0, buf, sizeof buf - 1);
	buf[n > 0 ? n : 0] = 0;
	printf("read returned %zd errno %d: %s\n", n, n < 0 ? errno : 0, buf);
	return 0;
}

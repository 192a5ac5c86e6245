/*
 * piper: holds a pipe with data in it; at the end it reads the data back
 * (a restore must give back the pipe, both ends, and its bytes).
 *
 *   ./piper [STEPS]
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

__attribute__((noinline)) void tick(int step) { printf("tick %d\n", step); fflush(stdout); }

int main(int argc, char **argv)
{
	int steps = argc > 1 ? atoi(argv[1]) : 6;
	int p[2];
	if (pipe(p) != 0)
		return 1;
	write(p[1], "queued", 6);
	for (int step = 0; step < steps; step++) {
		tick(step);
		struct timespec ts = { 0, 10000000 };
		nanosleep(&ts, NULL);
	}
	char buf[16] = { 0 };
	ssize_t n = read(p[0], buf, sizeof buf - 1);
	printf("read back %zd: %s\n", n, buf);
	return 0;
}

/*
 * clock: reads the clocks the vDSO serves (clock_gettime, gettimeofday,
 * time, clock_getres) every step and checks that they agree. glibc caches
 * the vDSO's addresses at start-up, so a restore that leaves no vDSO where
 * the program expects it crashes here on the first step after the restore.
 *
 *   ./clock [STEPS] [SLEEP_MS]
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

static long long ns(struct timespec t)
{
	return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static struct timespec prev_mono;

int check_clocks(int step)
{
	struct timespec mono, real, res;
	struct timeval tv;
	int ok = clock_gettime(CLOCK_MONOTONIC, &mono) == 0;
	ok &= clock_gettime(CLOCK_REALTIME, &real) == 0;
	ok &= gettimeofday(&tv, NULL) == 0;
	time_t t = time(NULL);
	ok &= clock_getres(CLOCK_MONOTONIC, &res) == 0 && res.tv_sec == 0 && res.tv_nsec > 0;
	ok &= ns(mono) >= ns(prev_mono);
	ok &= llabs((long long)real.tv_sec - tv.tv_sec) <= 1 && llabs((long long)t - real.tv_sec) <= 1;
	ok &= real.tv_sec > 1600000000; /* after 2020 */
	prev_mono = mono;
	return ok;
}

int main(int argc, char **argv)
{
	int steps = argc > 1 ? atoi(argv[1]) : 20;
	int sleep_ms = argc > 2 ? atoi(argv[2]) : 50;
	for (int step = 0; step < steps; step++) {
		printf("step %d clocks %s\n", step, check_clocks(step) ? "ok" : "WRONG");
		fflush(stdout);
		struct timespec ts = { sleep_ms / 1000, (sleep_ms % 1000) * 1000000L };
		nanosleep(&ts, NULL);
	}
	printf("done\n");
	return 0;
}

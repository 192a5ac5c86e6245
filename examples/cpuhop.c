/*
 * cpuhop: pins itself to each CPU in turn and checks that sched_getcpu()
 * agrees. glibc answers sched_getcpu() from the rseq area the kernel keeps
 * up to date: a restore that does not register that area again leaves the
 * answer stuck at a stale CPU.
 *
 *   ./cpuhop [STEPS] [SLEEP_MS]
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/sysinfo.h>
#include <time.h>

int hop(int step, int ncpu)
{
	int cpu = step % ncpu;
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(0, sizeof set, &set) != 0)
		return -1;
	return sched_getcpu() == cpu;
}

int main(int argc, char **argv)
{
	int steps = argc > 1 ? atoi(argv[1]) : 20;
	int sleep_ms = argc > 2 ? atoi(argv[2]) : 20;
	int ncpu = get_nprocs();
	for (int step = 0; step < steps; step++) {
		int r = hop(step, ncpu);
		printf("step %d cpu %s\n", step, r == 1 ? "ok" : r == 0 ? "STALE" : "unpinnable");
		fflush(stdout);
		struct timespec ts = { 0, sleep_ms * 1000000L };
		nanosleep(&ts, NULL);
	}
	printf("done\n");
	return 0;
}

/*
 * ticker: holds MIB mebibytes of non-zero memory and loops, writing one page
 * of it per iteration and timing each iteration with CLOCK_MONOTONIC. On
 * SIGUSR1 it prints the longest gap between two iterations since the last
 * report (what a save's pause felt like to it) and starts over; on SIGTERM
 * it exits. For benchmarks/headless.py.
 *
 *   ./ticker [MIB]      prints "ready", then "gap_us N" per SIGUSR1
 */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static volatile sig_atomic_t report, stop;

static void on_usr1(int sig) { (void)sig; report = 1; }
static void on_term(int sig) { (void)sig; stop = 1; }

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 64;
	size_t words = mib << 17;
	uint64_t *p = malloc(words * 8);
	if (!p)
		return 1;
	for (size_t i = 0; i < words; i++)
		p[i] = i * 0x9e3779b97f4a7c15ULL | 1;
	signal(SIGUSR1, on_usr1);
	signal(SIGTERM, on_term);
	printf("ready\n");
	fflush(stdout);
	uint64_t last = now_ns(), worst = 0;
	for (size_t i = 0; !stop; i = (i + 512) % words) {
		p[i] += 1;
		uint64_t t = now_ns();
		if (t - last > worst)
			worst = t - last;
		last = t;
		if (report) {
			report = 0;
			printf("gap_us %llu\n", (unsigned long long)(worst / 1000));
			fflush(stdout);
			worst = 0;
			last = now_ns();
		}
	}
	return 0;
}

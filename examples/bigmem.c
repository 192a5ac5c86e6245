/*
 * bigmem: holds MIB mebibytes of non-zero data and checks them every step.
 * For measuring save and restore of a large process, and for seeing that
 * every byte came back.
 *
 *   ./bigmem [MIB] [STEPS] [SLEEP_MS]
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static uint64_t mix(uint64_t x)
{
	x ^= x >> 31;
	x *= 0x7fb5d329728ea185ULL;
	x ^= x >> 27;
	return x | 1;
}

uint64_t sum_all(const uint64_t *p, size_t n)
{
	uint64_t s = 0;
	for (size_t i = 0; i < n; i++)
		s = s * 31 + p[i];
	return s;
}

int main(int argc, char **argv)
{
	size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 64;
	int steps = argc > 2 ? atoi(argv[2]) : 5;
	int sleep_ms = argc > 3 ? atoi(argv[3]) : 100;
	size_t n = mib << 17; /* 8-byte words */
	uint64_t *p = malloc(n * sizeof *p);
	if (!p)
		return 1;
	for (size_t i = 0; i < n; i++)
		p[i] = mix(i);
	for (int step = 0; step < steps; step++) {
		p[step * 4096 % n] ^= step;
		printf("step %d sum %016llx\n", step, (unsigned long long)sum_all(p, n));
		fflush(stdout);
		struct timespec ts = { sleep_ms / 1000, (sleep_ms % 1000) * 1000000L };
		nanosleep(&ts, NULL);
	}
	return 0;
}

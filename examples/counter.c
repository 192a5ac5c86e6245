/*
 * counter: a small program to checkpoint. It computes a running hash over
 * heap, stack and thread-local state, one step a line, sleeping a little
 * between steps so that it can be interrupted anywhere.
 *
 *   ./counter [STEPS] [SLEEP_MS]
 *
 * Its output depends on every byte of that state, so a restore that gets
 * anything wrong shows in the output.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static __thread uint64_t tls_acc = 0x9e3779b97f4a7c15ULL;
static uint64_t global_table[512];

static uint64_t mix(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	return x;
}

uint64_t compute_step(uint64_t *heap, size_t n, int step)
{
	uint64_t local[64];
	for (int i = 0; i < 64; i++)
		local[i] = mix(tls_acc + i + step);
	for (size_t i = 0; i < n; i++)
		heap[i] = mix(heap[i] ^ local[i % 64] ^ global_table[i % 512]);
	tls_acc = mix(tls_acc ^ heap[step % n]);
	global_table[step % 512] ^= tls_acc;
	return tls_acc;
}

int main(int argc, char **argv)
{
	int steps = argc > 1 ? atoi(argv[1]) : 20;
	int sleep_ms = argc > 2 ? atoi(argv[2]) : 100;
	size_t n = 1 << 16; /* 512 KiB of heap */
	uint64_t *heap = malloc(n * sizeof *heap);
	for (size_t i = 0; i < n; i++)
		heap[i] = i * 0x100000001b3ULL;
	for (int i = 0; i < 512; i++)
		global_table[i] = mix(i);
	for (int step = 0; step < steps; step++) {
		uint64_t h = compute_step(heap, n, step);
		char *line = malloc(64);  /* the heap grows as it runs */
		snprintf(line, 64, "step %d %016llx", step, (unsigned long long)h);
		puts(line);
		fflush(stdout);
		struct timespec ts = { sleep_ms / 1000, (sleep_ms % 1000) * 1000000L };
		nanosleep(&ts, NULL);
	}
	printf("done %016llx\n", (unsigned long long)tls_acc);
	return 0;
}

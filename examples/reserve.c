/*
 * reserve: holds a 64 GiB PROT_NONE reservation, as JITs, wasm runtimes and
 * sanitizers do, and uses a little of it. A restore that made it writable
 * would need 64 GiB of commitment and fail.
 *
 *   ./reserve [STEPS]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

__attribute__((noinline)) void step(int n, unsigned long sum) { printf("step %d %lu\n", n, sum); fflush(stdout); }

int main(int argc, char **argv)
{
	int steps = argc > 1 ? atoi(argv[1]) : 6;
	size_t size = 64UL << 30;
	char *r = mmap(NULL, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (r == MAP_FAILED)
		return 1;
	/* Use the first MiB of it, like a heap grown inside a reservation. */
	if (mprotect(r, 1 << 20, PROT_READ | PROT_WRITE) != 0)
		return 1;
	unsigned long sum = 0;
	for (int n = 0; n < steps; n++) {
		memset(r + n * 4096, n + 1, 4096);
		for (int i = 0; i < (1 << 20); i += 4096)
			sum += (unsigned char)r[i];
		step(n, sum);
	}
	return 0;
}

/*
 * mutator: rewrites every page of MIB mebibytes, round after round, checking
 * before each write that the page holds what the previous round left. A save
 * taken while it runs must be one instant: registers, the loop's position
 * and every page together. A torn image (memory from two moments, or memory
 * that does not match the registers) makes the restored program say TORN
 * and exit 1.
 *
 *   ./mutator [MIB] [ROUNDS]   prints "round R sum HEX" every 100 rounds
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define PAGE 4096

int main(int argc, char **argv)
{
	size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 64;
	long rounds = argc > 2 ? atol(argv[2]) : 3000;
	size_t pages = mib << 8;
	volatile uint64_t *mem = aligned_alloc(PAGE, pages * PAGE);
	if (!mem)
		return 2;
	for (size_t i = 0; i < pages; i++)
		mem[i * (PAGE / 8)] = 0;
	uint64_t sum = 0;
	for (long r = 1; r <= rounds; r++) {
		for (size_t i = 0; i < pages; i++) {
			volatile uint64_t *w = &mem[i * (PAGE / 8)];
			if (*w != (uint64_t)(r - 1) * 2654435761u + i) {
				if (r > 1 || *w != 0) {
					printf("TORN at round %ld page %zu: %llx\n", r, i,
					       (unsigned long long)*w);
					return 1;
				}
			}
			*w = (uint64_t)r * 2654435761u + i;
			sum += *w;
		}
		if (r % 100 == 0) {
			printf("round %ld sum %016llx\n", r, (unsigned long long)sum);
			fflush(stdout);
		}
	}
	return 0;
}

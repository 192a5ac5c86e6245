/*
 * AMX tile state held live across a checkpoint: the process asks for AMX
 * permission, loads a tile configuration and tiles tmm0-tmm7 from a pattern,
 * stops in held(), then stores the tiles back and prints a digest. A restore
 * must bring back the permission (or the next tile instruction dies of
 * SIGILL), the configuration and every tile byte.
 *
 * Usage: amx SEED   (prints "amx no" and exits 0 on a CPU without AMX)
 */
#include <cpuid.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18
#define TILES 8
#define ROWS 16
#define COLB 64

struct tilecfg {
	uint8_t palette, start_row, reserved[14];
	uint16_t colsb[16];
	uint8_t rows[16];
} __attribute__((packed));

static struct tilecfg cfg __attribute__((aligned(64)));
static unsigned char in[TILES][ROWS * COLB] __attribute__((aligned(64)));
static unsigned char out[TILES][ROWS * COLB] __attribute__((aligned(64)));

void __attribute__((noipa)) held(void)
{
	__asm__ volatile("" ::: "memory");
}

static int has_amx(void)
{
	unsigned a, b, c, d;
	return __get_cpuid_count(7, 0, &a, &b, &c, &d) && (d & (1u << 24));
}

#define LOAD(n) "tileloadd (%[p],%[s],1), %%tmm" #n "\n"
#define STORE(n) "tilestored %%tmm" #n ", (%[q],%[s],1)\n"

int main(int argc, char **argv)
{
	if (!has_amx()) {
		printf("amx no\n");
		return 0;
	}
	if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)) {
		perror("ARCH_REQ_XCOMP_PERM");
		return 2;
	}
	uint64_t x = argc > 1 ? strtoull(argv[1], 0, 0) : 1;
	for (size_t t = 0; t < TILES; t++)
		for (size_t i = 0; i < sizeof in[t]; i++) {
			x = x * 6364136223846793005ULL + 1442695040888963407ULL;
			in[t][i] = (unsigned char)(x >> 56);
		}
	cfg.palette = 1;
	for (int t = 0; t < TILES; t++) {
		cfg.colsb[t] = COLB;
		cfg.rows[t] = ROWS;
	}
	printf("amx yes\n");
	fflush(stdout);
	unsigned char *p, *q;	/* walk the tile buffers */
	__asm__ volatile(
		"ldtilecfg %[c]\n"
		"mov %[p0], %[p]\n" LOAD(0) "add $1024, %[p]\n" LOAD(1) "add $1024, %[p]\n" LOAD(2)
		"add $1024, %[p]\n" LOAD(3) "add $1024, %[p]\n" LOAD(4) "add $1024, %[p]\n" LOAD(5)
		"add $1024, %[p]\n" LOAD(6) "add $1024, %[p]\n" LOAD(7)
		"call held\n"
		"mov %[q0], %[q]\n" STORE(0) "add $1024, %[q]\n" STORE(1) "add $1024, %[q]\n" STORE(2)
		"add $1024, %[q]\n" STORE(3) "add $1024, %[q]\n" STORE(4) "add $1024, %[q]\n" STORE(5)
		"add $1024, %[q]\n" STORE(6) "add $1024, %[q]\n" STORE(7)
		"tilerelease\n"
		: [p] "=&r"(p), [q] "=&r"(q)
		: [c] "m"(cfg), [p0] "r"(in), [q0] "r"(out), [s] "r"((long)COLB)
		: "memory", "rax", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11");
	uint64_t h = 1469598103934665603ULL;
	int same = 1;
	for (size_t t = 0; t < TILES; t++)
		for (size_t i = 0; i < sizeof out[t]; i++) {
			h = (h ^ out[t][i]) * 1099511628211ULL;
			same &= out[t][i] == in[t][i];
		}
	printf("tiles %s\ndigest %016llx\n", same ? "intact" : "CHANGED", (unsigned long long)h);
	return same ? 0 : 1;
}

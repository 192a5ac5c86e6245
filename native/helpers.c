/*
 * C helpers gdbckpt loads into GDB's Python with ctypes, for the loops that
 * would cost a Python iteration per page.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define PAGE_SIZE 4096

static int page_is_zero(const uint64_t *p)
{
	/* Most pages that are not zero differ in their first bytes. */
	if (p[0] | p[1] | p[2] | p[3])
		return 0;
	uint64_t acc = 0;
	for (size_t i = 0; i < PAGE_SIZE / 8; i++)
		acc |= p[i];
	return acc == 0;
}

/*
 * out[i] = 1 where page i of buf holds any non-zero byte, else 0.
 * buf must be 8-byte aligned. Returns the number of non-zero pages.
 */
size_t ckpt_nonzero_pages(const void *buf, size_t npages, uint8_t *out)
{
	const uint8_t *b = buf;
	size_t count = 0;
	for (size_t i = 0; i < npages; i++) {
		out[i] = !page_is_zero((const uint64_t *)(b + i * PAGE_SIZE));
		count += out[i];
	}
	return count;
}

/*
 * CPUID for Python: the layout of the XSAVE area (leaf 0xd) is the CPU's,
 * and Python has no way to ask for it.
 */
#include <cpuid.h>

void ckpt_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t out[4])
{
	__cpuid_count(leaf, subleaf, out[0], out[1], out[2], out[3]);
}

/* XCR0, the state components the kernel enabled; 0 without OSXSAVE. */
uint64_t ckpt_xcr0(void)
{
	uint32_t a, b, c, d;
	__cpuid(1, a, b, c, d);
	if (!(c & (1u << 27)))
		return 0;
	__asm__ volatile("xgetbv" : "=a"(a), "=d"(d) : "c"(0));
	return (uint64_t)d << 32 | a;
}

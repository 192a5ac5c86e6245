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
 * Where a held glibc mutex of one of some threads may be, for tids.py: the offsets of the
 * 8-aligned 40-byte slots of buf, from *at on, whose owner (the int at +8) is a thread id
 * marked in want (bit id - lo, ids lo..hi), whose lock word (+0) is not 0 and whose user
 * count (+12) is 1..65535. At most max offsets go to out; returns how many did, and
 * leaves in *at where to go on (len when done). One pass over memory for every thread:
 * a scan per thread id in Python took half a minute for a 1 GiB JVM.
 */
size_t ckpt_owner_slots(const uint8_t *buf, size_t len, size_t *at, int32_t lo, int32_t hi,
			const uint8_t *want, size_t *out, size_t max)
{
	size_t n = 0, off = *at;
	for (; off + 40 <= len && n < max; off += 8) {
		int32_t owner, lock;
		uint32_t users;
		memcpy(&owner, buf + off + 8, 4);
		if (owner < lo || owner > hi)
			continue;
		uint32_t bit = (uint32_t)(owner - lo);
		if (!(want[bit >> 3] >> (bit & 7) & 1))
			continue;
		memcpy(&lock, buf + off, 4);
		memcpy(&users, buf + off + 12, 4);
		if (lock != 0 && users >= 1 && users < 65536)
			out[n++] = off;
	}
	*at = off + 40 <= len ? off : len;
	return n;
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

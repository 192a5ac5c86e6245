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

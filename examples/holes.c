/*
 * holes: memory of every sort a save stores differently, checked every step.
 *   - 12 MiB of anonymous memory, every 7th page of it zero though present
 *     (a snapshot that writes its own memory leaves holes in the image there);
 *   - an 8 MiB private mapping of FILE, some pages rewritten, one zeroed, and
 *     one a guard page (MADV_GUARD_INSTALL, Linux 6.13: no one can read it);
 *   - 1 MiB of data behind PROT_NONE.
 * Prints "ready" (and "guard on" if the guard page is in), waits for a line on
 * stdin, then prints "step N sum HEX" for STEPS steps, SLEEP_MS apart.
 *
 *   ./holes FILE [STEPS] [SLEEP_MS]
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define ANON_PAGES (12 << 8)
#define FILE_PAGES (8 << 8)
#define HIDDEN_PAGES (1 << 8)
#define GUARD_PAGE 100
#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#endif

static uint64_t sum_of(const unsigned char *p, size_t pages, uint64_t s)
{
	for (size_t i = 0; i < pages * PAGE; i += 64)
		s = s * 31 + p[i] + p[i + 63];
	return s;
}

static unsigned char *file_mapping(const char *path)
{
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	static unsigned char page[PAGE];
	memset(page, 'f', PAGE);
	for (int i = 0; fd >= 0 && i < FILE_PAGES; i++)
		if (write(fd, page, PAGE) != PAGE)
			return NULL;
	unsigned char *p = mmap(NULL, FILE_PAGES * (size_t)PAGE, PROT_READ | PROT_WRITE,
				MAP_PRIVATE, fd, 0);
	close(fd);
	return p == MAP_FAILED ? NULL : p;
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	int steps = argc > 2 ? atoi(argv[2]) : 5;
	int sleep_ms = argc > 3 ? atoi(argv[3]) : 100;
	unsigned char *anon = mmap(NULL, ANON_PAGES * (size_t)PAGE, PROT_READ | PROT_WRITE,
				   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	unsigned char *file = file_mapping(argv[1]);
	unsigned char *hidden = mmap(NULL, HIDDEN_PAGES * (size_t)PAGE, PROT_READ | PROT_WRITE,
				     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (anon == MAP_FAILED || !file || hidden == MAP_FAILED)
		return 1;
	for (size_t i = 0; i < ANON_PAGES; i++)
		memset(anon + i * PAGE, i % 7 ? (int)(i % 251) + 1 : 0, PAGE);
	for (size_t i = 0; i < FILE_PAGES; i += 5)
		memset(file + i * PAGE, (int)(i % 13) + 'a', PAGE);
	memset(file + 7 * PAGE, 0, PAGE);
	for (size_t i = 0; i < HIDDEN_PAGES; i++)
		memset(hidden + i * PAGE, (int)(i % 199) + 1, PAGE);
	mprotect(hidden, HIDDEN_PAGES * (size_t)PAGE, PROT_NONE);
	int guard = madvise(file + GUARD_PAGE * PAGE, PAGE, MADV_GUARD_INSTALL) == 0;
	printf("ready\n%s", guard ? "guard on\n" : "");
	fflush(stdout);
	char line[16];
	if (!fgets(line, sizeof line, stdin))
		return 3;
	struct timespec nap = { sleep_ms / 1000, (sleep_ms % 1000) * 1000000L };
	for (int step = 0; step < steps; step++) {
		mprotect(hidden, HIDDEN_PAGES * (size_t)PAGE, PROT_READ);
		uint64_t s = sum_of(anon, ANON_PAGES, 0);
		s = sum_of(file, GUARD_PAGE, s);
		s = sum_of(file + (GUARD_PAGE + 1) * PAGE, FILE_PAGES - GUARD_PAGE - 1, s);
		s = sum_of(hidden, HIDDEN_PAGES, s);
		mprotect(hidden, HIDDEN_PAGES * (size_t)PAGE, PROT_NONE);
		printf("step %d sum %016llx\n", step, (unsigned long long)s);
		fflush(stdout);
		nanosleep(&nap, NULL);
	}
	return 0;
}

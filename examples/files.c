/*
 * files: uses files the way programs do, so that a restore must bring its
 * descriptors back right: it reads input lines through stdio, writes a
 * record per line at an offset of a data file (through the file position),
 * appends to an O_APPEND log, and keeps a deleted scratch file open.
 *
 *   ./files DIR < input
 *
 * At the end it prints a checksum of the deleted file's contents.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int data_fd, log_fd, scratch_fd;

__attribute__((noinline)) void step_done(int step)
{
	/* A breakpoint target: one line of input consumed and written. */
	__asm__ volatile("" ::: "memory");
	(void)step;
}

int main(int argc, char **argv)
{
	char path[4096], line[256];
	const char *dir = argc > 1 ? argv[1] : ".";
	snprintf(path, sizeof path, "%s/data.bin", dir);
	data_fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	snprintf(path, sizeof path, "%s/log.txt", dir);
	log_fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_TRUNC, 0644);
	snprintf(path, sizeof path, "%s/scratch", dir);
	scratch_fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	unlink(path);
	if (data_fd < 0 || log_fd < 0 || scratch_fd < 0)
		return 1;
	int step = 0;
	while (fgets(line, sizeof line, stdin)) {
		line[strcspn(line, "\n")] = 0;
		char rec[64] = {0};
		snprintf(rec, sizeof rec, "record %d: %s", step, line);
		/* Every other record goes back over a hole: the offset must be right. */
		lseek(data_fd, (off_t)(step ^ 1) * 64, SEEK_SET);
		write(data_fd, rec, sizeof rec);
		dprintf(log_fd, "step %d read %zu bytes\n", step, strlen(line));
		dprintf(scratch_fd, "%s|", line);
		printf("step %d: %s\n", step, line);
		fflush(stdout);
		step_done(step);
		struct timespec ts = { 0, 5000000 };
		nanosleep(&ts, NULL);
		step++;
	}
	uint64_t h = 1469598103934665603ULL;
	char c;
	lseek(scratch_fd, 0, SEEK_SET);
	while (read(scratch_fd, &c, 1) == 1)
		h = (h ^ (unsigned char)c) * 1099511628211ULL;
	printf("done %d steps, scratch %016llx\n", step, (unsigned long long)h);
	return 0;
}

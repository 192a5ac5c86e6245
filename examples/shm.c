/*
 * shm: shared memory a restore must recreate: a file mapped MAP_SHARED
 * (writes reach the file), a private SysV segment removed once attached, a
 * keyed SysV segment, and anonymous shared memory seen through two views.
 *
 *   ./shm DIR KEY [STEPS]
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <time.h>
#include <unistd.h>

__attribute__((noinline)) void step_done(int step) { __asm__ volatile("" ::: "memory"); (void)step; }

int main(int argc, char **argv)
{
	if (argc < 3)
		return 2;
	int steps = argc > 3 ? atoi(argv[3]) : 8;
	char path[4096];
	snprintf(path, sizeof path, "%s/shared.bin", argv[1]);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (fd < 0 || ftruncate(fd, 8192) != 0)
		return 1;
	char *file = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	close(fd);
	int priv = shmget(IPC_PRIVATE, 65536, IPC_CREAT | 0600);
	unsigned char *s1 = shmat(priv, NULL, 0);
	shmctl(priv, IPC_RMID, NULL);
	int keyed = shmget((key_t)strtol(argv[2], NULL, 0), 32768, IPC_CREAT | IPC_EXCL | 0600);
	unsigned char *s2 = shmat(keyed, NULL, 0);
	unsigned char *a = mmap(NULL, 16384, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	unsigned char *b = mremap(a, 0, 16384, MREMAP_MAYMOVE);
	if (file == MAP_FAILED || s1 == (void *)-1 || s2 == (void *)-1 || a == MAP_FAILED ||
	    b == MAP_FAILED)
		return 1;
	for (int step = 0; step < steps; step++) {
		snprintf(file + step * 64, 64, "step %d was here", step);
		s1[step * 4096] = step + 1;
		s2[step * 1024] = 2 * step + 1;
		a[step * 2048] = 3 * step + 1;
		unsigned sum1 = 0, sum2 = 0;
		for (int i = 0; i < 65536; i++)
			sum1 += s1[i] * (i + 1);
		for (int i = 0; i < 32768; i++)
			sum2 += s2[i] * (i + 1);
		printf("step %d sysv_private=%u sysv_keyed=%u views_shared=%d\n", step, sum1, sum2,
		       memcmp(a, b, 16384) == 0);
		fflush(stdout);
		step_done(step);
		struct timespec ts = { 0, 5000000 };
		nanosleep(&ts, NULL);
	}
	printf("detach private=%d keyed=%d\n", shmdt(s1), shmdt(s2));
	shmctl(keyed, IPC_RMID, NULL);
	return 0;
}

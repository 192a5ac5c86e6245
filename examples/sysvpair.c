/*
 * sysvpair: a parent and a child sharing a private SysV shared memory segment.
 *
 * The parent attaches an IPC_PRIVATE segment (removed at once: it lives while
 * attached), forks a child that keeps it, and each step puts a number in it;
 * the child answers with the number plus 1000 in the same segment. The parent
 * prints both. At the end it tells the child to stop and reaps it.
 *
 *   ./sysvpair [STEPS] [MS_PER_STEP]
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/shm.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct page {
	volatile int req, ans, stop;
};

static void pause_ms(int ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

int main(int argc, char **argv)
{
	int steps = argc > 1 ? atoi(argv[1]) : 20;
	int ms = argc > 2 ? atoi(argv[2]) : 20;
	int id = shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0600);
	struct page *p = id < 0 ? (void *)-1 : shmat(id, NULL, 0);
	if (p == (void *)-1)
		return 1;
	shmctl(id, IPC_RMID, NULL);
	fflush(stdout);
	pid_t child = fork();
	if (child == 0) {
		int last = 0;
		while (!p->stop) {
			if (p->req != last) {
				last = p->req;
				p->ans = last + 1000;
			}
			pause_ms(1);
		}
		_exit(0);
	}
	printf("ready\n");
	fflush(stdout);
	for (int step = 1; step <= steps; step++) {
		p->req = step;
		for (int spin = 0; p->ans != step + 1000 && spin < 5000; spin++)
			pause_ms(1);
		printf("step %d: the child says %d\n", step, p->ans);
		fflush(stdout);
		pause_ms(ms);
	}
	p->stop = 1;
	int status;
	waitpid(child, &status, 0);
	printf("child exited %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
	return 0;
}

/*
 * family: a parent and its children, for saving and restoring a process tree.
 *
 *   - a worker it talks to through two pipes: it sends a number, the worker
 *     answers with its square;
 *   - a child that exits at once with status 7, left a zombie until the end;
 *   - a child in a process group of its own that doubles what the parent puts
 *     in a MAP_SHARED anonymous page they share (its parent-death signal set).
 *
 * The parent is a child subreaper. Each step it asks the worker, asks the
 * shared page, and prints both answers; halfway it calls checkpoint_here()
 * (a breakpoint target). At the end it stops its children and reaps each
 * one, printing its status, and says whether its pid is still the one it
 * started with (in getpid() and in /proc/self). The children print nothing.
 *
 *   ./family [STEPS] [MS_PER_STEP]
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct shared {
	volatile int req, ans, stop;
};

__attribute__((noinline)) void checkpoint_here(void)
{
	__asm__ volatile("" ::: "memory");
}

static void pause_ms(int ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

static void worker(int in, int out)
{
	int n;
	while (read(in, &n, sizeof n) == sizeof n) {
		n *= n;
		if (write(out, &n, sizeof n) != sizeof n)
			_exit(6);
	}
	_exit(5); /* the parent closed its end */
}

static void doubler(struct shared *sh)
{
	prctl(PR_SET_PDEATHSIG, SIGTERM);
	int last = 0;
	while (!sh->stop) {
		if (sh->req != last) {
			last = sh->req;
			sh->ans = 2 * last;
		}
		pause_ms(1);
	}
	int sig = 0;
	prctl(PR_GET_PDEATHSIG, &sig);
	_exit((getpgid(0) == getpid() ? 3 : 4) + (sig == SIGTERM ? 10 : 0));
}

static void report(const char *who, pid_t pid)
{
	int status;
	if (waitpid(pid, &status, 0) != pid)
		printf("%s: not reaped\n", who);
	else if (WIFEXITED(status))
		printf("%s exited %d\n", who, WEXITSTATUS(status));
	else
		printf("%s ended by signal %d\n", who, WTERMSIG(status));
}

int main(int argc, char **argv)
{
	int steps = argc > 1 ? atoi(argv[1]) : 20;
	pid_t me = getpid();
	int ms = argc > 2 ? atoi(argv[2]) : 20;
	prctl(PR_SET_CHILD_SUBREAPER, 1);
	struct shared *sh = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
				 -1, 0);
	int ask[2], answer[2];
	if (sh == MAP_FAILED || pipe(ask) || pipe(answer))
		return 1;
	fflush(stdout);
	pid_t zombie = fork();
	if (zombie == 0)
		_exit(7);
	pid_t work = fork();
	if (work == 0) {
		close(ask[1]);
		close(answer[0]);
		worker(ask[0], answer[1]);
	}
	close(ask[0]);
	close(answer[1]);
	pid_t dbl = fork();
	if (dbl == 0) {
		setpgid(0, 0);
		doubler(sh);
	}
	setpgid(dbl, dbl);
	siginfo_t si;
	waitid(P_PID, zombie, &si, WEXITED | WNOWAIT); /* a zombie from now on */
	printf("ready\n");
	fflush(stdout);
	for (int step = 1; step <= steps; step++) {
		if (step == steps / 2)
			checkpoint_here();
		int sq = 0;
		if (write(ask[1], &step, sizeof step) != sizeof step ||
		    read(answer[0], &sq, sizeof sq) != sizeof sq)
			printf("step %d: the worker is gone\n", step);
		sh->req = step;
		for (int spin = 0; sh->ans != 2 * step && spin < 5000; spin++)
			pause_ms(1);
		printf("step %d: worker says %d, shared page says %d\n", step, sq, sh->ans);
		fflush(stdout);
		pause_ms(ms);
	}
	close(ask[1]);
	sh->stop = 1;
	int reaper = 0;
	prctl(PR_GET_CHILD_SUBREAPER, &reaper);
	printf("subreaper %d\n", reaper);
	char self[32] = "";
	readlink("/proc/self", self, sizeof self - 1);
	printf("own pid kept %d, /proc/self agrees %d\n", getpid() == me, atoi(self) == me);
	report("zombie", zombie);
	report("worker", work);
	report("doubler", dbl);
	return 0;
}

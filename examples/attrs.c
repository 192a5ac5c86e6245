/*
 * attrs: process attributes a restore must bring back: umask, working
 * directory, name, a resource limit, no_new_privs, the dumpable flag, a
 * POSIX timer and an interval timer's existence.
 *
 *   ./attrs DIR [STEPS]
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static timer_t timer, thread_timer;

__attribute__((noinline)) void show(int step)
{
	char cwd[4096], name[16] = {0};
	mode_t mask = umask(0);
	umask(mask);
	struct rlimit rl;
	getrlimit(RLIMIT_NOFILE, &rl);
	prctl(PR_GET_NAME, name);
	struct itimerspec its;
	int timer_ok = timer_gettime(timer, &its) == 0 && its.it_interval.tv_sec == 7;
	struct itimerval itv;
	getitimer(ITIMER_VIRTUAL, &itv);
	printf("step %d umask=%03o cwd=%s name=%s nofile=%lu/%lu nnp=%d dumpable=%d timer=%d "
	       "itimer_interval=%ld\n", step, mask, getcwd(cwd, sizeof cwd), name,
	       (unsigned long)rl.rlim_cur, (unsigned long)rl.rlim_max,
	       prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0), prctl(PR_GET_DUMPABLE), timer_ok,
	       (long)itv.it_interval.tv_sec);
	fflush(stdout);
}

int main(int argc, char **argv)
{
	int steps = argc > 2 ? atoi(argv[2]) : 6;
	if (argc < 2 || chdir(argv[1]) != 0)
		return 1;
	umask(027);
	prctl(PR_SET_NAME, "attrs-demo");
	struct rlimit rl;
	getrlimit(RLIMIT_NOFILE, &rl);
	rl.rlim_cur = 100;
	setrlimit(RLIMIT_NOFILE, &rl);
	prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
	prctl(PR_SET_DUMPABLE, 0);
	struct sigevent sev = { .sigev_notify = SIGEV_NONE };
	timer_create(CLOCK_MONOTONIC, &sev, &timer);
	struct itimerspec its = { { 7, 0 }, { 7, 0 } };
	timer_settime(timer, 0, &its, NULL);
	/* A timer aimed at this very thread: its id changes with a restore, the timer follows. */
	struct sigevent tsev = { .sigev_notify = SIGEV_THREAD_ID, .sigev_signo = SIGRTMIN + 3 };
	tsev._sigev_un._tid = gettid();
	signal(SIGRTMIN + 3, SIG_IGN);
	timer_create(CLOCK_MONOTONIC, &tsev, &thread_timer);
	struct itimerval itv = { { 9, 0 }, { 9, 0 } };
	setitimer(ITIMER_VIRTUAL, &itv, NULL);
	for (int step = 0; step < steps; step++) {
		show(step);
		struct timespec ts = { 0, 10000000 };
		nanosleep(&ts, NULL);
	}
	return 0;
}

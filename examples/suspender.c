/*
 * suspender: blocks SIGUSR1 and waits in sigsuspend() with an empty mask,
 * woken by a SIGUSR1 that it sends itself from an interval timer's handler.
 * Each step prints whether SIGUSR1 is blocked again once sigsuspend returns:
 * the mask a save records must be the real one, not sigsuspend's temporary one.
 *
 *   ./suspender [STEPS]
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/time.h>
#include <unistd.h>

static volatile sig_atomic_t woken;

static void on_usr1(int sig) { (void)sig; woken++; }
static void on_alarm(int sig) { (void)sig; kill(getpid(), SIGUSR1); }

int main(int argc, char **argv)
{
	int steps = argc > 1 ? atoi(argv[1]) : 10;
	struct sigaction sa = { .sa_handler = on_usr1 };
	sigaction(SIGUSR1, &sa, NULL);
	sa.sa_handler = on_alarm;
	sigaction(SIGALRM, &sa, NULL);
	sigset_t block, empty, now;
	sigemptyset(&block);
	sigaddset(&block, SIGUSR1);
	sigprocmask(SIG_BLOCK, &block, NULL);
	sigemptyset(&empty);
	struct itimerval it = { { 0, 200000 }, { 0, 200000 } };
	setitimer(ITIMER_REAL, &it, NULL);
	for (int step = 0; step < steps; step++) {
		int before = woken;
		while (woken == before)
			sigsuspend(&empty);
		sigprocmask(SIG_BLOCK, NULL, &now);
		printf("step %d woken %d usr1_blocked=%d\n", step, woken, sigismember(&now, SIGUSR1));
		fflush(stdout);
	}
	return 0;
}

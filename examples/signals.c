/*
 * signals: signal state a restore must bring back: SIGUSR1 and SIGRTMIN
 * handlers, a SIGUSR2 handler that runs on an alternate stack, SIGTERM ignored, SIGHUP
 * blocked and left pending, and an interval timer (SIGALRM).
 *
 *   ./signals [STEPS]
 */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

static volatile sig_atomic_t usr1, rt, usr2_on_alt, hup, alarms;
static char altstack[64 * 1024];

static void on_usr1(int sig) { (void)sig; usr1++; }
static void on_rt(int sig) { (void)sig; rt++; }

static void on_usr2(int sig)
{
	char here;
	(void)sig;
	usr2_on_alt = &here >= altstack && &here < altstack + sizeof altstack;
}

static void on_hup(int sig) { (void)sig; hup++; }
static void on_alarm(int sig) { (void)sig; alarms++; }

__attribute__((noinline)) void report(int step, int alarms_seen)
{
	sigset_t pending;
	sigpending(&pending);
	printf("step %d usr1=%d rt=%d usr2_on_altstack=%d hup_pending=%d hup_handled=%d "
	       "alarm_ticking=%d\n", step, (int)usr1, (int)rt, (int)usr2_on_alt, sigismember(&pending, SIGHUP), (int)hup,
	       alarms_seen);
	fflush(stdout);
}

int main(int argc, char **argv)
{
	int steps = argc > 1 ? atoi(argv[1]) : 10;
	stack_t ss = { .ss_sp = altstack, .ss_size = sizeof altstack };
	sigaltstack(&ss, NULL);
	struct sigaction sa = { 0 };
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	sa.sa_handler = on_rt;
	sigaction(SIGRTMIN, &sa, NULL);
	sa.sa_handler = on_usr2;
	sa.sa_flags = SA_ONSTACK;
	sigaction(SIGUSR2, &sa, NULL);
	sa.sa_flags = SA_RESTART;
	sa.sa_handler = on_hup;
	sigaction(SIGHUP, &sa, NULL);
	sa.sa_handler = on_alarm;
	sigaction(SIGALRM, &sa, NULL);
	signal(SIGTERM, SIG_IGN);
	sigset_t block;
	sigemptyset(&block);
	sigaddset(&block, SIGHUP);
	sigprocmask(SIG_BLOCK, &block, NULL);
	struct itimerval it = { { 0, 20000 }, { 0, 20000 } };
	setitimer(ITIMER_REAL, &it, NULL);
	for (int step = 0; step < steps; step++) {
		int before = alarms;
		raise(SIGUSR1);
		raise(SIGRTMIN);
		usr2_on_alt = 0;
		raise(SIGUSR2);
		raise(SIGTERM);        /* ignored: the program goes on */
		if (step == 1)
			raise(SIGHUP); /* blocked: stays pending */
		if (step == steps - 1)
			sigprocmask(SIG_UNBLOCK, &block, NULL);
		struct timespec ts = { 0, 100000000 };
		while (nanosleep(&ts, &ts) != 0)
			;
		report(step, alarms > before);
	}
	return 0;
}

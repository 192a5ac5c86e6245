/*
 * threads: four workers take turns (a mutex and a condition variable) on a
 * shared counter; a holder thread keeps an error-checking mutex locked
 * until the end and handles a signal on its alternate stack; main joins
 * them all. A restore that gets thread ids wrong shows here: the holder's
 * unlock fails with EPERM, a join hangs, or pthread_kill misses. The holder
 * also keeps a SIGUSR1 from main pending (blocked) all along: a restore must
 * queue it again for that thread, with the siginfo the kernel gave it.
 *
 *   ./threads [ROUNDS] [PAUSE_US]
 */
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define NW 4

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int turn, counter, rounds, pause_us, release_held, usr2_seen, usr2_on_alt;
static uint64_t hash = 1469598103934665603ULL;
static pthread_mutex_t held;
static char altstack[64 * 1024];

__attribute__((noinline)) void worker_step(int id, int step)
{
	__asm__ volatile("" ::: "memory");
	(void)id, (void)step;
}

static void *worker(void *arg)
{
	int id = (int)(long)arg;
	for (int step = 0; step < rounds; step++) {
		pthread_mutex_lock(&lock);
		while (turn % NW != id)
			pthread_cond_wait(&cond, &lock);
		counter++;
		hash = (hash ^ (uint64_t)(counter * 31 + id)) * 1099511628211ULL;
		printf("round %d worker %d counter %d\n", step, id, counter);
		fflush(stdout);
		worker_step(id, step);
		turn++;
		pthread_cond_broadcast(&cond);
		pthread_mutex_unlock(&lock);
		usleep(pause_us);
	}
	return NULL;
}

static void on_usr2(int sig)
{
	char here;
	(void)sig;
	usr2_on_alt = &here >= altstack && &here < altstack + sizeof altstack;
	usr2_seen = 1;
}

static void *holder(void *arg)
{
	(void)arg;
	stack_t ss = { .ss_sp = altstack, .ss_size = sizeof altstack };
	sigaltstack(&ss, NULL);
	pthread_mutex_lock(&held);
	pthread_mutex_lock(&lock);
	while (!release_held)
		pthread_cond_wait(&cond, &lock);
	pthread_mutex_unlock(&lock);
	int r = pthread_mutex_unlock(&held);
	printf("holder: unlock of the error-checking mutex returned %s\n",
	       r == 0 ? "0" : strerror(r));
	sigset_t usr1;
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	siginfo_t si;
	struct timespec now = { 0, 0 };
	int got = sigtimedwait(&usr1, &si, &now);
	if (got == SIGUSR1)	/* si_code says who sent it: kill() or tgkill() */
		printf("holder: SIGUSR1 from main still pending, si_code %d\n", si.si_code);
	else
		printf("holder: SIGUSR1 from main lost\n");
	return NULL;
}

int main(int argc, char **argv)
{
	rounds = argc > 1 ? atoi(argv[1]) : 10;
	pause_us = argc > 2 ? atoi(argv[2]) : 500;
	pthread_mutexattr_t attr;
	pthread_mutexattr_init(&attr);
	pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ERRORCHECK);
	pthread_mutex_init(&held, &attr);
	struct sigaction sa = { .sa_handler = on_usr2, .sa_flags = SA_ONSTACK };
	sigaction(SIGUSR2, &sa, NULL);
	pthread_t h, w[NW];
	sigset_t usr1, old;
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &usr1, &old);	/* the holder is born with it blocked */
	pthread_create(&h, NULL, holder, NULL);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	pthread_kill(h, SIGUSR1);
	for (long i = 0; i < NW; i++)
		pthread_create(&w[i], NULL, worker, (void *)i);
	for (int i = 0; i < NW; i++)
		pthread_join(w[i], NULL);
	pthread_kill(h, SIGUSR2);
	while (!__atomic_load_n(&usr2_seen, __ATOMIC_SEQ_CST))
		usleep(1000);
	printf("holder got SIGUSR2 on its alternate stack: %d\n", usr2_on_alt);
	pthread_mutex_lock(&lock);
	release_held = 1;
	pthread_cond_broadcast(&cond);
	pthread_mutex_unlock(&lock);
	pthread_join(h, NULL);
	printf("done counter %d hash %016llx\n", counter, (unsigned long long)hash);
	return 0;
}

/*
 * events: holds one of each kind of descriptor a restore must rebuild, each
 * with state pending in it, then reports what each one held.
 *
 *   ./events DIR [SECONDS]
 *
 * DIR is a private writable directory (for DIR/listen.sock). The program sets
 * everything up, prints "ready", calls checkpoint_here() (a breakpoint target),
 * sleeps SECONDS (default 0) in 50 ms steps printing nothing, then uses every
 * descriptor and prints one line per kind, and "done". The report holds no
 * ports, pids, times or addresses: two uninterrupted runs print the same, and a
 * restored run must print the same too.
 *
 * Held at the save:
 *   - a pipe (both ends; read end O_NONBLOCK; F_SETPIPE_SZ 131072) with 5000
 *     bytes unread, and a pipe whose write end is closed with 100 bytes unread;
 *   - eventfds: count 5 with EFD_SEMAPHORE|EFD_NONBLOCK, count 7 plain;
 *   - timerfds: CLOCK_MONOTONIC 100 ms then every 200 ms; CLOCK_REALTIME
 *     TFD_TIMER_ABSTIME at 2100-01-01 then every day;
 *   - a signalfd for SIGUSR1 (blocked), with SIGUSR1 pending (raise());
 *   - an epoll fd watching the pipe (11), the semaphore eventfd with EPOLLET
 *     (12), a stream socketpair end (13), the TCP listener (14) and a second
 *     epoll fd (15) that watches the plain eventfd (21); no epoll_wait yet;
 *   - unix socketpairs (stream, dgram, seqpacket) with data queued both ways;
 *   - unix stream listeners on DIR/listen.sock and an abstract name;
 *   - TCP listeners on 127.0.0.1 and ::1 (IPV6_V6ONLY), ports chosen by the
 *     kernel; a UDP socket on 127.0.0.1 with one datagram from itself queued;
 *   - an established TCP connection on 127.0.0.1 (its listener closed) with
 *     TCP_NODELAY on one end, SO_KEEPALIVE on the other, 3000 bytes unread
 *     each way;
 *   - file locks: flock (write) on DIR/lock.flock; POSIX write on bytes 10-19
 *     and read from 100 to the end of DIR/lock.posix; an OFD write lock on all
 *     of DIR/lock.ofd (a child process checks them, from outside, at the end);
 *   - an inotify descriptor with watches 1 (DIR, IN_CREATE), 2 (DIR/sub,
 *     IN_DELETE) and 4 (DIR/sub2, IN_CREATE): watch 3 was removed;
 *   - a pidfd of the process itself;
 *   - a memfd with 3000 bytes, its offset at 100 and F_SEAL_WRITE;
 *   - a datagram socketpair whose unread message carries DIR/carried (offset 3);
 *   - a fanotify descriptor marking DIR/fan-watched for FAN_OPEN, where permitted
 *     (root); "fanotify: unavailable" otherwise, before and after a restore alike.
 *
 * Failed calls print "FAILED: what: error" and exit 1. A reading that would
 * block forever if state were lost waits at most 2 s and reports "timeout".
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/file.h>
#include <sys/fanotify.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define WAIT_MS 2000
#define PIPE_BYTES 5000
#define CLOSED_PIPE_BYTES 100
#define TCP_BYTES 3000
#define YEAR_2100 4102444800L /* 2100-01-01T00:00:00Z */

/* Everything the report needs, set up before the save. */
static const char *dir;
static char listen_path[108], abstract_name[64];
static int pipe_fds[2], closed_pipe_rd, ev_sem, ev_count, timer_mono, timer_far, sig_fd;
static int ep, ep_nested;
static int stream_pair[2], dgram_pair[2], seqpacket_pair[2];
static int unix_listener, abstract_listener, tcp4_listener, tcp6_listener, udp;
static int tcp_a, tcp_b; /* tcp_a connected, TCP_NODELAY; tcp_b accepted, SO_KEEPALIVE */
static int lock_flock, lock_posix, lock_ofd, watcher, self_pidfd, memfd, fan = -1;
static int carrier_pair[2];
static uint16_t port4, port6, port_udp;

__attribute__((noinline)) void checkpoint_here(void)
{
	/* A breakpoint target: everything is set up and pending. */
	__asm__ volatile("" ::: "memory");
}

static void say(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
}

static void fail(const char *what)
{
	int e = errno;
	printf("FAILED: %s: %s\n", what, strerror(e));
	fflush(stdout);
	fprintf(stderr, "events: %s: %s\n", what, strerror(e));
	exit(1);
}

/* A call's result: negative means failed. */
static long ok(long ret, const char *what)
{
	if (ret < 0)
		fail(what);
	return ret;
}

static uint32_t fnv(const void *p, size_t n)
{
	const unsigned char *b = p;
	uint32_t h = 2166136261u;
	for (size_t i = 0; i < n; i++)
		h = (h ^ b[i]) * 16777619u;
	return h;
}

/* Printable, different for each seed. */
static void fill(char *buf, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++)
		buf[i] = 'a' + (char)((seed * 7 + i * 3) % 26);
}

static void write_all(int fd, const void *buf, size_t n, const char *what)
{
	const char *p = buf;
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		ok(w, what);
		p += w;
		n -= (size_t)w;
	}
}

/* Whether fd becomes readable within ms. */
static int readable(int fd, int ms)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	int r;
	do
		r = poll(&p, 1, ms);
	while (r < 0 && errno == EINTR);
	ok(r, "poll");
	return r > 0;
}

/* Reads up to n bytes, waiting at most WAIT_MS for each piece; returns how many came. */
static size_t read_upto(int fd, char *buf, size_t n)
{
	size_t got = 0;
	while (got < n && readable(fd, WAIT_MS)) {
		ssize_t r = recv(fd, buf + got, n - got, MSG_DONTWAIT);
		if (r < 0 && (errno == EAGAIN || errno == EINTR))
			continue;
		if (r == 0)
			break;
		got += (size_t)ok(r, "recv");
	}
	return got;
}

/* "EAGAIN" if nothing more is queued on fd (nonblocking peek), else what is. */
static const char *empty_now(int fd)
{
	char c;
	ssize_t r = recv(fd, &c, 1, MSG_DONTWAIT | MSG_PEEK);
	if (r < 0 && errno == EAGAIN)
		return "empty";
	if (r == 0)
		return "eof";
	return r < 0 ? "error" : "more data";
}

static int sockopt(int fd, int level, int name)
{
	int v = -1;
	socklen_t len = sizeof v;
	ok(getsockopt(fd, level, name, &v, &len), "getsockopt");
	return v;
}

static void set_sockopt(int fd, int level, int name, int v)
{
	ok(setsockopt(fd, level, name, &v, sizeof v), "setsockopt");
}

/* The value of "key:" in /proc/self/fdinfo/fd, into out ("?" if absent). */
static const char *fdinfo(int fd, const char *key, char *out, size_t n)
{
	char path[64], line[256];
	size_t klen = strlen(key);
	snprintf(out, n, "?");
	snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
	FILE *f = fopen(path, "r");
	if (!f)
		fail("open fdinfo");
	while (fgets(line, sizeof line, f)) {
		if (strncmp(line, key, klen) == 0 && line[klen] == ':') {
			char *v = line + klen + 1;
			v += strspn(v, " \t");
			v[strcspn(v, "\n")] = 0;
			snprintf(out, n, "%s", v);
			break;
		}
	}
	fclose(f);
	return out;
}

static void epoll_add(int epfd, int fd, uint32_t events, uint64_t data)
{
	struct epoll_event e = { .events = events, .data.u64 = data };
	ok(epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &e), "epoll_ctl");
}

static socklen_t unix_addr(struct sockaddr_un *a, const char *name, int abstract)
{
	memset(a, 0, sizeof *a);
	a->sun_family = AF_UNIX;
	if (abstract) {
		memcpy(a->sun_path + 1, name, strlen(name));
		return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(name));
	}
	snprintf(a->sun_path, sizeof a->sun_path, "%s", name);
	return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(name) + 1);
}

static int unix_listen(const char *name, int abstract)
{
	struct sockaddr_un a;
	socklen_t len = unix_addr(&a, name, abstract);
	int fd = (int)ok(socket(AF_UNIX, SOCK_STREAM, 0), "socket unix");
	if (!abstract)
		unlink(name);
	ok(bind(fd, (struct sockaddr *)&a, len), "bind unix");
	ok(listen(fd, 5), "listen unix");
	return fd;
}

static uint16_t local_port(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof ss;
	ok(getsockname(fd, (struct sockaddr *)&ss, &len), "getsockname");
	if (ss.ss_family == AF_INET6)
		return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static struct sockaddr_in loopback4(uint16_t port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	return a;
}

static int tcp4_listen(int backlog)
{
	struct sockaddr_in a = loopback4(0);
	int fd = (int)ok(socket(AF_INET, SOCK_STREAM, 0), "socket tcp");
	set_sockopt(fd, SOL_SOCKET, SO_REUSEADDR, 1);
	ok(bind(fd, (struct sockaddr *)&a, sizeof a), "bind tcp");
	ok(listen(fd, backlog), "listen tcp");
	return fd;
}

static int tcp4_connect(uint16_t port)
{
	struct sockaddr_in a = loopback4(port);
	int fd = (int)ok(socket(AF_INET, SOCK_STREAM, 0), "socket tcp");
	ok(connect(fd, (struct sockaddr *)&a, sizeof a), "connect tcp 127.0.0.1");
	return fd;
}

/* Waits until fd's receive queue holds n bytes (data sent on loopback has arrived). */
static void await_queued(int fd, int n)
{
	for (int i = 0; i < WAIT_MS / 10; i++) {
		int q = 0;
		ok(ioctl(fd, SIOCINQ, &q), "ioctl SIOCINQ");
		if (q >= n)
			return;
		struct timespec ts = { 0, 10000000 };
		nanosleep(&ts, NULL);
	}
	errno = ETIMEDOUT;
	fail("waiting for queued data");
}

/* ---------------------------------------------------------------- set up */

static char *in_dir(const char *name)
{
	static char paths[8][256];
	static int next;
	char *p = paths[next++ % 8];
	snprintf(p, 256, "%s/%s", dir, name);
	return p;
}

static int open_lockfile(const char *name)
{
	return (int)ok(open(in_dir(name), O_RDWR | O_CREAT | O_CLOEXEC, 0600), name);
}

static void posix_lock(int fd, int cmd, short type, off_t start, off_t len, const char *what)
{
	struct flock fl = { .l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len };
	ok(fcntl(fd, cmd, &fl), what);
}

static void set_up_memfd_carrier_and_fanotify(void)
{
	char buf[3000];
	fill(buf, sizeof buf, 7);
	memfd = (int)ok(memfd_create("events-memfd", MFD_ALLOW_SEALING | MFD_CLOEXEC), "memfd");
	write_all(memfd, buf, sizeof buf, "memfd write");
	ok(lseek(memfd, 100, SEEK_SET), "memfd lseek");
	ok(fcntl(memfd, F_ADD_SEALS, F_SEAL_WRITE), "F_ADD_SEALS");

	ok(socketpair(AF_UNIX, SOCK_DGRAM, 0, carrier_pair), "socketpair");
	int carried = (int)ok(open(in_dir("carried"), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC,
				   0600), "open carried");
	write_all(carried, "carried file", 12, "write carried");
	ok(lseek(carried, 3, SEEK_SET), "lseek carried");
	char cbuf[CMSG_SPACE(sizeof(int))] = { 0 };
	struct iovec iov = { "carrier", 7 };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
			      .msg_controllen = sizeof cbuf };
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &carried, sizeof carried);
	ok(sendmsg(carrier_pair[0], &msg, 0), "sendmsg SCM_RIGHTS");
	close(carried);

	close(open(in_dir("fan-watched"), O_WRONLY | O_CREAT | O_CLOEXEC, 0600));
	fan = fanotify_init(FAN_CLASS_NOTIF | FAN_NONBLOCK | FAN_CLOEXEC, O_RDONLY);
	if (fan >= 0 && fanotify_mark(fan, FAN_MARK_ADD, FAN_OPEN, AT_FDCWD,
				      in_dir("fan-watched")) < 0)
		fail("fanotify_mark");
}

static void set_up_locks_and_watches(void)
{
	set_up_memfd_carrier_and_fanotify();	/* its files made before DIR is watched */
	lock_flock = open_lockfile("lock.flock");
	ok(flock(lock_flock, LOCK_EX | LOCK_NB), "flock");
	lock_posix = open_lockfile("lock.posix");
	posix_lock(lock_posix, F_SETLK, F_WRLCK, 10, 10, "posix write lock");
	posix_lock(lock_posix, F_SETLK, F_RDLCK, 100, 0, "posix read lock");
	lock_ofd = open_lockfile("lock.ofd");
	posix_lock(lock_ofd, F_OFD_SETLK, F_WRLCK, 0, 0, "ofd lock");

	mkdir(in_dir("sub"), 0700);
	mkdir(in_dir("sub2"), 0700);
	mkdir(in_dir("gone"), 0700);
	watcher = (int)ok(inotify_init1(IN_NONBLOCK), "inotify_init1");
	int w1 = (int)ok(inotify_add_watch(watcher, dir, IN_CREATE), "inotify_add_watch");
	int w2 = (int)ok(inotify_add_watch(watcher, in_dir("sub"), IN_DELETE), "inotify_add_watch");
	int w3 = (int)ok(inotify_add_watch(watcher, in_dir("gone"), IN_CREATE), "inotify_add_watch");
	ok(inotify_rm_watch(watcher, w3), "inotify_rm_watch");
	int w4 = (int)ok(inotify_add_watch(watcher, in_dir("sub2"), IN_CREATE), "inotify_add_watch");
	if (w1 != 1 || w2 != 2 || w3 != 3 || w4 != 4)
		fail("inotify watch numbers");
	char drain[4096];
	while (read(watcher, drain, sizeof drain) > 0)	/* the IN_IGNORED of watch 3 */
		;
	self_pidfd = (int)ok(syscall(SYS_pidfd_open, getpid(), 0), "pidfd_open");
}

static void set_up(void)
{
	char buf[PIPE_BYTES];

	/* Pipe with both ends held. */
	ok(pipe(pipe_fds), "pipe");
	ok(fcntl(pipe_fds[0], F_SETFL, fcntl(pipe_fds[0], F_GETFL) | O_NONBLOCK), "fcntl O_NONBLOCK");
	ok(fcntl(pipe_fds[1], F_SETPIPE_SZ, 131072), "F_SETPIPE_SZ");
	for (int i = 0; i < PIPE_BYTES; i++)
		buf[i] = (char)(i * 131 + 7);
	write_all(pipe_fds[1], buf, PIPE_BYTES, "write pipe");

	/* Pipe whose write end is gone. */
	int p[2];
	ok(pipe(p), "pipe");
	for (int i = 0; i < CLOSED_PIPE_BYTES; i++)
		buf[i] = (char)(i * 17 + 1);
	write_all(p[1], buf, CLOSED_PIPE_BYTES, "write closed pipe");
	close(p[1]);
	closed_pipe_rd = p[0];

	ev_sem = (int)ok(eventfd(5, EFD_SEMAPHORE | EFD_NONBLOCK), "eventfd semaphore");
	ev_count = (int)ok(eventfd(7, 0), "eventfd");

	timer_mono = (int)ok(timerfd_create(CLOCK_MONOTONIC, 0), "timerfd_create monotonic");
	struct itimerspec its = { .it_interval = { 0, 200000000 }, .it_value = { 0, 100000000 } };
	ok(timerfd_settime(timer_mono, 0, &its, NULL), "timerfd_settime monotonic");
	timer_far = (int)ok(timerfd_create(CLOCK_REALTIME, 0), "timerfd_create realtime");
	struct itimerspec far = { .it_interval = { 86400, 0 }, .it_value = { YEAR_2100, 0 } };
	ok(timerfd_settime(timer_far, TFD_TIMER_ABSTIME, &far, NULL), "timerfd_settime realtime");

	sigset_t usr1;
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	ok(sigprocmask(SIG_BLOCK, &usr1, NULL), "sigprocmask");
	sig_fd = (int)ok(signalfd(-1, &usr1, 0), "signalfd");
	ok(raise(SIGUSR1) ? -1 : 0, "raise");

	/* Unix socketpairs, data queued both ways. */
	ok(socketpair(AF_UNIX, SOCK_STREAM, 0, stream_pair), "socketpair stream");
	write_all(stream_pair[0], "alpha ", 6, "write stream");
	write_all(stream_pair[0], "beta gamma", 10, "write stream");
	write_all(stream_pair[1], "reply from b", 12, "write stream");
	static const int dgram_lens[][5] = { { 1, 7, 0, 300, 2000 }, { 5, 64, 3, -1 } };
	static const int seqpacket_lens[][5] = { { 2, 9, 500, 40, -1 }, { 1000, 11, 1, -1 } };
	ok(socketpair(AF_UNIX, SOCK_DGRAM, 0, dgram_pair), "socketpair dgram");
	ok(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, seqpacket_pair), "socketpair seqpacket");
	for (int side = 0; side < 2; side++)
		for (int i = 0; i < 5 && dgram_lens[side][i] >= 0; i++) {
			fill(buf, (size_t)dgram_lens[side][i], (unsigned)(side * 10 + i));
			ok(send(dgram_pair[side], buf, (size_t)dgram_lens[side][i], 0), "send dgram");
		}
	for (int side = 0; side < 2; side++)
		for (int i = 0; i < 5 && seqpacket_lens[side][i] >= 0; i++) {
			fill(buf, (size_t)seqpacket_lens[side][i], (unsigned)(side * 10 + i + 5));
			ok(send(seqpacket_pair[side], buf, (size_t)seqpacket_lens[side][i], 0),
			   "send seqpacket");
		}

	/* Unix listeners: a path, and an abstract name unique to DIR. */
	snprintf(listen_path, sizeof listen_path, "%s/listen.sock", dir);
	if (strlen(dir) + strlen("/listen.sock") >= sizeof listen_path) {
		errno = ENAMETOOLONG;
		fail("DIR/listen.sock");
	}
	snprintf(abstract_name, sizeof abstract_name, "gdbckpt-events-%08x",
		 fnv(dir, strlen(dir)));
	unix_listener = unix_listen(listen_path, 0);
	abstract_listener = unix_listen(abstract_name, 1);

	/* TCP listeners. */
	tcp4_listener = tcp4_listen(16);
	port4 = local_port(tcp4_listener);
	tcp6_listener = (int)ok(socket(AF_INET6, SOCK_STREAM, 0), "socket tcp6");
	set_sockopt(tcp6_listener, IPPROTO_IPV6, IPV6_V6ONLY, 1);
	struct sockaddr_in6 a6 = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
	ok(bind(tcp6_listener, (struct sockaddr *)&a6, sizeof a6), "bind tcp ::1");
	ok(listen(tcp6_listener, 16), "listen tcp6");
	port6 = local_port(tcp6_listener);

	/* UDP, with one datagram from itself queued. */
	udp = (int)ok(socket(AF_INET, SOCK_DGRAM, 0), "socket udp");
	struct sockaddr_in au = loopback4(0);
	ok(bind(udp, (struct sockaddr *)&au, sizeof au), "bind udp");
	port_udp = local_port(udp);
	au = loopback4(port_udp);
	ok(sendto(udp, "udp queued", 10, 0, (struct sockaddr *)&au, sizeof au), "sendto udp");

	/* An established TCP connection whose listener is gone. */
	int l = tcp4_listen(1);
	tcp_a = tcp4_connect(local_port(l));
	tcp_b = (int)ok(accept(l, NULL, NULL), "accept tcp");
	close(l);
	set_sockopt(tcp_a, IPPROTO_TCP, TCP_NODELAY, 1);
	set_sockopt(tcp_b, SOL_SOCKET, SO_KEEPALIVE, 1);
	fill(buf, TCP_BYTES, 1);
	write_all(tcp_a, buf, TCP_BYTES, "send tcp a");
	fill(buf, TCP_BYTES, 2);
	write_all(tcp_b, buf, TCP_BYTES, "send tcp b");
	await_queued(tcp_a, TCP_BYTES);
	await_queued(tcp_b, TCP_BYTES);

	/* Epoll, nested; no epoll_wait before the save. */
	ep = (int)ok(epoll_create1(0), "epoll_create1");
	ep_nested = (int)ok(epoll_create1(0), "epoll_create1");
	epoll_add(ep_nested, ev_count, EPOLLIN, 21);
	epoll_add(ep, pipe_fds[0], EPOLLIN, 11);
	epoll_add(ep, ev_sem, EPOLLIN | EPOLLET, 12);
	epoll_add(ep, stream_pair[1], EPOLLIN, 13);
	epoll_add(ep, tcp4_listener, EPOLLIN, 14);
	epoll_add(ep, ep_nested, EPOLLIN, 15);

	set_up_locks_and_watches();
}

/* ---------------------------------------------------------------- report */

static int by_data(const void *a, const void *b)
{
	uint64_t x = ((const struct epoll_event *)a)->data.u64;
	uint64_t y = ((const struct epoll_event *)b)->data.u64;
	return x < y ? -1 : x > y;
}

static char *epoll_list(int epfd, char *out, size_t n)
{
	struct epoll_event ev[16];
	int k = (int)ok(epoll_wait(epfd, ev, 16, 0), "epoll_wait");
	size_t used = 0;
	qsort(ev, (size_t)k, sizeof ev[0], by_data);
	out[0] = 0;
	for (int i = 0; i < k; i++)
		used += (size_t)snprintf(out + used, n - used, "%s%llu:%u", i ? " " : "",
					 (unsigned long long)ev[i].data.u64, ev[i].events);
	if (k == 0)
		snprintf(out, n, "none");
	return out;
}

/* Connects to the TCP listener first, so that it shows in the epoll set. */
static int report_epoll(void)
{
	char first[256], second[256], nested[256];
	int c4 = tcp4_connect(port4);
	if (!readable(tcp4_listener, WAIT_MS))
		say("epoll: listener got no connection: timeout");
	epoll_list(ep, first, sizeof first);
	epoll_list(ep, second, sizeof second);
	epoll_list(ep_nested, nested, sizeof nested);
	say("epoll: %s; again: %s; nested: %s", first, second, nested);
	return c4;
}

static void report_pipes(void)
{
	char buf[PIPE_BYTES + 16];
	size_t got = 0;
	for (;;) {
		ssize_t r = read(pipe_fds[0], buf + got, sizeof buf - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		got += (size_t)r;
	}
	const char *after = errno == EAGAIN ? "EAGAIN" : "not EAGAIN";
	int size = (int)ok(fcntl(pipe_fds[0], F_GETPIPE_SZ), "F_GETPIPE_SZ");
	int nonblock = !!(ok(fcntl(pipe_fds[0], F_GETFL), "F_GETFL") & O_NONBLOCK);
	write_all(pipe_fds[1], "round trip", 10, "write pipe");
	char rt[16] = { 0 };
	ssize_t r = readable(pipe_fds[0], WAIT_MS) ? read(pipe_fds[0], rt, sizeof rt - 1) : 0;
	say("pipe: %zu bytes fnv %08x then %s; size %d; nonblock %d; round trip '%s' (%zd)", got,
	    fnv(buf, got), after, size, nonblock, rt, r);

	got = 0;
	ssize_t last;
	do {
		last = read(closed_pipe_rd, buf + got, sizeof buf - got);
		if (last > 0)
			got += (size_t)last;
	} while (last > 0 || (last < 0 && errno == EINTR));
	ok(last, "read closed pipe");
	say("closed pipe: %zu bytes fnv %08x then EOF", got, fnv(buf, got));
}

static void report_eventfds(void)
{
	char line[256];
	size_t used = 0;
	uint64_t v;
	int nonblock = !!(ok(fcntl(ev_sem, F_GETFL), "F_GETFL") & O_NONBLOCK);
	line[0] = 0;
	for (int i = 0; i < 5; i++) {
		ssize_t r = read(ev_sem, &v, sizeof v);
		if (r != sizeof v) {
			used += (size_t)snprintf(line + used, sizeof line - used, " (%s)",
						 r < 0 ? strerror(errno) : "short");
			break;
		}
		used += (size_t)snprintf(line + used, sizeof line - used, " %llu",
					 (unsigned long long)v);
	}
	const char *sixth;
	if (!nonblock)
		sixth = "not tried (blocking)";
	else if (read(ev_sem, &v, sizeof v) < 0 && errno == EAGAIN)
		sixth = "EAGAIN";
	else
		sixth = "a value";
	say("eventfd semaphore: nonblock %d; reads%s; then %s", nonblock, line, sixth);

	v = 0;
	ssize_t r = readable(ev_count, WAIT_MS) ? read(ev_count, &v, sizeof v) : -1;
	const char *after = readable(ev_count, 0) ? "still readable" : "empty";
	uint64_t add = 3, back = 0;
	write_all(ev_count, &add, sizeof add, "write eventfd");
	if (readable(ev_count, WAIT_MS))
		ok(read(ev_count, &back, sizeof back), "read eventfd");
	say("eventfd: read %llu (%zd bytes); then %s; wrote 3, read %llu", (unsigned long long)v,
	    r, after, (unsigned long long)back);
}

static void report_timerfds(void)
{
	char clock[32], flags[32];
	struct itimerspec cur;
	uint64_t n = 0;
	const char *fired = "did not fire: timeout";
	if (readable(timer_mono, WAIT_MS) && read(timer_mono, &n, sizeof n) == sizeof n && n >= 1)
		fired = "fired";
	ok(timerfd_gettime(timer_mono, &cur), "timerfd_gettime");
	say("timerfd monotonic: %s; interval %ld ms; clockid %s; settime flags %s", fired,
	    cur.it_interval.tv_sec * 1000 + cur.it_interval.tv_nsec / 1000000,
	    fdinfo(timer_mono, "clockid", clock, sizeof clock),
	    fdinfo(timer_mono, "settime flags", flags, sizeof flags));

	ok(timerfd_gettime(timer_far, &cur), "timerfd_gettime");
	const char *far = cur.it_value.tv_sec > 50L * 365 * 86400 ? "far" : "NOT far";
	say("timerfd realtime: %s; not yet fired %d; interval %ld s %ld ns; clockid %s; "
	    "settime flags %s", far, !readable(timer_far, 0), (long)cur.it_interval.tv_sec,
	    cur.it_interval.tv_nsec, fdinfo(timer_far, "clockid", clock, sizeof clock),
	    fdinfo(timer_far, "settime flags", flags, sizeof flags));
}

static void report_signalfd(void)
{
	sigset_t now;
	struct signalfd_siginfo si;
	ok(sigprocmask(SIG_BLOCK, NULL, &now), "sigprocmask");
	int blocked = sigismember(&now, SIGUSR1);
	if (!readable(sig_fd, 0)) {
		say("signalfd: SIGUSR1 blocked %d; nothing pending", blocked);
		return;
	}
	ok(read(sig_fd, &si, sizeof si), "read signalfd");
	say("signalfd: SIGUSR1 blocked %d; signo %u code %d; then %s", blocked, si.ssi_signo,
	    si.ssi_code, readable(sig_fd, 0) ? "more pending" : "none pending");
}

/* Reads every message queued on fd (nonblocking): "len:fnv ..." into out. */
static void messages(int fd, char *out, size_t n)
{
	char buf[4096];
	size_t used = 0;
	int k = 0;
	out[0] = 0;
	for (;;) {
		ssize_t r = recv(fd, buf, sizeof buf, MSG_DONTWAIT | MSG_TRUNC);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			break;
		used += (size_t)snprintf(out + used, n - used, "%s%zd:%08x", k++ ? " " : "", r,
					 fnv(buf, (size_t)r));
	}
	if (k == 0)
		snprintf(out, n, "none");
}

static void report_unix_pairs(void)
{
	char ab[512], ba[512], fresh[32];
	size_t n;

	n = read_upto(stream_pair[1], ab, 16);
	ab[n] = 0;
	const char *ab_after = empty_now(stream_pair[1]);
	n = read_upto(stream_pair[0], ba, 12);
	ba[n] = 0;
	const char *ba_after = empty_now(stream_pair[0]);
	write_all(stream_pair[1], "fresh", 5, "write stream");
	n = read_upto(stream_pair[0], fresh, 5);
	fresh[n] = 0;
	say("unix stream: a->b '%s' then %s; b->a '%s' then %s; fresh '%s'", ab, ab_after, ba,
	    ba_after, fresh);

	int *pairs[] = { dgram_pair, seqpacket_pair };
	const char *names[] = { "dgram", "seqpacket" };
	for (int i = 0; i < 2; i++) {
		int *sp = pairs[i];
		messages(sp[1], ab, sizeof ab);
		messages(sp[0], ba, sizeof ba);
		ok(send(sp[0], "fresh one", 9, 0), "send");
		ok(send(sp[0], "two", 3, 0), "send");
		char f1[16] = { 0 }, f2[16] = { 0 };
		ssize_t r1 = readable(sp[1], WAIT_MS) ? recv(sp[1], f1, sizeof f1 - 1, 0) : -1;
		ssize_t r2 = readable(sp[1], WAIT_MS) ? recv(sp[1], f2, sizeof f2 - 1, 0) : -1;
		say("unix %s: a->b %s; b->a %s; fresh '%s' (%zd) '%s' (%zd)", names[i], ab, ba, f1,
		    r1, f2, r2);
	}
}

/* Connects to a unix listener, accepts, exchanges a line each way. */
static void report_unix_listener(const char *label, int listener, const char *name, int abstract)
{
	struct sockaddr_un a, got;
	socklen_t len = unix_addr(&a, name, abstract), glen = sizeof got;
	ok(getsockname(listener, (struct sockaddr *)&got, &glen), "getsockname unix");
	int same = glen == len && memcmp(&got, &a, len) == 0;
	int c = (int)ok(socket(AF_UNIX, SOCK_STREAM, 0), "socket unix");
	ok(connect(c, (struct sockaddr *)&a, len), "connect unix listener");
	if (!readable(listener, WAIT_MS)) {
		say("unix listener %s: accept: timeout", label);
		return;
	}
	int s = (int)ok(accept(listener, NULL, NULL), "accept unix");
	char q[32] = { 0 }, r[32] = { 0 };
	write_all(c, "ping\n", 5, "write unix");
	read_upto(s, q, 5);
	write_all(s, "pong\n", 5, "write unix");
	read_upto(c, r, 5);
	q[strcspn(q, "\n")] = 0;
	r[strcspn(r, "\n")] = 0;
	say("unix listener %s: name same %d; accepting %d; got '%s', answered '%s'", label, same,
	    sockopt(listener, SOL_SOCKET, SO_ACCEPTCONN), q, r);
	close(s);
	close(c);
}

static void exchange(int c, int s, char *q, char *r)
{
	write_all(c, "hello", 5, "send");
	q[read_upto(s, q, 5)] = 0;
	write_all(s, "world", 5, "send");
	r[read_upto(c, r, 5)] = 0;
}

static void report_tcp_listeners(int c4)
{
	char q[8], r[8];
	if (!readable(tcp4_listener, WAIT_MS)) {
		say("tcp listener 127.0.0.1: accept: timeout");
	} else {
		int s = (int)ok(accept(tcp4_listener, NULL, NULL), "accept tcp");
		exchange(c4, s, q, r);
		say("tcp listener 127.0.0.1: port unchanged %d; SO_REUSEADDR %d; accepting %d; "
		    "got '%s', answered '%s'", local_port(tcp4_listener) == port4,
		    sockopt(tcp4_listener, SOL_SOCKET, SO_REUSEADDR),
		    sockopt(tcp4_listener, SOL_SOCKET, SO_ACCEPTCONN), q, r);
		close(s);
	}
	close(c4);

	struct sockaddr_in6 a6 = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT,
				   .sin6_port = htons(port6) };
	int c6 = (int)ok(socket(AF_INET6, SOCK_STREAM, 0), "socket tcp6");
	ok(connect(c6, (struct sockaddr *)&a6, sizeof a6), "connect tcp ::1");
	if (!readable(tcp6_listener, WAIT_MS)) {
		say("tcp listener ::1: accept: timeout");
	} else {
		int s = (int)ok(accept(tcp6_listener, NULL, NULL), "accept tcp6");
		exchange(c6, s, q, r);
		say("tcp listener ::1: port unchanged %d; IPV6_V6ONLY %d; SO_REUSEADDR %d; "
		    "accepting %d; got '%s', answered '%s'", local_port(tcp6_listener) == port6,
		    sockopt(tcp6_listener, IPPROTO_IPV6, IPV6_V6ONLY),
		    sockopt(tcp6_listener, SOL_SOCKET, SO_REUSEADDR),
		    sockopt(tcp6_listener, SOL_SOCKET, SO_ACCEPTCONN), q, r);
		close(s);
	}
	close(c6);
}

static void report_udp(void)
{
	struct sockaddr_in to = loopback4(port_udp);
	ok(sendto(udp, "udp fresh", 9, 0, (struct sockaddr *)&to, sizeof to), "sendto udp");
	char line[256], buf[64];
	size_t used = 0;
	for (int i = 0; i < 2; i++) {
		struct sockaddr_in from;
		socklen_t flen = sizeof from;
		if (!readable(udp, WAIT_MS)) {
			used += (size_t)snprintf(line + used, sizeof line - used, "; timeout");
			break;
		}
		ssize_t r = ok(recvfrom(udp, buf, sizeof buf - 1, 0, (struct sockaddr *)&from, &flen),
			       "recvfrom udp");
		buf[r] = 0;
		int self = from.sin_family == AF_INET && ntohs(from.sin_port) == port_udp &&
			   from.sin_addr.s_addr == htonl(INADDR_LOOPBACK);
		used += (size_t)snprintf(line + used, sizeof line - used, "; '%s' from self %d", buf,
					 self);
	}
	say("udp: port unchanged %d%s; then %s", local_port(udp) == port_udp, line,
	    empty_now(udp));
}

static int same_endpoint(int peer_of, int local_of)
{
	struct sockaddr_in p, l;
	socklen_t pl = sizeof p, ll = sizeof l;
	ok(getpeername(peer_of, (struct sockaddr *)&p, &pl), "getpeername");
	ok(getsockname(local_of, (struct sockaddr *)&l, &ll), "getsockname");
	return p.sin_port == l.sin_port && p.sin_addr.s_addr == l.sin_addr.s_addr;
}

static void report_tcp_established(void)
{
	static char ab[TCP_BYTES + 1], ba[TCP_BYTES + 1];
	char q[8], r[8];
	size_t nab = read_upto(tcp_b, ab, TCP_BYTES);
	const char *ab_after = empty_now(tcp_b);
	size_t nba = read_upto(tcp_a, ba, TCP_BYTES);
	const char *ba_after = empty_now(tcp_a);
	int peers = same_endpoint(tcp_a, tcp_b) && same_endpoint(tcp_b, tcp_a);
	exchange(tcp_a, tcp_b, q, r);
	say("tcp established: a->b %zu bytes fnv %08x then %s; b->a %zu bytes fnv %08x then %s; "
	    "peers match %d; a TCP_NODELAY %d SO_KEEPALIVE %d; b TCP_NODELAY %d SO_KEEPALIVE %d; "
	    "fresh '%s' '%s'", nab, fnv(ab, nab), ab_after, nba, fnv(ba, nba), ba_after, peers,
	    sockopt(tcp_a, IPPROTO_TCP, TCP_NODELAY), sockopt(tcp_a, SOL_SOCKET, SO_KEEPALIVE),
	    sockopt(tcp_b, IPPROTO_TCP, TCP_NODELAY), sockopt(tcp_b, SOL_SOCKET, SO_KEEPALIVE), q,
	    r);
}

/* Another process, opening the files anew, finds every lock held. */
static void report_locks(void)
{
	pid_t child = fork();
	if (child < 0)
		fail("fork");
	if (child == 0) {
		int f = open(in_dir("lock.flock"), O_RDWR);
		int held_flock = flock(f, LOCK_EX | LOCK_NB) < 0 && errno == EWOULDBLOCK;
		int p = open(in_dir("lock.posix"), O_RDWR);
		struct flock w = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0 };
		fcntl(p, F_GETLK, &w);
		struct flock r = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 50, .l_len = 0 };
		fcntl(p, F_GETLK, &r);
		int o = open(in_dir("lock.ofd"), O_RDWR);
		struct flock d = { .l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0 };
		fcntl(o, F_OFD_GETLK, &d);
		say("locks: flock held %d; posix %s %ld+%ld, then %s %ld+%ld; ofd %s",
		    held_flock, w.l_type == F_WRLCK ? "write" : "none", (long)w.l_start,
		    (long)w.l_len, r.l_type == F_RDLCK ? "read" : "none", (long)r.l_start,
		    (long)r.l_len, d.l_type == F_WRLCK ? "write" : "none");
		_exit(0);
	}
	int status;
	waitpid(child, &status, 0);
}

static void report_inotify(void)
{
	char buf[4096] __attribute__((aligned(8)));
	ok(close(open(in_dir("made"), O_CREAT | O_WRONLY | O_CLOEXEC, 0600)), "create");
	ok(close(open(in_dir("sub/doomed"), O_CREAT | O_WRONLY | O_CLOEXEC, 0600)), "create");
	ok(unlink(in_dir("sub/doomed")), "unlink");
	ok(close(open(in_dir("sub2/new"), O_CREAT | O_WRONLY | O_CLOEXEC, 0600)), "create");
	char out[512] = "";
	size_t used = 0;
	for (int tries = 0; tries < 3 && readable(watcher, WAIT_MS); tries++) {
		ssize_t n = read(watcher, buf, sizeof buf);
		for (char *p = buf; n > 0 && p < buf + n;) {
			struct inotify_event *e = (struct inotify_event *)p;
			used += snprintf(out + used, sizeof out - used, " wd %d %s '%s';", e->wd,
					 e->mask & IN_CREATE ? "create" : e->mask & IN_DELETE ?
					 "delete" : "other", e->len ? e->name : "");
			p += sizeof *e + e->len;
		}
		if (strstr(out, "sub") || strstr(out, "'new'"))
			break;
	}
	say("inotify:%s", out);
	unlink(in_dir("made"));
	unlink(in_dir("sub2/new"));
}

static void report_pidfd(void)
{
	char pid[32];
	fdinfo(self_pidfd, "Pid", pid, sizeof pid);
	say("pidfd: names this process %d", atoi(pid) == getpid());
}

static void report_memfd_carrier_and_fanotify(void)
{
	char buf[16] = { 0 }, want[3000], name[64] = { 0 };
	fill(want, sizeof want, 7);
	ssize_t n = read(memfd, buf, 10);
	char link[64];
	snprintf(link, sizeof link, "/proc/self/fd/%d", memfd);
	readlink(link, name, sizeof name - 1);
	say("memfd: %s; read %zd at 100 same %d; seals %d; write refused %d", name, n,
	    n == 10 && memcmp(buf, want + 100, 10) == 0, fcntl(memfd, F_GET_SEALS),
	    write(memfd, "x", 1) < 0 && errno == EPERM);

	char cbuf[CMSG_SPACE(sizeof(int))], data[16] = { 0 };
	struct iovec iov = { data, sizeof data - 1 };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
			      .msg_controllen = sizeof cbuf };
	ssize_t got = recvmsg(carrier_pair[1], &msg, MSG_DONTWAIT);
	struct cmsghdr *c = got >= 0 ? CMSG_FIRSTHDR(&msg) : NULL;
	if (!c || c->cmsg_type != SCM_RIGHTS) {
		say("in flight: '%s' without a file", got >= 0 ? data : "nothing");
	} else {
		int fd;
		memcpy(&fd, CMSG_DATA(c), sizeof fd);
		char rest[16] = { 0 };
		read(fd, rest, sizeof rest - 1);
		say("in flight: '%s' carrying a file that reads '%s'", data, rest);
		close(fd);
	}

	if (fan < 0) {
		say("fanotify: unavailable");
		return;
	}
	close(open(in_dir("fan-watched"), O_RDONLY | O_CLOEXEC));
	struct fanotify_event_metadata ev;
	ssize_t r = -1;
	for (int tries = 0; tries < 3 && r < 0; tries++)
		if (readable(fan, WAIT_MS))
			r = read(fan, &ev, sizeof ev);
	if (r >= (ssize_t)sizeof ev && ev.fd >= 0)
		close(ev.fd);
	say("fanotify: event %s, from this process %d", r < 0 ? "none" :
	    ev.mask & FAN_OPEN ? "open" : "other", r >= 0 && ev.pid == getpid());
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: %s DIR [SECONDS]\n", argv[0]);
		return 2;
	}
	dir = argv[1];
	double seconds = argc > 2 ? atof(argv[2]) : 0;
	signal(SIGPIPE, SIG_IGN);

	set_up();
	say("ready");
	checkpoint_here();
	for (long i = 0; i < (long)(seconds * 20 + 0.5); i++) {
		struct timespec ts = { 0, 50000000 };
		nanosleep(&ts, NULL);
	}

	int c4 = report_epoll();
	report_pipes();
	report_eventfds();
	report_timerfds();
	report_signalfd();
	report_unix_pairs();
	report_unix_listener("path", unix_listener, listen_path, 0);
	report_unix_listener("abstract", abstract_listener, abstract_name, 1);
	report_tcp_listeners(c4);
	report_udp();
	report_tcp_established();
	report_locks();
	report_inotify();
	report_pidfd();
	report_memfd_carrier_and_fanotify();
	unlink(listen_path);
	say("done");
	return 0;
}

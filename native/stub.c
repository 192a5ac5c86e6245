/*
 * gdbckpt restart stub: the process that becomes the restored program.
 *
 * gdbckpt spawns it with a pipe at STUB_READY_FD; once the stub runs on its
 * own stack it writes one byte there and waits in pause(). gdbckpt's engine
 * seizes it with ptrace and drives it by resuming it at stub_call, which
 * runs a batch of system calls (struct stub_op) that recreate the saved
 * address space and ends in a trap. It has no libc, so nothing of its own (rseq area,
 * TLS, malloc arenas) lingers in what becomes the target's memory; it is
 * static and not PIE, linked at STUB_BASE, where no ordinary layout puts
 * anything.
 */
#include "stub_abi.h"

#define EINTR  4
#define EIO    5
#define SYS_read      0
#define SYS_write     1
#define SYS_close     3
#define SYS_pause     34
#define SYS_pread64   17
#define SYS_madvise   28
#define MADV_POPULATE_WRITE 23
#define PAGE_MASK     4095L
#define SYS_dup3      292
#define SYS_pwrite64  18
#define SYS_copy_file_range 326
#define EXDEV  18
#define EINVAL 22
#define ENOSYS 38
#define EOPNOTSUPP 95
#define SYS_openat    257
#define SYS_getpid    39
#define SYS_gettid    186
#define SYS_rt_tgsigqueueinfo 297
#define SYS_fcntl     72
#define SYS_fstat     5
#define SYS_openat2   437
#define F_SETFL       4
#define O_NONBLOCK    04000
#define O_CREAT       0100
#define O_TMPFILE_BIT 020000000
#define S_IFMT        0170000
#define STAT_MODE     24	/* offsetof(struct stat, st_mode) on x86-64 */
#define RESOLVE_NO_SYMLINKS 0x04
#define EMEDIUMTYPE   124
#define SYS_clone3    435
#define SYS_pidfd_open  434
#define SYS_pidfd_getfd 438
#define F_SETFD       2
#define AT_FDCWD      (-100)
#define O_CLOEXEC     02000000

long stub_syscall(long nr, long a1, long a2, long a3, long a4, long a5, long a6);
long stub_clone(long flags, void *stack_top, int *ptid, int *ctid, long tls, long slot);

struct clone_args {
	unsigned long flags, pidfd, child_tid, parent_tid, exit_signal, stack, stack_size, tls,
		set_tid, set_tid_size, cgroup;
};
long stub_clone3(struct clone_args *args, long size, long slot);

/*
 * What a new thread runs before it parks: its own setup ops (signal mask,
 * rseq, alternate stack, ...), which only it can make. Its creator waits
 * for done, so that the ops' results are there when stub_run returns.
 */
struct thread_start {
	struct stub_op *ops;
	long nops;
	long completed;
	int done;
};
static struct thread_start thread_starts[STUB_MAX_THREADS];

#define SYS_futex 202
#define FUTEX_WAIT 0
#define FUTEX_WAKE 1

char stub_stack[STUB_STACK_SIZE] __attribute__((aligned(16)));
/* Paths, structs and op lists that the engine writes for a run. */
unsigned char stub_scratch[STUB_SCRATCH_SIZE] __attribute__((aligned(4096)));
/* One small parking stack per extra thread the restore creates. */
unsigned char stub_thread_stacks[STUB_MAX_THREADS][STUB_THREAD_STACK] __attribute__((aligned(16)));

/* Where the stub waits: empty, called in a loop (a breakpoint target when the
 * stub is debugged). noipa: GCC must neither inline them nor fold the two
 * identical bodies into one. */
void __attribute__((noipa)) stub_park(void)
{
	__asm__ volatile("" ::: "memory");
}

void __attribute__((noipa)) stub_thread_park(void)
{
	__asm__ volatile("" ::: "memory");
}

static long pread_all(long fd, long addr, long len, long off)
{
	while (len > 0) {
		long n = stub_syscall(SYS_pread64, fd, addr, len, off, 0, 0);
		if (n == -EINTR)
			continue;
		if (n < 0)
			return n;
		if (n == 0)
			return -EIO; /* the image is shorter than its index says */
		addr += n;
		off += n;
		len -= n;
	}
	return 0;
}

/* Memory about to be read into from the image is populated first, in one call: the
 * fault each page's first write would take inside pread costs these VMs more than
 * its copy (512 MiB read into fresh memory: 343 ms; populated first: 212 ms). A
 * kernel without MADV_POPULATE_WRITE (before 5.14), or a range it refuses, is left
 * to the faults, as before. */
static void populate(long addr, long len)
{
	if (!(addr & PAGE_MASK))
		stub_syscall(SYS_madvise, addr, (len + PAGE_MASK) & ~PAGE_MASK,
			     MADV_POPULATE_WRITE, 0, 0, 0);
}

/* A bounce buffer for copies copy_file_range refuses (across filesystems). */
static unsigned char copy_buf[64 * 1024];

static long copy_all(long in, long *off_in, long out, long *off_out, long len)
{
	while (len > 0) {
		long n = stub_syscall(SYS_copy_file_range, in, (long)off_in, out, (long)off_out,
				      len, 0);
		if (n == -EXDEV || n == -EINVAL || n == -ENOSYS || n == -EOPNOTSUPP) {
			long want = len < (long)sizeof copy_buf ? len : (long)sizeof copy_buf;
			n = pread_all(in, (long)copy_buf, want, *off_in);
			if (n < 0)
				return n;
			n = stub_syscall(SYS_pwrite64, out, (long)copy_buf, want, *off_out, 0, 0);
			if (n >= 0) {
				*off_in += n;
				*off_out += n;
			}
		}
		if (n == -EINTR)
			continue;
		if (n < 0)
			return n;
		if (n == 0)
			return -EIO;
		len -= n;
	}
	return 0;
}

struct open_how {
	unsigned long flags, mode, resolve;
};

/* Open path for fd want. kind (S_IFREG, S_IFDIR, S_IFCHR; 0: any) marks a path an
 * image named: then no symlink is followed on the way (RESOLVE_NO_SYMLINKS), the
 * open never blocks (a FIFO swapped in), and what was opened must be of that kind
 * (-EMEDIUMTYPE otherwise); the flags are then set back as asked. */
static long open_at(long path, long flags, long mode, long want, long kind)
{
	struct open_how how = { flags | (kind ? O_NONBLOCK : 0),
				(flags & (O_CREAT | O_TMPFILE_BIT)) ? mode : 0,
				kind ? RESOLVE_NO_SYMLINKS : 0 };
	long fd = stub_syscall(SYS_openat2, AT_FDCWD, path, (long)&how, sizeof how, 0, 0);
	if (fd == -ENOSYS && !kind)
		fd = stub_syscall(SYS_openat, AT_FDCWD, path, flags, mode, 0, 0);
	if (fd < 0)
		return fd;
	if (kind) {
		unsigned char st[144];
		long r = stub_syscall(SYS_fstat, fd, (long)st, 0, 0, 0, 0);
		if (r == 0 && (*(unsigned *)(st + STAT_MODE) & S_IFMT) != (unsigned long)kind)
			r = -EMEDIUMTYPE;
		if (r == 0 && !(flags & O_NONBLOCK))
			r = stub_syscall(SYS_fcntl, fd, F_SETFL, flags, 0, 0, 0);
		if (r < 0) {
			stub_syscall(SYS_close, fd, 0, 0, 0, 0, 0);
			return r;
		}
	}
	if (fd == want)
		return fd;
	long r = stub_syscall(SYS_dup3, fd, want, flags & O_CLOEXEC, 0, 0, 0);
	stub_syscall(SYS_close, fd, 0, 0, 0, 0, 0);
	return r;
}

/* Move fd (close-on-exec) to want, with close-on-exec as asked. */
static long move_fd(long fd, long want, long cloexec)
{
	if (fd == want)
		return cloexec ? fd : stub_syscall(SYS_fcntl, fd, F_SETFD, 0, 0, 0, 0) ?: fd;
	long r = stub_syscall(SYS_dup3, fd, want, cloexec ? O_CLOEXEC : 0, 0, 0, 0);
	stub_syscall(SYS_close, fd, 0, 0, 0, 0, 0);
	return r;
}

static long take_fd(long pid, long theirs, long want, long cloexec)
{
	long pidfd = stub_syscall(SYS_pidfd_open, pid, 0, 0, 0, 0, 0);
	if (pidfd < 0)
		return pidfd;
	/* The copy comes close-on-exec, at the lowest free number. */
	long fd = stub_syscall(SYS_pidfd_getfd, pidfd, theirs, 0, 0, 0, 0);
	stub_syscall(SYS_close, pidfd, 0, 0, 0, 0, 0);
	if (fd < 0)
		return fd;
	return move_fd(fd, want, cloexec);
}

#define SYS_recvmsg 47
#define MSG_CMSG_CLOEXEC 0x40000000
#define SCM_RIGHTS 1
#define EBADMSG 74

struct iovec_ { void *base; unsigned long len; };
struct msghdr_ {
	void *name; int namelen; struct iovec_ *iov; unsigned long iovlen;
	void *control; unsigned long controllen; int flags;
};

/* The next descriptor gdbckpt sends on the socket sock (SCM_RIGHTS), moved to want:
 * how a stub in a user namespace of its own gets gdbckpt's objects (pidfd_getfd of a
 * process outside that namespace is refused). */
static long recv_fd(long sock, long want, long cloexec)
{
	char byte;
	struct iovec_ iov = { &byte, 1 };
	unsigned long control[4] = { 0 };	/* a cmsghdr (16 bytes) and one int, aligned */
	struct msghdr_ msg = { 0, 0, &iov, 1, control, sizeof control, 0 };
	long n = stub_syscall(SYS_recvmsg, sock, (long)&msg, MSG_CMSG_CLOEXEC, 0, 0, 0);
	if (n < 0)
		return n;
	int *head = (int *)control;	/* len (8 bytes), level, type */
	if (msg.controllen < 20 || head[3] != SCM_RIGHTS)
		return -EBADMSG;
	return move_fd(head[4], want, cloexec);
}

static long wait_started(long slot, long tid)
{
	if (tid <= 0)
		return tid;
	while (!__atomic_load_n(&thread_starts[slot].done, __ATOMIC_ACQUIRE))
		stub_syscall(SYS_futex, (long)&thread_starts[slot].done, FUTEX_WAIT, 0, 0, 0, 0);
	return tid;
}

static long prepare_start(long slot, long ops, long nops)
{
	if (slot < 0 || slot >= STUB_MAX_THREADS)
		return -22; /* EINVAL */
	thread_starts[slot] = (struct thread_start){ (struct stub_op *)ops, nops, 0, 0 };
	return 0;
}

static long clone_parked(long flags, long tls, long tidptr, long slot, long ops, long nops)
{
	long r = prepare_start(slot, ops, nops);
	if (r)
		return r;
	void *top = stub_thread_stacks[slot] + STUB_THREAD_STACK;
	return wait_started(slot, stub_clone(flags, top, (int *)tidptr, (int *)tidptr, tls, slot));
}

/* The same, with the thread id chosen (clone3 set_tid: needs CAP_CHECKPOINT_RESTORE). */
static long clone3_parked(long flags, long tls, long tidptr, long slot, long tid, long ops_nops)
{
	/* Six arguments only: ops and their count share one, count in the low 16 bits. */
	long r = prepare_start(slot, ops_nops >> 16, ops_nops & 0xffff);
	if (r)
		return r;
	int want = (int)tid;
	struct clone_args args = {
		.flags = (unsigned long)flags,
		.child_tid = (unsigned long)tidptr,
		.parent_tid = (unsigned long)tidptr,
		.stack = (unsigned long)stub_thread_stacks[slot],
		.stack_size = STUB_THREAD_STACK,
		.tls = (unsigned long)tls,
		.set_tid = (unsigned long)&want,
		.set_tid_size = 1,
	};
	return wait_started(slot, stub_clone3(&args, sizeof args, slot));
}

#define SYS_arch_prctl 158
#define ARCH_REQ_XCOMP_PERM 0x1023

/* An XSAVE area (standard format, 12 KiB: AMX tile data ends at 11008) whose
 * header says the features to expand are in use, with zero bytes: restoring
 * them from it reads tile data, which under XFD makes the kernel grow this
 * thread's buffer first (a restore of their initial state reads nothing and
 * would not). Only then can ptrace write the saved tiles. */
static unsigned char xsave_init[12288] __attribute__((aligned(64)));

static long xcomp(long feature, unsigned long expand)
{
	if (feature) {
		long r = stub_syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, feature, 0, 0, 0, 0);
		if (r < 0)
			return r;
	}
	if (expand) {
		*(unsigned long *)(xsave_init + 512) = expand;	/* XSTATE_BV */
		__asm__ volatile("xrstor64 %0" : : "m"(xsave_init), "a"((unsigned)expand),
				 "d"((unsigned)(expand >> 32)) : "memory");
	}
	return 0;
}

/* rt_tgsigqueueinfo refuses a kill()/tkill() si_code unless the target is the caller. */
static long queue_self(long sig, long info)
{
	long tgid = stub_syscall(SYS_getpid, 0, 0, 0, 0, 0, 0);
	long tid = stub_syscall(SYS_gettid, 0, 0, 0, 0, 0, 0);
	return stub_syscall(SYS_rt_tgsigqueueinfo, tgid, tid, sig, info, 0, 0);
}

/*
 * A child of this stub, for a process of a saved tree: a copy of the stub as it
 * is now (the restore forks before it changes anything), with pid want if not 0
 * (clone3 set_tid). The child parks as a new stub does, for the engine to seize;
 * it never returns into the batch its parent is running.
 */
static long fork_stub(long want)
{
	int tid = (int)want;
	struct clone_args args = {
		.exit_signal = 17, /* SIGCHLD: its parent waits for it as for any child */
		.set_tid = want ? (unsigned long)&tid : 0,
		.set_tid_size = want ? 1 : 0,
	};
	long pid = stub_syscall(SYS_clone3, (long)&args, sizeof args, 0, 0, 0, 0);
	if (pid != 0)
		return pid;
	for (;;) {
		stub_park();
		stub_syscall(SYS_pause, 0, 0, 0, 0, 0, 0);
	}
}

#define SYS_wait4 61
#define SYS_exit_group 231
#define ECHILD 10
#define WALL 0x40000000

/* The init of a new pid namespace a tree is restored in: it reaps whatever ends in
 * it, and ends (and with it the namespace) once nothing is left. */
static __attribute__((noreturn)) long reap_all(void)
{
	for (;;) {
		long r = stub_syscall(SYS_wait4, -1, 0, WALL, 0, 0, 0);
		if (r == -ECHILD)
			stub_syscall(SYS_exit_group, 0, 0, 0, 0, 0, 0);
	}
}

static long run_one(struct stub_op *op)
{
	long *a = op->arg;
	switch (op->nr) {
	case STUB_OP_PREAD_ALL:
		populate(a[1], a[2]);
		return pread_all(a[0], a[1], a[2], a[3]);
	case STUB_OP_OPEN_AT:
		return open_at(a[0], a[1], a[2], a[3], a[4]);
	case STUB_OP_CLONE:
		return clone_parked(a[0], a[1], a[2], a[3], a[4], a[5]);
	case STUB_OP_CLONE3:
		return clone3_parked(a[0], a[1], a[2], a[3], a[4], a[5]);
	case STUB_OP_COPY_ALL:
		return copy_all(a[0], (long *)a[1], a[2], (long *)a[3], a[4]);
	case STUB_OP_QUEUE_SELF:
		return queue_self(a[0], a[1]);
	case STUB_OP_XCOMP:
		return xcomp(a[0], (unsigned long)a[1]);
	case STUB_OP_TAKE_FD:
		return take_fd(a[0], a[1], a[2], a[3]);
	case STUB_OP_FORK:
		return fork_stub(a[0]);
	case STUB_OP_REAP:
		return reap_all();
	case STUB_OP_RECV_FD:
		return recv_fd(a[0], a[1], a[2]);
	default:
		return stub_syscall(op->nr, a[0], a[1], a[2], a[3], a[4], a[5]);
	}
}

/*
 * Run ops in order; stop at the first failure not marked IGNORE_ERROR.
 * Returns the number of ops completed: n when all succeeded.
 */
long stub_run(struct stub_op *ops, long n)
{
	for (long i = 0; i < n; i++) {
		ops[i].ret = run_one(&ops[i]);
		if (ops[i].ret < 0 && ops[i].ret > -4096 &&
		    !(ops[i].flags & STUB_OPF_IGNORE_ERROR))
			return i;
	}
	return n;
}

void stub_thread_main(long slot)
{
	struct thread_start *st = &thread_starts[slot];
	st->completed = stub_run(st->ops, st->nops);
	__atomic_store_n(&st->done, 1, __ATOMIC_RELEASE);
	stub_syscall(SYS_futex, (long)&st->done, FUTEX_WAKE, 1, 0, 0, 0);
	for (;;) {
		stub_thread_park();
		stub_syscall(SYS_pause, 0, 0, 0, 0, 0, 0);
	}
}

extern char stub_call[], stub_call_trap[];

void stub_main(void)
{
	/* Tell gdbckpt that the kernel's stack is no longer in use, and where the
	 * engine's way in and the buffers are (no symbol table to read). */
	struct { char ready[8]; unsigned long call, trap, scratch, stack; } hello = {
		"READY", (unsigned long)stub_call, (unsigned long)stub_call_trap,
		(unsigned long)stub_scratch, (unsigned long)stub_stack,
	};
	stub_syscall(SYS_write, STUB_READY_FD, (long)&hello, sizeof hello, 0, 0, 0);
	stub_syscall(SYS_close, STUB_READY_FD, 0, 0, 0, 0, 0);
	for (;;) {
		stub_park();
		stub_syscall(SYS_pause, 0, 0, 0, 0, 0, 0);
	}
}

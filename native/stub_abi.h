/*
 * The contract between the restart stub and gdbckpt/stubabi.py.
 * tests/test_stub_abi.py checks that both sides agree on every number here.
 */
#ifndef GDBCKPT_STUB_ABI_H
#define GDBCKPT_STUB_ABI_H

#define STUB_BASE          0x100000000000UL /* -Ttext-segment in the Makefile */
#define STUB_STACK_SIZE    (256 * 1024)
#define STUB_SCRATCH_SIZE  (4 * 1024 * 1024)
#define STUB_MAX_THREADS   256
#define STUB_THREAD_STACK  (16 * 1024)
#define STUB_READY_FD      3 /* the stub writes one byte here once it is parked */

/* Op numbers below 1000 are raw system calls; these are done by the stub itself. */
#define STUB_OP_PREAD_ALL  1000 /* fd, addr, len, offset: read exactly len bytes */
#define STUB_OP_OPEN_AT    1001 /* path, flags, mode, fd, kind: open and move to fd; kind
				   * (an S_IFMT type, for paths an image names): no symlinks
				   * followed, never blocking, and of that kind */
#define STUB_OP_CLONE      1002 /* flags, tls, tid ptr, slot, ops, nops: a thread that runs
				   * its ops, then parks in the stub */
#define STUB_OP_COPY_ALL   1003 /* fd_in, &off_in, fd_out, &off_out, len: copy exactly len */
#define STUB_OP_CLONE3     1004 /* flags, tls, tid ptr, slot, tid, ops << 16 | nops: the
				   * same, with that thread id */
#define STUB_OP_QUEUE_SELF 1005 /* sig, siginfo: queue a signal to the calling thread (only
				   * a thread itself may queue a kill()/tkill() siginfo) */

#define STUB_OP_XCOMP      1006 /* feature, expand mask: request permission for a dynamic
				   * XSAVE feature (if not 0), then make the kernel give this
				   * thread room for the features in the mask */

#define STUB_OP_TAKE_FD    1007 /* pid, its fd, fd, cloexec: take a copy of another process's
				   * open file (pidfd_getfd) and move it to fd; gdbckpt makes
				   * pipes, sockets and the like in its own process first */

#define STUB_OP_FORK       1008 /* pid (0: any): a child that is a copy of the stub, parked
				   * as a new stub is (a process of a saved tree) */

#define STUB_OP_REAP       1009 /* reap every child that ends, and exit once none is left
				   * (the init of a new pid namespace); never returns */

#define STUB_OP_RECV_FD    1010 /* socket, fd, cloexec: the next descriptor gdbckpt sends on
				   * the socket (SCM_RIGHTS), moved to fd */

#define STUB_OPF_IGNORE_ERROR 1 /* a failure is recorded in ret but does not stop the run */

#ifndef __ASSEMBLER__
struct stub_op {
	long nr;
	long arg[6];
	long flags;
	long ret;
};
#endif

#endif

/*
 * LD_PRELOAD shim for GDB: makes GDB's own PTRACE_SETREGSET of NT_X86_XSTATE
 * fail with EFAULT, as GDB 13 does on hosts with AMX (its 2696-byte buffer
 * against the kernel's 11008). The tests run every GDB with it, so the suite
 * proves on any CPU that gdbckpt never needs GDB to write registers.
 *
 * Only calls from GDB's own code fail: calls made from a shared library
 * (Python's ctypes, through libffi: gdbckpt's engine) pass through.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <string.h>
#include <sys/types.h>

#define PTRACE_SETREGSET 0x4205
#define NT_X86_XSTATE 0x202

static int from_main_program(const void *caller)
{
	Dl_info info;
	if (!dladdr(caller, &info) || !info.dli_fname)
		return 1;
	return strstr(info.dli_fname, ".so") == NULL;
}

long ptrace(int request, ...)
{
	static long (*real)(int, ...);
	va_list ap;
	va_start(ap, request);
	pid_t pid = va_arg(ap, pid_t);
	void *addr = va_arg(ap, void *);
	void *data = va_arg(ap, void *);
	va_end(ap);
	if (request == PTRACE_SETREGSET && (long)addr == NT_X86_XSTATE &&
	    from_main_program(__builtin_return_address(0))) {
		errno = EFAULT;
		return -1;
	}
	if (!real)
		real = (long (*)(int, ...))dlsym(RTLD_NEXT, "ptrace");
	return real(request, pid, addr, data);
}

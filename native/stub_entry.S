/*
 * Entry, raw system calls and thread creation for the restart stub.
 * No libc: everything the stub does is a system call made here.
 */
#include "stub_abi.h"

	.text

/* The kernel's stack is where the target's [stack] usually was: leave it at once. */
	.globl _start
	.type _start, @function
_start:
	lea	stub_stack+STUB_STACK_SIZE(%rip), %rsp
	xor	%ebp, %ebp
	call	stub_main
	hlt

/*
 * The engine's way in: it sets rip here, rdi/rsi to an op batch and rsp to
 * the top of stub_stack, and resumes (PTRACE_CONT). The int3 hands control
 * back with stub_run's result in rax. No single-step, no inferior call.
 */
	.globl stub_call
	.type stub_call, @function
stub_call:
	call	stub_run
	.globl stub_call_trap
stub_call_trap:
	int3
	jmp	stub_call_trap

/* long stub_syscall(long nr, long a1, long a2, long a3, long a4, long a5, long a6) */
	.globl stub_syscall
	.type stub_syscall, @function
stub_syscall:
	mov	%rdi, %rax
	mov	%rsi, %rdi
	mov	%rdx, %rsi
	mov	%rcx, %rdx
	mov	%r8, %r10
	mov	%r9, %r8
	mov	8(%rsp), %r9
	syscall
	ret

/*
 * long stub_clone(long flags, void *stack_top, int *ptid, int *ctid, long tls, long slot)
 * The child starts on stack_top in stub_thread_main(slot) and never returns
 * here; clone leaves r9 alone, so the slot reaches the child there.
 */
	.globl stub_clone
	.type stub_clone, @function
stub_clone:
	mov	%rcx, %r10
	mov	$56, %eax
	syscall
	test	%rax, %rax
	jnz	1f
	xor	%ebp, %ebp
	mov	%r9, %rdi
	call	stub_thread_main
	hlt
1:	ret

/*
 * long stub_clone3(struct clone_args *args, long size, long slot)
 * The kernel starts the child on args->stack + args->stack_size; the slot
 * reaches it in rdx, which clone3 leaves alone.
 */
	.globl stub_clone3
	.type stub_clone3, @function
stub_clone3:
	mov	$435, %eax
	syscall
	test	%rax, %rax
	jnz	1f
	xor	%ebp, %ebp
	mov	%rdx, %rdi
	call	stub_thread_main
	hlt
1:	ret

	.section .note.GNU-stack,"",@progbits

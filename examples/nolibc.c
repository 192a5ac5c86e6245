/*
 * nolibc: a static program with no C library at all (as Go and other runtimes
 * are): raw system calls, its own _start. It prints "tick N HASH" every 20 ms
 * for STEPS steps (argv[1], default 50), then "done HASH".
 *
 *   ./nolibc [STEPS]
 */
typedef unsigned long u64;

static long sys(long nr, long a, long b, long c)
{
	long r;
	__asm__ volatile("syscall" : "=a"(r) : "a"(nr), "D"(a), "S"(b), "d"(c)
			 : "rcx", "r11", "memory");
	return r;
}

static void put(const char *s, long n) { sys(1, 1, (long)s, n); }

static long number(const char *s)
{
	long v = 0;
	while (*s >= '0' && *s <= '9')
		v = v * 10 + (*s++ - '0');
	return v;
}

static char *hex(char *p, u64 v)
{
	for (int i = 15; i >= 0; i--)
		*p++ = "0123456789abcdef"[(v >> (i * 4)) & 15];
	return p;
}

static char *dec(char *p, long v)
{
	char tmp[24];
	int n = 0;
	do
		tmp[n++] = '0' + v % 10;
	while (v /= 10);
	while (n)
		*p++ = tmp[--n];
	return p;
}

__attribute__((noinline)) void tick(long step, u64 h)
{
	char line[64], *p = line;
	p = dec(p + 0, step);
	*p++ = ' ';
	p = hex(p, h);
	*p++ = '\n';
	put("tick ", 5);
	put(line, p - line);
}

void __attribute__((used)) start_c(long *sp)
{
	long argc = sp[0];
	char **argv = (char **)(sp + 1);
	long steps = argc > 1 ? number(argv[1]) : 50;
	u64 h = 1469598103934665603UL;
	for (long i = 0; i < steps; i++) {
		h = (h ^ (u64)i) * 1099511628211UL;
		tick(i, h);
		long ts[2] = { 0, 20000000 };
		sys(35, (long)ts, 0, 0);	/* nanosleep */
	}
	char line[32], *p = line;
	p = hex(p, h);
	*p++ = '\n';
	put("done ", 5);
	put(line, p - line);
	sys(231, 0, 0, 0);		/* exit_group */
}

__asm__(".globl _start\n_start:\n\tmov %rsp, %rdi\n\tand $-16, %rsp\n\tcall start_c\n\thlt\n");

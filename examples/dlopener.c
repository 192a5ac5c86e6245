/*
 * dlopener: loads a shared library in the middle of its run (dlopen), the
 * moment GDB's shared-library breakpoint fires. A restore that carried that
 * breakpoint's int3 in the image would crash here.
 *
 *   ./dlopener [STEPS]
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

__attribute__((noinline)) void step(int n) { printf("step %d\n", n); fflush(stdout); }

int main(int argc, char **argv)
{
	int steps = argc > 1 ? atoi(argv[1]) : 6;
	for (int n = 0; n < steps; n++) {
		step(n);
		if (n == steps / 2) {
			void *m = dlopen("libm.so.6", RTLD_NOW);
			double (*cosine)(double) = m ? (double (*)(double))dlsym(m, "cos") : NULL;
			printf("cos(0) = %.1f\n", cosine ? cosine(0.0) : -1.0);
		}
	}
	return 0;
}

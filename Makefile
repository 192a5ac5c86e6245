# gdbckpt: `./dev demo`, `./dev test` (./dev installs make and the rest with apt if missing,
# then runs make). `make setup` is run by demo and test.
PYTHON_FOR_GDB := /usr/bin/python3
VENV := .venv
VPY := $(VENV)/bin/python
EXAMPLES := $(patsubst examples/%.c,examples/build/%,$(filter-out examples/nolibc.c,$(wildcard examples/*.c))) \
	examples/build/nolibc \
	examples/build/counter-static examples/build/counter-nopie

.PHONY: setup bytecode native examples demo test lint bench fuzz soak test-install test-compat clean

setup: $(VENV)/.installed bytecode native examples

# The environment is made with GDB's own interpreter: GDB embeds /usr/bin/python3.
$(VENV)/.installed: pyproject.toml
	@$(PYTHON_FOR_GDB) -c 'import venv, ensurepip' 2>/dev/null || { \
		echo "python3-venv is missing: ./dev installs it (as root)" >&2; exit 1; }
	$(PYTHON_FOR_GDB) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q --config-settings editable_mode=compat -e '.[test]'
	touch $@

# Bytecode, even where PYTHONDONTWRITEBYTECODE is set: each gdbckpt-batch start
# would otherwise compile ~115 modules again (~50 ms).
bytecode: $(VENV)/.installed
	@$(VPY) -m compileall -q gdbckpt

native:
	$(MAKE) -s -C native

examples: $(EXAMPLES)

examples/build/%: examples/%.c
	@mkdir -p examples/build
	gcc -g -O1 -pthread -o $@ $< -ldl

# No C library at all, like Go's binaries.
examples/build/nolibc: examples/nolibc.c
	@mkdir -p examples/build
	gcc -g -O1 -static -nostdlib -nostartfiles -ffreestanding -fno-stack-protector \
		-fcf-protection=none -o $@ $<

examples/build/%-static: examples/%.c
	@mkdir -p examples/build
	gcc -g -O1 -static -o $@ $<

examples/build/%-nopie: examples/%.c
	@mkdir -p examples/build
	gcc -g -O1 -no-pie -fno-pie -o $@ $<

demo: setup
	$(VPY) examples/demo.py

# Two workers: the tests mostly wait on GDB and on processes they run, so two halve
# the wall time even on 2 cores (serial: 204 s here; -n 2: 92-108 s). Each test looks
# only at its own processes (harness.leaves_no_process).
test: setup
	$(VPY) -m pytest -q -n 2 -m "not slow" tests

lint: setup
	$(VENV)/bin/ruff check gdbckpt tests benchmarks gdbinit.py examples

bench: setup
	$(VPY) benchmarks/headless.py
	$(VPY) benchmarks/bench.py

# Outside `make test`: long runs whose results the README records.
fuzz: setup
	$(VPY) tools/fuzz_images.py --cases 100000

soak: setup
	$(VPY) -m pytest -q -m slow tests
	$(VPY) tools/soak.py --rounds 200

# The suite in a Debian 13 chroot it makes (and keeps) itself: GDB 16, Python 3.13,
# glibc 2.41. Not the host's .venv: the chroot makes its own.
test-compat:
	tools/test_compat.sh

# pip install of a wheel outside the checkout (fetches the dependencies).
test-install: setup
	tools/test_install.sh

clean:
	rm -rf examples/build
	$(MAKE) -s -C native clean

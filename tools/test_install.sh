#!/usr/bin/env bash
# `make test-install`: what a user gets from `pip install .` outside this checkout. A
# wheel is built (the native parts compiled into it), installed in a fresh environment
# of GDB's Python, and used from another directory: --gdbinit, a save by pid and a
# headless restore whose output must equal an uninterrupted run, and GDB loading the
# commands through the printed line.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$repo"
.venv/bin/python -m pip wheel -q --no-deps . -w "$work/wheel"
rm -rf build
/usr/bin/python3 -m venv "$work/env"
"$work/env/bin/pip" install -q "$work"/wheel/*.whl
cd "$work"
tool="$work/env/bin/gdbckpt-batch"
line=$("$tool" --gdbinit)
case "$line" in "source $work/env/"*/gdbckpt/ingdb/load.py) ;; *) echo "bad --gdbinit: $line" >&2; exit 1;; esac
prog="$repo/examples/build/counter"
want=$("$prog" 30 10)
"$prog" 30 10 > out < /dev/null &
pid=$!
until grep -q '^step 5 ' out 2>/dev/null; do sleep 0.01; done
"$tool" "$pid" -o p.img --kill --force > /dev/null
wait "$pid" 2>/dev/null || true
restored=$("$tool" restore p.img --json | python3 -c 'import json,sys; print(json.loads(sys.stdin.read().splitlines()[-1])["pid"])')
while kill -0 "$restored" 2>/dev/null; do sleep 0.02; done
[ "$(cat out)" = "$want" ] || { echo "restored output differs" >&2; exit 1; }
printf '%s\nckpt info --brief p.img\n' "$line" > gdbinit
gdb -q -batch -x gdbinit 2>&1 | grep -q "^Image: .*p.img" || { echo "GDB did not load ckpt" >&2; exit 1; }
echo "test-install: pip-installed gdbckpt-batch saved, restored and loaded in GDB"

"""native/stub_abi.h and gdbckpt/stubabi.py agree on every number."""

import ast
import operator
import os
import re
import shutil
import subprocess

import pytest

from gdbckpt import stubabi
from gdbckpt.linux import constants
from gdbckpt.stubabi import RET_OFFSET, STUB_OP, StubOp, StubOpFlags

NATIVE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "native")
HEADER = os.path.join(NATIVE, "stub_abi.h")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.LShift: operator.lshift}


def _value(expr: str) -> int:
    """A C integer constant expression of the header: literals, + - * <<, parentheses."""
    expr = re.sub(r"\b(0x[0-9a-fA-F]+|\d+)[uUlL]+\b", r"\1", expr)

    def ev(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        raise ValueError(f"cannot evaluate {expr!r}")
    return ev(ast.parse(expr, mode="eval").body)


def _header():
    with open(HEADER) as f:
        return f.read()


def defines() -> dict[str, int]:
    text = re.sub(r"/\*.*?\*/", "", _header(), flags=re.S)
    out = {}
    for m in re.finditer(r"^#define\s+(STUB_\w+)\s+(.+?)\s*$", text, re.M):
        out[m.group(1)] = _value(m.group(2))
    return out


def test_value_parser():
    assert _value("0x100000000000UL") == 0x100000000000
    assert _value("(4 * 1024 * 1024)") == 4 << 20


def test_constants():
    d = defines()
    names = ["STUB_BASE", "STUB_STACK_SIZE", "STUB_SCRATCH_SIZE", "STUB_MAX_THREADS",
             "STUB_THREAD_STACK", "STUB_READY_FD"]
    for name in names:
        assert d[name] == getattr(stubabi, name), name
    ops = {k.removeprefix("STUB_OP_"): v for k, v in d.items() if k.startswith("STUB_OP_")}
    assert ops == constants(StubOp)
    flags = {k.removeprefix("STUB_OPF_"): v for k, v in d.items() if k.startswith("STUB_OPF_")}
    assert flags == {k: v for k, v in constants(StubOpFlags).items() if v}
    assert set(d) == set(names) | {f"STUB_OP_{o}" for o in ops} | {
        f"STUB_OPF_{f}" for f in flags}


def test_op_numbers_are_not_system_calls():
    assert all(nr >= 1000 for nr in constants(StubOp).values())


def test_struct_stub_op():
    body = re.search(r"struct stub_op \{(.*?)\};", _header(), re.S).group(1)
    fields = re.findall(r"long (\w+)(?:\[(\d+)\])?;", body)
    longs = [(name, int(n or 1)) for name, n in fields]
    assert longs == [("nr", 1), ("arg", 6), ("flags", 1), ("ret", 1)]
    assert STUB_OP.size == 9 * 8
    assert RET_OFFSET == 8 * sum(n for name, n in longs[:-1])
    op = STUB_OP.unpack(STUB_OP.pack(1, 2, 3, 4, 5, 6, 7, 8, -9))
    assert op[-1] == -9 and STUB_OP.pack(*range(9))[RET_OFFSET:] == (8).to_bytes(8, "little")


@pytest.mark.skipif(not shutil.which("gcc"), reason="no gcc")
def test_struct_stub_op_as_compiled(tmp_path):
    src = tmp_path / "abi.c"
    src.write_text('#include <stddef.h>\n#include <stdio.h>\n#include "stub_abi.h"\n'
                   "int main(void) { printf(\"%zu %zu %lu\\n\", sizeof(struct stub_op), "
                   "offsetof(struct stub_op, ret), (unsigned long)STUB_BASE); return 0; }\n")
    subprocess.run(["gcc", "-I", NATIVE, "-o", str(tmp_path / "abi"), str(src)], check=True)
    out = subprocess.run([str(tmp_path / "abi")], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(STUB_OP.size), str(RET_OFFSET), str(stubabi.STUB_BASE)]


def test_makefile_links_the_stub_at_stub_base():
    with open(os.path.join(NATIVE, "Makefile")) as f:
        m = re.search(r"-Ttext-segment=(0x[0-9a-fA-F]+)", f.read())
    assert int(m.group(1), 16) == stubabi.STUB_BASE


def test_built_stub_is_loaded_at_stub_base():
    from elftools.elf.elffile import ELFFile
    subprocess.run(["make", "-s", "-C", NATIVE], check=True)
    with open(os.path.join(NATIVE, "gdbckpt-stub"), "rb") as f:
        elf = ELFFile(f)
        loads = [s["p_vaddr"] for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        assert elf["e_type"] == "ET_EXEC"
    assert min(loads) == stubabi.STUB_BASE

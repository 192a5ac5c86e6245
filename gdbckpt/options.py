"""The options of save, restore, info and verify, defined once for both front ends.

The GDB commands (ingdb/commands.py) and gdbckpt-batch (batch.py) build their
argparse parsers, usage lines and option help from these tables, so an option
means the same and is described the same in both. Options of one front end
only say so (`gdb` or `batch`).
"""

from __future__ import annotations

import argparse
import os
import sys

from .errors import UsageError


class Opt:
    """One option. A plain class: a typing.NamedTuple compiles each of its (string)
    annotations as it is made: ~0.8 ms of every gdbckpt-batch start."""
    __slots__ = ("name", "help", "choices", "metavar", "only")

    def __init__(self, name: str, help: str, choices: tuple[str, ...] = (),
                 metavar: str = "", only: str = ""):
        self.name = name            # without the leading --
        self.help = help
        self.choices = choices      # one of these (the first is the default)
        self.metavar = metavar      # takes a value
        self.only = only            # "gdb" or "batch": one front end's option


STDIO = tuple(Opt(s, f"the restored process's {s} is FILE instead of the saved one (read, or "
                  "created or truncated, like the shell's < and >)", metavar="FILE")
              for s in ("stdin", "stdout", "stderr"))

SAVE = (
    Opt("sync", "flush the image to disk before renaming it (default: 'set ckpt sync')",
        only="gdb"),
    Opt("compress", "compress memory with zstd (smaller, slower to save)"),
    Opt("strict", "refuse to save a process that a restore would not give back whole (a "
        "socket whose peer is another process, a TCP connection without TCP_REPAIR, ...); "
        "by default the save names each such thing"),
    Opt("snapshot", "return once the registers, mappings, descriptors and shared memory "
        "are read and a copy-on-write snapshot of the memory is made: the image is written "
        "in the background while you go on debugging, and GDB says when it is done "
        "(gdbckpt-batch always saves so)", only="gdb"),
    Opt("single", "save this process only, not its children and their descendants (a "
        "restored parent then waits for children that are not there: the save names them)"),
)

RESTORE = (
    *STDIO,
    Opt("force", "restore even when a saved file is gone or shorter than its offset"),
    Opt("detach", "let the restored process run on its own (in a new session) instead of "
        "stopping it in GDB", only="gdb"),
    Opt("gdb", "stay in an interactive GDB at the saved point", only="batch"),
    Opt("debug-tree", "of a saved tree, attach to every process, each an inferior of its "
        "own stopped where it was saved ('info inferiors', 'inferior N'), instead of "
        "letting the others run on", only="gdb"),
    Opt("lazy", "map memory straight from the image instead of copying it: the restore "
        "takes milliseconds and pages are read when first touched; checks the metadata but "
        "not the memory's checksums; not for compressed images; the image must stay"),
    Opt("dry-run", "print the restore plan without changing anything"),
    Opt("no-verify", "skip checking the memory checksums"),
    Opt("vdso", "auto: move this kernel's vDSO into place when it is the saved one, else "
        "patch the saved one; move or patch force a way", choices=("auto", "move", "patch")),
    Opt("clocks", "continue (where permitted): CLOCK_MONOTONIC and CLOCK_BOOTTIME go on from "
        "their saved values, in a time namespace; host: the host's clocks (they may jump "
        "back; the restore says by how much)", choices=("continue", "host")),
)

INFO = (
    Opt("json", "print all of it as JSON", only="gdb"),
    Opt("brief", "leave out the mappings"),
)

VERIFY: tuple[Opt, ...] = ()


def mine(opts: tuple[Opt, ...], front: str) -> list[Opt]:
    return [o for o in opts if o.only in ("", front)]


def usage(command: str, opts: tuple[Opt, ...], front: str = "gdb") -> str:
    words = []
    for o in mine(opts, front):
        if o.choices:
            words.append(f"[--{o.name}={'|'.join(o.choices)}]")
        elif o.metavar:
            words.append(f"[--{o.name}={o.metavar}]")
        else:
            words.append(f"[--{o.name}]")
    return " ".join([command, *words, "IMG"])


def described(opts: tuple[Opt, ...], front: str = "gdb", width: int = 78) -> str:
    """One paragraph per option, for a GDB command's help."""
    # Here: GDB's help needs it, not every gdbckpt-batch start.
    import textwrap
    out = []
    for o in mine(opts, front):
        head = f"--{o.name}" + (f"={o.metavar}" if o.metavar else
                                f"={'|'.join(o.choices)}" if o.choices else "")
        out.append(textwrap.fill(f"{head}  {o.help}.", width, subsequent_indent="    "))
    return "\n".join(out)


def add_to(p: argparse.ArgumentParser, opts: tuple[Opt, ...], front: str) -> None:
    for o in mine(opts, front):
        if o.choices:
            # GDB's commands check the choice themselves, for their own message.
            p.add_argument(f"--{o.name}", choices=o.choices if front == "batch" else None,
                           default=o.choices[0], help=o.help)
        elif o.metavar:
            p.add_argument(f"--{o.name}", metavar=o.metavar, help=o.help)
        else:
            p.add_argument(f"--{o.name}", action="store_true", help=o.help)


class Formatter(argparse.RawDescriptionHelpFormatter):
    """argparse's own, given the width itself: argparse's default imports shutil (and with
    it zlib, bz2 and lzma) for the terminal's width, at every parser made, so at every
    gdbckpt-batch start. The width comes from where shutil would take it."""

    def __init__(self, prog):
        super().__init__(prog, width=_columns() - 2)


def _columns() -> int:
    try:
        if (columns := int(os.environ["COLUMNS"])) > 0:
            return columns
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80
    except (AttributeError, ValueError, OSError):
        return 80


class _GdbParser(argparse.ArgumentParser):
    """argparse for a GDB command: a usage error is a UsageError, never an exit."""

    def error(self, message):
        raise UsageError(f"{message}; usage: {self.usage}")


def gdb_parser(command: str, opts: tuple[Opt, ...]) -> argparse.ArgumentParser:
    p = _GdbParser(prog=command, usage=usage(command, opts), add_help=False,
                   formatter_class=Formatter,
                   exit_on_error=False, allow_abbrev=False)
    add_to(p, opts, "gdb")
    p.add_argument("image", nargs="?")
    return p


def parse_gdb(command: str, opts: tuple[Opt, ...], argv: list[str]) -> argparse.Namespace:
    """A GDB command's arguments (already split), with exactly one IMG."""
    p = gdb_parser(command, opts)
    try:
        args, extra = p.parse_known_args(argv)
    except argparse.ArgumentError as e:
        raise UsageError(f"{e}; usage: {p.usage}") from None
    if extra:
        what = "unknown option" if extra[0].startswith("-") else "too many arguments"
        raise UsageError(f"{what} '{extra[0]}'; usage: {p.usage}")
    if args.image is None:
        raise UsageError(f"missing arguments; usage: {p.usage}")
    for o in mine(opts, "gdb"):
        value = getattr(args, o.name.replace("-", "_"))
        if o.choices and value not in o.choices:
            raise UsageError(f"--{o.name} takes one of {', '.join(o.choices)}, not '{value}'")
    return args

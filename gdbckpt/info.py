"""`ckpt info`: what an image holds, for people (text) and programs (JSON)."""

from __future__ import annotations

import datetime

from . import clocks as clockmod
from . import creds as credsmod
from . import vdso as vdsomod
from .image import format as fmt
from .image.model import to_json
from .image.reader import Image
from .linux import perms_of, sysname
from .maps import Kind
from .regs import get


def mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"



def stored_by_vma(img: Image) -> list[int]:
    out = []
    for v in img.vmas:
        out.append(sum(c.stored for c in img.chunks_in(v.start, v.end)))
    return out


def text(img: Image, *, mappings: bool = True) -> str:
    p = img.process
    when = _date(p.saved_at)
    mapped = sum(v.end - v.start for v in img.vmas if v.kind != Kind.VSYSCALL.value)
    stored = sum(c.stored for c in img.chunks)
    memory = sum(c.size for c in img.chunks if not c.flags & fmt.ChunkFlags.ZERO)
    mode, why = vdsomod.restore_mode(img.vdso)
    lines = [
        f"Image:     {img.path}",
        f"Format:    version {img.version}, {mib(img.file_size)}, "
        f"{'zstd-compressed' if img.compressed else 'uncompressed'}",
        f"Saved:     {when} by gdbckpt {p.tool_version}"
        + (f", stopped by {p.stopped_by}" if p.stopped_by else ""),
        f"Kernel:    {p.kernel.get('release', '?')} {p.kernel.get('machine', '?')} on "
        f"{p.kernel.get('hostname', '?')}",
        f"Process:   pid {p.pid} '{p.comm}', "
        + (credsmod.describe(p.creds) if p.creds else f"uid {p.uid}, gid {p.gid}"),
        f"Program:   {p.exe}",
        f"Command:   {' '.join(p.cmdline)}",
        f"Cwd:       {p.cwd}",
        *_tree_lines(img),
        f"Memory:    {len(img.vmas)} mappings, {mib(mapped)} mapped, {mib(memory)} of pages "
        f"saved in {len(img.chunks)} chunks ({mib(stored)} stored)",
        f"Brk:       {p.mm.start_brk:#x}-{p.mm.brk:#x}",
        f"vDSO:      {_range(img.vdso.vdso)}, vvar {_range(img.vdso.vvar)}, vvar_vclock "
        f"{_range(img.vdso.vvar_vclock)}",
        *([f"           patched proxy of an earlier kernel's vDSO at {_range(img.vdso.proxy)} "
           f"(gdbckpt mark at {_range(img.vdso.mark)})"] if img.vdso.proxy else []),
        f"           a restore here would {mode}: {why}",
        *_clock_lines(p),
        f"Signals:   {len(p.sigactions)} handlers set"
        + (f" ({', '.join(str(a.sig) for a in p.sigactions)})" if p.sigactions else ""),
        f"Threads:   {len(img.threads)}",
    ]
    for t in img.threads:
        extra = []
        if t.syscall and t.syscall.action == "eintr":
            extra.append("inside restart_syscall: the call returns EINTR")
        elif t.syscall:
            extra.append(f"inside {sysname(t.syscall.nr)}: restarts from the beginning")
        if t.rseq:
            extra.append(f"rseq at {t.rseq.addr:#x}")
        if t.sigmask:
            extra.append(f"blocked {t.sigmask:#x}")
        lines.append(f"  {t.tid} '{t.name}' rip {get(t.regs, 'rip'):#x} rsp "
                     f"{get(t.regs, 'rsp'):#x} fs_base {get(t.regs, 'fs_base'):#x}"
                     + (f" ({'; '.join(extra)})" if extra else ""))
    if img.files:
        lines.append(f"Files:     {len(img.files)} mapped files")
        for f in img.files:
            ident = f"build-id {f.build_id}" if f.build_id else f"xxh3 {f.hash}"
            lines.append(f"  {f.path} ({f.size} bytes, {ident})")
    if img.fds:
        lines.append(f"Files open: {len(img.fds)}")
        for f in img.fds:
            how = f"same as fd {f.same_as}" if f.same_as >= 0 else _fd_restore(f)
            lines.append(f"  {f.fd:>4} {f.kind:<8} {f.target}  (flags {f.flags:o}, offset "
                         f"{f.pos}; {how})")
    if p.rlimits or p.itimers or p.timers:
        lines.append(f"Limits:    {len(p.rlimits)} resource limits, {len(p.itimers)} interval "
                     f"timers, {len(p.timers)} POSIX timers; umask {p.umask:03o}, nice "
                     f"{p.nice}, no_new_privs {int(p.no_new_privs)}, dumpable {p.dumpable}")
    pending = [f"{_signo(si)} (thread {t.tid})" for t in img.threads for si in t.pending] + \
              [f"{_signo(si)} (process)" for si in p.shared_pending]
    if pending:
        lines.append(f"Pending:   {len(pending)} signals, queued again at restore: "
                     + ", ".join(pending))
    # What a restore cannot give back is a note of the save's too: listed once, below.
    notes = [n for n in img.notes if n not in p.not_restored]
    if notes:
        lines.append("Notes:")
        lines += [f"  {n}" for n in notes]
    lines.append("Not restored:")
    lines += [f"  {n}" for n in (*p.not_restored, *ALWAYS_LOST)]
    if mappings:
        lines.append("Mappings:")
        for v, s in zip(img.vmas, stored_by_vma(img), strict=True):
            perms = perms_of(v.prot) + ("s" if v.shared else "p")
            lines.append(f"  {v.start:#014x}-{v.end:#014x} {perms} {v.kind:<11} "
                         f"{mib(v.end - v.start):>10} {mib(s):>10}  {v.path}")
    return "\n".join(lines)


# What no gdbckpt restore brings back, whatever the image.
ALWAYS_LOST = (
    "the other end of a pipe or unix socket held by another process; established TCP "
    "connections without TCP_REPAIR (CAP_NET_ADMIN); descriptors in flight (SCM_RIGHTS); "
    "events an inotify or fanotify descriptor had not yet delivered; io_uring, "
    "userfaultfd and other anon-inode descriptors",
    "child processes of an image saved with --single; ptrace relations, SysV semaphores "
    "and message queues",
    "credentials and capabilities when the restorer is not root (the process then runs "
    "with the restorer's, who must be the saved user), "
    "namespaces, cgroups, seccomp filters, scheduling policy",
    "a single process's pid and thread ids, unless the restore may choose them (root, or "
    "CAP_CHECKPOINT_RESTORE, and the old ids free); a tree keeps its own, in a pid "
    "namespace of its own where they are taken or cannot be chosen",
)


def _tree_lines(img: Image) -> list[str]:
    """The saved tree, parents before children: pids, parents, groups, what each holds."""
    if not img.members:
        return []
    p = img.process
    lines = [f"Tree:      {1 + len(img.members)} processes, restored with the same pids",
             f"  {p.pid} (root) '{p.comm}' session {p.sid}, group {p.pgid}: "
             f"{_holds(img)}"]
    for m, one in img.members:
        what = _holds(one) if one is not None else \
            f"zombie, {_status(m.exit_status)}, for its parent to reap"
        command = f" ({' '.join(one.process.cmdline)})" if one is not None else ""
        lines.append(f"  {m.pid} child of {m.ppid} '{m.comm}'{command} session {m.sid}, "
                     f"group {m.pgid}: {what}")
    return lines


def _holds(img: Image) -> str:
    memory = sum(c.size for c in img.chunks if not c.flags & fmt.ChunkFlags.ZERO)
    shared = sum(f.shared_from is not None for f in img.fds)
    return (f"{len(img.threads)} thread(s), {mib(memory)} of memory, {len(img.fds)} "
            f"descriptors ({shared} shared with an earlier process)")


def _status(status: int) -> str:
    return f"killed by signal {status & 0x7f}" if status & 0x7f else \
        f"exit status {status >> 8 & 0xff}"


def _fd_restore(f) -> str:
    from .fds import FdKind, restorable
    kind = FdKind(f.kind)
    if not restorable(f):
        return "restored as /dev/null"
    if f.sock is not None:
        return "made again" + (" (TCP_REPAIR)" if f.sock.tcp is not None else "")
    if f.pipe is not None:
        return f"made again, {len(f.pipe.data)} bytes in it"
    if f.anon is not None:
        return f"made again ({f.anon.type})"
    if f.kind == FdKind.MEMFD:
        return "made again from the image"
    return {FdKind.FILE: "reopened at its offset", FdKind.DIR: "reopened",
            FdKind.DELETED: "recreated from the image", FdKind.CHARDEV: "reopened",
            FdKind.TTY: "this session's terminal"}[kind]


def _clock_lines(p) -> list[str]:
    c = p.clocks
    _, note, _ = clockmod.plan_for(c, "continue")
    if c is None:
        return [f"Clocks:    {note}"]
    return [f"Clocks:    monotonic {clockmod.seconds(c.monotonic_ns)}, boottime "
            f"{clockmod.seconds(c.boottime_ns)} at the save (time namespace offsets "
            f"{clockmod.seconds(c.offset_monotonic_ns)}, {clockmod.seconds(c.offset_boottime_ns)})",
            f"           a restore here: {note}"]


def _range(r) -> str:
    return f"{r[0]:#x}-{r[1]:#x}" if r else "none"


def as_json(img: Image) -> dict:
    mode, why = vdsomod.restore_mode(img.vdso)
    return {
        "path": img.path, "format_version": img.version, "file_size": img.file_size,
        "compressed": img.compressed, "process": to_json(img.process),
        "threads": [to_json(t) for t in img.threads], "vmas": [to_json(v) for v in img.vmas],
        "files": [to_json(f) for f in img.files], "vdso": to_json(img.vdso),
        "vdso_restore": {"mode": mode, "why": why}, "fds": [to_json(f) for f in img.fds],
        "clocks_restore": clockmod.plan_for(img.process.clocks, "continue")[1],
        "notes": img.notes,
        "members": [{**to_json(m), "process": to_json(one.process) if one else None,
                     "threads": len(one.threads) if one else 0,
                     "fds": [to_json(f) for f in one.fds] if one else []}
                    for m, one in img.members],
        "chunks": [{"vaddr": c.vaddr, "size": c.size, "offset": c.offset, "stored": c.stored,
                    "flags": fmt.chunk_flag_names(c.flags), "codec": fmt.CODEC_NAMES[c.codec],
                    "csum": f"{c.csum:016x}"}
                   for c in img.chunks],
    }


def _signo(siginfo: bytes) -> int:
    return int.from_bytes(siginfo[:4], "little", signed=True)


def _date(timestamp: float) -> str:
    """The save's time in UTC; an image's clock may be anything, so never an exception."""
    try:
        return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).strftime(
            "%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return f"timestamp {timestamp!r} (out of range)"

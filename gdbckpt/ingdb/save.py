"""ckpt save in GDB: the engine on the process GDB has stopped, GDB's thread the tracer."""

from __future__ import annotations

from ..engine import save as engine_save
from ..engine import tree
from . import settings
from .front import GdbFront, stopped_process


def save(path: str, *, sync: bool | None = None, compress: bool = False,
         strict: bool = False, single: bool = False) -> engine_save.SaveResult:
    """Save the inferior GDB has stopped, with its descendants (unless single): those the
    engine seizes itself, from GDB's thread, and lets run on after the save."""
    proc = stopped_process()
    members = []
    try:
        if not single:
            members = tree.seize_descendants(proc.pid)
        with settings.temporarily(language="c"):    # GDB's Go or Rust would misread $_siginfo
            return engine_save.save(proc, path, front=GdbFront(),
                                    sync=settings.get("sync") if sync is None else sync,
                                    compress=compress, strict=strict, members=members)
    finally:
        tree.release(members)
        proc.close()

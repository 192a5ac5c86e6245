"""ckpt save in GDB: the engine on the process GDB has stopped, GDB's thread the tracer."""

from __future__ import annotations

from ..engine import save as engine_save
from . import settings
from .front import GdbFront, stopped_process


def save(path: str, *, sync: bool | None = None, compress: bool = False,
         strict: bool = False) -> engine_save.SaveResult:
    proc = stopped_process()
    try:
        with settings.temporarily(language="c"):    # GDB's Go or Rust would misread $_siginfo
            return engine_save.save(proc, path, front=GdbFront(),
                                    sync=settings.get("sync") if sync is None else sync,
                                    compress=compress, strict=strict)
    finally:
        proc.close()

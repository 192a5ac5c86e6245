"""docs/image-format.md and the format module agree: every field, record and flag is there."""

import dataclasses
import os
import re

from gdbckpt.image import format as fmt
from gdbckpt.image import model

DOC = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "docs", "image-format.md")).read()


def test_every_record_type_flag_and_codec_is_documented():
    for enum in (fmt.RecordType, fmt.ChunkFlags, fmt.Codec, fmt.ImageFlags, fmt.CsumAlgo):
        for member in enum:
            if member.name in ("NONE",):
                continue
            assert member.name in DOC, f"{enum.__name__}.{member.name}"
            assert re.search(rf"\b{int(member)}\b", DOC), f"{enum.__name__}.{member.name} value"


def test_every_model_field_is_documented():
    for cls in (model.ProcessInfo, model.ThreadState, model.Vma, model.FileRef, model.VdsoInfo,
                model.FdInfo, model.MmBounds, model.SigAction, model.Rseq, model.SyscallState,
                model.SigAltStack, model.Rlimit, model.ItimerState, model.PosixTimer,
                model.SysvShm, model.PipeState, model.AnonState, model.EpollTarget,
                model.SockState, model.TcpConn, model.FileLock, model.Watch):
        for f in dataclasses.fields(cls):
            assert re.search(rf"`{f.name}`|\| {f.name}\b|\b{f.name},|, {f.name}\b", DOC), \
                f"{cls.__name__}.{f.name}"


def test_layout_numbers_match():
    assert fmt.HEADER.size + 8 <= fmt.HEADER_SIZE == 4096
    assert fmt.TRAILER_SIZE == 64 and fmt.CHUNK_ENTRY.size == 48 and fmt.RECORD_HEADER.size == 24
    for text in ("GDBCKPT\\0", "GDBCEND\\0", "(48 bytes)", "Trailer (64 bytes)",
                 "Header (4096 bytes)"):
        assert text in DOC, text

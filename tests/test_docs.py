"""docs/image-format.md and the format module agree: every field, record and flag is there."""

import os
import re

import msgspec

from gdbckpt.image import format as fmt
from gdbckpt.image import model
from gdbckpt.linux import constants

DOC = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "docs", "image-format.md")).read()


def test_every_record_type_flag_and_codec_is_documented():
    for kind in (fmt.RecordType, fmt.ChunkFlags, fmt.Codec, fmt.ImageFlags, fmt.CsumAlgo):
        for name, value in constants(kind).items():
            if name in ("NONE",):
                continue
            assert name in DOC, f"{kind.__name__}.{name}"
            assert re.search(rf"\b{value}\b", DOC), f"{kind.__name__}.{name} value"


def home(name: str) -> str:
    """Where the doc describes a model class: the section whose heading names it, or
    else the table rows and paragraphs that name it. Deleting that place fails."""
    lines = DOC.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("#") and f"`{name}`" in line:
            level = len(line) - len(line.lstrip("#"))
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("#")
                        and len(lines[j]) - len(lines[j].lstrip("#")) <= level), len(lines))
            return "\n".join(lines[i:end])
    places = []
    for i, line in enumerate(lines):
        if re.search(rf"\b{name}\b", line):
            if line.startswith("|"):
                places.append(line)
                continue
            end = next((j for j in range(i, len(lines)) if not lines[j].strip()), len(lines))
            places.append("\n".join(lines[i:end]))
    return "\n".join(places)


def test_every_model_field_is_documented_where_its_class_is():
    for cls in (model.ProcessInfo, model.ThreadState, model.Vma, model.FileRef, model.VdsoInfo,
                model.FdInfo, model.MmBounds, model.SigAction, model.Rseq, model.SyscallState,
                model.SigAltStack, model.Rlimit, model.ItimerState, model.PosixTimer,
                model.SysvShm, model.PipeState, model.AnonState, model.EpollTarget,
                model.SockState, model.TcpConn, model.FileLock, model.Watch,
                model.InFlight, model.Member):
        text = home(cls.__name__)
        assert text, f"{cls.__name__} is not described"
        for f in msgspec.structs.fields(cls):
            assert re.search(rf"`{f.name}`|\| {f.name}\b|\b{f.name},|, {f.name}\b", text), \
                f"{cls.__name__}.{f.name}"


def test_deleting_a_section_is_noticed():
    """The check above looks in the class's own place, not anywhere in the doc."""
    global DOC
    whole = DOC
    try:
        DOC = re.sub(r"#### `PipeState`.*?(?=\n#)", "", whole, flags=re.S)
        assert "`alone`" not in home("PipeState") and "| alone" not in home("PipeState")
    finally:
        DOC = whole


def test_layout_numbers_match():
    assert fmt.HEADER.size + 8 <= fmt.HEADER_SIZE == 4096
    assert fmt.TRAILER_SIZE == 64 and fmt.CHUNK_ENTRY.size == 48 and fmt.RECORD_HEADER.size == 24
    for text in ("GDBCKPT\\0", "GDBCEND\\0", "(48 bytes)", "Trailer (64 bytes)",
                 "Header (4096 bytes)"):
        assert text in DOC, text

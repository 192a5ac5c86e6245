"""Fuzzing the image reader: a mutated real image raises ImageError and nothing else.

No GDB. One small image with every record type and every kind of chunk is written
with ImageWriter when the module loads; each property mutates it (truncation, bit
flip, length and other fields, record order, JSON payloads, compressed chunk
bytes; checksums recomputed where the mutation should get past them) and reads it
as gdbckpt does: Image.open(), verify_chunks(), read_chunk() of every chunk. The
image and the mutations live in tools/fuzz_images.py, which runs the same kinds
at scale (`.venv/bin/python tools/fuzz_images.py --cases 100000`).

The inputs that found reader bugs (a chunk size past 2**63, a zero chunk claiming
to be file data, a number past the float range, a zstd frame claiming gigabytes)
stay as @examples, so that they keep being tried.
"""

import importlib.util
import json
import os
import sys
import tempfile

import zstandard
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from gdbckpt.image import format as fmt

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     "tools", "fuzz_images.py")
_spec = importlib.util.spec_from_file_location("fuzz_images", _PATH)
fz = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = fz          # dataclasses look their module up while the file runs
_spec.loader.exec_module(fz)

_TMP = tempfile.TemporaryDirectory(prefix="gdbckpt-test-fuzz-")
ORIGINAL = fz.build_image(os.path.join(_TMP.name, "original.img"))
LAYOUT = fz.Layout.parse(ORIGINAL)
FUZZER = fz.Fuzzer(ORIGINAL)
TARGET = os.path.join(_TMP.name, "case.img")
F = LAYOUT.fields
NRECORDS = len(LAYOUT.records)
RECORD_OF = {r.rtype: i for i, r in enumerate(LAYOUT.records)}
FILE_DATA_ZSTD = next(n for n in LAYOUT.packed_chunks
                      if LAYOUT.chunks[n][4] & fmt.ChunkFlags.FILE_DATA)
MEMORY_ZSTD = next(n for n in LAYOUT.packed_chunks
                   if not LAYOUT.chunks[n][4] & fmt.ChunkFlags.FILE_DATA)
ZERO_CHUNK = next(n for n, c in enumerate(LAYOUT.chunks) if c[4] & fmt.ChunkFlags.ZERO)

FUZZ = settings(max_examples=250, deadline=None, derandomize=True, database=None)
TRACED = settings(FUZZ, max_examples=120)     # allocations traced: 5x slower a case


def read(kind, data, *, trace=False):
    """data read as an image; any exception but ImageError propagates. Also fails on a
    missed truncation or flip, a slow case or (traced) an allocation beyond the file."""
    out = fz.probe(data, TARGET, reraise=True, trace=trace)
    bad = fz.problems(kind, data, ORIGINAL, out)
    assert not bad, f"{bad}; {out.status} at {out.stage}: {out.error!r}"
    return out


# --- strategies -----------------------------------------------------------------

def field_values(field):
    """Arbitrary integers for a field, weighted to the values that catch readers out."""
    top = (1 << field.bits) - 1
    near = field.get(ORIGINAL)
    return st.one_of(
        st.sampled_from(LAYOUT.interesting(field)),
        st.integers(0, top),
        st.integers(0, 2 * LAYOUT.size),
        st.integers(-2 * fz.PAGE, 2 * fz.PAGE).map(lambda d: min(max(near + d, 0), top)))


def field_changes(fields):
    return st.sampled_from(fields).flatmap(lambda f: st.tuples(st.just(f), field_values(f)))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
    | st.sampled_from(fz.SCALARS),
    lambda kids: st.lists(kids, max_size=4)
    | st.dictionaries(st.sampled_from(fz.model_keys()) | st.text(max_size=6), kids, max_size=6),
    max_leaves=16)


def chunk_payloads(n):
    """Bytes for compressed chunk n: another frame, a frame that claims any size, noise."""
    size, room = LAYOUT.chunks[n][1], fz.span(LAYOUT.chunks[n][3])
    claims = st.one_of(st.integers(0, (1 << 64) - 1), st.integers(0, 4 * size),
                       st.sampled_from([size - 1, size, size + 1, 1 << 33, 1 << 63]))
    frames = st.builds(fz.zstd_frame, claims, st.sampled_from([1, 16, fz.PAGE, size]))
    packed = st.binary(min_size=1, max_size=64).flatmap(
        lambda b: st.integers(1, 4 * size).map(
            lambda k: zstandard.compress((b * (k // len(b) + 1))[:k], 1)[:room]))
    return st.one_of(frames, packed, st.binary(min_size=1, max_size=room))


# --- the properties ---------------------------------------------------------------

def test_the_image_reads_back():
    out = read("none", ORIGINAL, trace=True)
    assert (out.status, out.stage) == ("opened", "done")
    assert {r.rtype for r in LAYOUT.records} == set(fmt.RECORD_NAMES)
    assert {c[5] for c in LAYOUT.chunks} == {fmt.Codec.NONE, fmt.Codec.ZSTD}
    flags = [c[4] for c in LAYOUT.chunks]
    assert any(f & fmt.ChunkFlags.ZERO for f in flags)
    assert any(f & fmt.ChunkFlags.FILE_DATA for f in flags)


@FUZZ
@given(n=st.one_of(st.integers(0, LAYOUT.size - 1),
                   st.sampled_from([e for e in FUZZER.edges if e < LAYOUT.size]),
                   st.integers(LAYOUT.size - 2 * fmt.TRAILER_SIZE, LAYOUT.size - 1)))
def test_any_truncation_is_refused(n):
    out = read("truncate", fz.truncate(ORIGINAL, n))
    assert (out.status, out.stage) == ("image_error", "open")


@FUZZ
@given(bit=st.one_of(st.integers(0, 8 * LAYOUT.size - 1),
                     st.sampled_from(FUZZER.structured).flatmap(
                         lambda ab: st.integers(8 * ab[0], 8 * ab[1] - 1))))
def test_any_flipped_bit_is_detected(bit):
    out = read("flip", fz.flip(ORIGINAL, bit))
    assert out.detected


@TRACED
@given(change=field_changes(LAYOUT.length_fields))
@example(change=(F[f"chunk[{FILE_DATA_ZSTD}].size"], 1 << 63))
def test_length_fields_past_the_checksums(change):
    read("length", fz.set_fields(ORIGINAL, [change]), trace=True)


@TRACED
@given(changes=st.lists(field_changes(list(LAYOUT.fields.values())), min_size=1, max_size=3))
@example(changes=[(F[f"chunk[{ZERO_CHUNK}].flags"],
                   fmt.ChunkFlags.ZERO | fmt.ChunkFlags.FILE_DATA),
                  (F[f"chunk[{ZERO_CHUNK}].size"], 1 << 62)])
def test_any_fields_past_the_checksums(changes):
    read("fields", fz.set_fields(ORIGINAL, changes), trace=True)


@FUZZ
@given(order=st.one_of(st.permutations(range(NRECORDS)),
                       st.lists(st.integers(0, NRECORDS - 1), max_size=2 * NRECORDS)))
def test_records_reordered_duplicated_dropped(order):
    out = read("records", fz.reorder(ORIGINAL, LAYOUT, order))
    kept = {LAYOUT.records[i].rtype for i in order}
    needed = {fmt.RecordType.PROCESS, fmt.RecordType.THREAD, fmt.RecordType.VMAS,
              fmt.RecordType.FILES, fmt.RecordType.CHUNKS}    # the mappings name FILES
    if out.status == "opened":
        assert needed <= kept
    if order == list(range(NRECORDS)):
        assert out.status == "opened"


@FUZZ
@given(index=st.integers(0, NRECORDS - 1), value=json_values)
def test_json_payload_replaced(index, value):
    payload = json.dumps(value).encode()
    read("json", fz.replace_payload(ORIGINAL, LAYOUT, index, payload))


@FUZZ
@given(where=st.sampled_from(LAYOUT.json_paths()),
       value=st.one_of(st.just(fz.DELETE), st.sampled_from(fz.SCALARS), json_values))
@example(where=(RECORD_OF[fmt.RecordType.PROCESS], ("saved_at",)), value=10 ** 400)
@example(where=(RECORD_OF[fmt.RecordType.PROCESS], ("saved_at",)), value=float("nan"))
# A finite number, but no date ckpt info can show.
@example(where=(RECORD_OF[fmt.RecordType.PROCESS], ("saved_at",)), value=1 << 63)
def test_json_value_replaced(where, value):
    index, path = where
    assume(path or value is not fz.DELETE)
    read("json", fz.replace_json(ORIGINAL, LAYOUT, index, path, value))


@TRACED
@given(chunk=st.sampled_from(LAYOUT.packed_chunks).flatmap(
    lambda n: st.tuples(st.just(n), chunk_payloads(n))))
@example(chunk=(MEMORY_ZSTD, fz.zstd_frame(1 << 33)))
def test_compressed_chunk_bytes_past_the_checksums(chunk):
    n, payload = chunk
    read("chunks", fz.rewrite_chunk(ORIGINAL, LAYOUT, n, payload), trace=True)

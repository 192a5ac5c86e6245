"""The image's JSON codec (model.encode, model.decode): msgspec does the typing, and the
format stays what the hand-written codec of format 2 wrote."""

import pytest

from gdbckpt.errors import ImageError
from gdbckpt.image import model
from gdbckpt.image.kinds import FdKind

# Written by the earlier hand-written codec (gdbckpt 0.2 before msgspec): the oracle.
THREAD = (
    rb'{"cpus":null,"name":"w\udcff","pending":["0102"],"regs":{"rax":18446744073709551'
    rb'615,"rip":18446744073699065856},"robust_list":[1,24],"rseq":null,"sigaltstack":n'
    rb'ull,"sigmask":9223372036854775808,"syscall":null,"tid":7,"tid_address":null,"xst'
    rb'ate":{"components":{"2":"aabb"},"in_use":3,"legacy":"007f007f007f007f","xcr0":7}'
    rb'}'
)
SOCKET = (
    rb'{"anon":null,"data":null,"dev":null,"fd":3,"flags":0,"ino":null,"kind":"socket",'
    rb'"locks":[],"mtime_ns":null,"pipe":null,"pos":0,"same_as":-1,"seals":null,"shared'
    rb'_from":null,"size":null,"sock":{"backlog":0,"family":1,"inflight":[],"ino":0,"lo'
    rb'cal":"","local_port":0,"name":"00616263","options":{},"peer":"","peer_ino":0,"pe'
    rb'er_name":"","peer_port":0,"protocol":0,"queue":["6869"],"shutdown":0,"state":"un'
    rb'bound","tcp":{"buf_lock":0,"congestion":"cubic","cork":false,"family":2,"keepali'
    rb've":false,"keepcnt":3,"keepidle":1,"keepintvl":2,"local":"1.2.3.4","local_port":'
    rb'5,"mss":1460,"nodelay":false,"peer":"5.6.7.8","peer_port":6,"rcv_wscale":7,"rcvb'
    rb'uf":6,"recv_queue":"72","recv_seq":200,"sack":true,"send_queue":"71","send_seq":'
    rb'100,"snd_wscale":7,"sndbuf":5,"timestamps":true,"tsval":9,"unsent":0,"user_timeo'
    rb'ut":4,"window":[1,2,3,4,5],"wscale":true},"type":1},"target":"socket:[1]"}'
)


@pytest.mark.parametrize("cls, payload", [(model.ThreadState, THREAD), (model.FdInfo, SOCKET)])
def test_records_of_the_earlier_codec_read_and_write_back_byte_for_byte(cls, payload):
    assert model.encode(model.decode(cls, payload, "rec")) == payload


def test_values_come_back_typed():
    t = model.decode(model.ThreadState, THREAD, "rec")
    assert t.name == "w\udcff"             # an undecodable byte of a name, as os gives it
    assert t.regs["rip"] == 0xffffffffff600000 and t.sigmask == 1 << 63
    assert t.xstate.legacy == b"\x00\x7f" * 4 and t.xstate.components == {"2": b"\xaa\xbb"}
    assert t.pending == [b"\x01\x02"]
    fd = model.decode(model.FdInfo, SOCKET, "rec")
    assert fd.kind is FdKind.SOCKET and fd.sock.name == b"\0abc"
    assert fd.sock.tcp.send_queue == b"q" and fd.sock.tcp.window == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("payload, message", [
    (b'{"addr": 1, "size": 2, "sig": "x"}', r"rec\.sig: expected `int`, got `str`"),
    (b'{"addr": 1, "size": 2}', r"rec: object missing required field `sig`"),
    (b'{"addr": 18446744073709551616, "size": 2, "sig": 3}', r"rec: not valid JSON "
     r"\(integer out of range"),
    (b'{"addr": -9223372036854775809, "size": 2, "sig": 3}', "integer out of range"),
    (b'{"addr": true, "size": 2, "sig": 3}', r"rec\.addr: expected `int`, got `bool`"),
    (b'[1, 2, 3]', r"rec: expected `object`, got `array`"),
    (b'{"addr": 1, "size": 2, "sig": 3', "rec: not valid JSON"),
])
def test_a_bad_rseq_record_is_named(payload, message):
    with pytest.raises(ImageError, match=message):
        model.decode(model.Rseq, payload, "rec")


@pytest.mark.parametrize("value, message", [
    ("NaN", "NaN is not a number"), ("Infinity", "Infinity is not"), ("1e999", "out of range")])
def test_a_time_that_is_no_number_is_refused(value, message):
    payload = THREAD.replace(b'"tid":7', b'"tid":7,"x":' + value.encode())   # unknown key
    with pytest.raises(ImageError, match=message):
        model.decode(model.ThreadState, payload, "rec")


@pytest.mark.parametrize("old, new, message", [
    (b'"pending":["0102"]', b'"pending":["01g2"]', r"rec\.pending\[0\]: expected hex bytes"),
    (b'"pending":["0102"]', b'"pending":[12]', r"rec\.pending\[0\]: expected hex bytes"),
    (b'"name":"w\\udcff"', b'"name":"w\\ud800"', r"rec\.name: not text a save writes"),
    (b'"tid":7', b'"tid":"7"', r"rec\.tid: expected `int`, got `str`"),
    (b'"xcr0":7', b'"xcr0":7.5', r"rec\.xstate\.xcr0: expected `int`, got `float`"),
])
def test_a_bad_thread_field_is_named(old, new, message):
    assert old in THREAD
    with pytest.raises(ImageError, match=message):
        model.decode(model.ThreadState, THREAD.replace(old, new), "rec")


def test_an_unknown_kind_says_a_newer_gdbckpt_wrote_it():
    with pytest.raises(ImageError, match=r"rec\.kind: unknown kind 'teleporter'.*newer gdbckpt"):
        model.decode(model.FdInfo, SOCKET.replace(b'"socket"', b'"teleporter"'), "rec")


def test_unknown_keys_are_ignored_and_missing_defaults_filled():
    rseq = model.decode(model.Rseq, b'{"addr": 1, "size": 32, "sig": 3, "later": [1]}', "rec")
    assert rseq == model.Rseq(addr=1, size=32, sig=3, flags=0)

"""The wire format: framing, limits, and a fuzzer on the decoder."""

from __future__ import annotations

import json
import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from watchdog.control.protocol import (
    MAX_GROWTH_PLANNED_S,
    VERSION,
    FrameDecoder,
    ProtocolError,
    decode_body,
    encode,
    opt_float,
    opt_int,
    opt_names,
    opt_text,
    recv_message,
)
from watchdog.detectors.engine import MAX_PLANNED_GROWTH_S


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def test_round_trip_adds_version():
    """A message encodes to one frame that decodes back to it, with the version added."""
    decoder = FrameDecoder()
    (message,) = decoder.feed(encode({"type": "ping", "id": 7, "text": "é"}))
    assert message == {"v": VERSION, "type": "ping", "id": 7, "text": "é"}
    assert not decoder.partial


def test_byte_by_byte_and_several_per_chunk():
    """Frames split at every byte, or packed several to a chunk, decode the same."""
    data = encode({"type": "a"}) + encode({"type": "b"}) + encode({"type": "c"})
    decoder = FrameDecoder()
    got = [m["type"] for i in range(len(data)) for m in decoder.feed(data[i : i + 1])]
    assert got == ["a", "b", "c"]
    assert [m["type"] for m in FrameDecoder().feed(data)] == ["a", "b", "c"]


def test_huge_length_rejected_before_buffering():
    """A frame announcing 0xFFFFFFFF bytes is refused from its header, holding no body buffer."""
    decoder = FrameDecoder(max_bytes=1 << 20)
    with pytest.raises(ProtocolError, match="4294967295"):
        list(decoder.feed(b"\xff\xff\xff\xff" + b"x" * 10))
    assert len(decoder._buffer) < 64


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b"\xff\xfe", "UTF-8"),
        (b"[1, 2]", "expected an object"),
        (b'{"type": "x"}', "version"),
        (b'{"v": 2, "type": "x"}', "version 2"),
        (b'{"v": 1}', "type"),
        (b'{"v": 1, "type": "x", "n": NaN}', "NaN"),
        (b'{"v": 1, "type": "x", "id": 1e999}', "out of range"),
        (b'{"v": 1, "type": "x", "n": ' + b"1" * 5000 + b"}", "digits"),
        (b"{" * 100_000, "JSON"),
        (b'{"v": 1, "type": "x", "id": "\\ud800"}', "lone surrogate"),
        (b'{"v": 1, "type": "x", "a": {"b": ["\\uDFFF"]}}', "lone surrogate"),
        (b'{"v": 1, "type": "x", "id": "\\ude00\\ud83d"}', "lone surrogate"),
    ],
)
def test_bad_bodies_rejected(body, problem):
    """Bodies that are not UTF-8 JSON objects of this version are protocol errors."""
    with pytest.raises(ProtocolError, match=problem):
        decode_body(body)


def test_a_surrogate_pair_is_one_character_and_accepted():
    """An emoji written as JSON's pair of escapes is text like any other."""
    assert (
        decode_body(b'{"v": 1, "type": "x", "job": "run-\\ud83d\\ude00"}')["job"]
        == "run-\U0001f600"
    )


def test_a_bare_header_is_a_partial_frame():
    """A header with no body byte yet is a frame in progress (the stalled-frame timer runs)."""
    decoder = FrameDecoder()
    assert list(decoder.feed(struct.pack(">I", 10))) == []
    assert decoder.partial


def test_zero_length_rejected():
    """A zero-length frame is a protocol error, not an empty message."""
    with pytest.raises(ProtocolError):
        list(FrameDecoder().feed(b"\0\0\0\0"))


def test_encode_refuses_oversized():
    """The sender checks the maximum too."""
    with pytest.raises(ProtocolError, match="exceeds"):
        encode({"type": "x", "pad": "y" * 5000}, max_bytes=4096)


def test_opt_int_rejects_bools_and_negatives():
    """Integer fields take non-negative integers or null, never booleans."""
    assert opt_int({"n": None}, "n") is None
    assert opt_int({"n": 5}, "n") == 5
    for bad in (True, -1, 1.5, "3", 1 << 63):
        with pytest.raises(ProtocolError):
            opt_int({"n": bad}, "n")


def test_opt_float_refuses_an_integer_no_double_holds():
    """An integer of 400 digits is valid JSON but no double: a protocol error, not a crash."""
    assert opt_float({"n": 7}, "n") == 7.0
    with pytest.raises(ProtocolError, match="finite number"):
        opt_float({"n": 10**400}, "n")


@pytest.mark.parametrize("bad", ["a\nb", "\x1b[31mred", "nul\x00", "del\x7f", "csi\x9b2J", "\r"])
def test_one_line_text_refuses_control_characters(bad):
    """Names printed as they are hold no C0, DEL or C1 character; free text may."""
    assert opt_text({"s": bad}, "s") == bad
    with pytest.raises(ProtocolError, match="control characters"):
        opt_text({"s": bad}, "s", one_line=True)
    assert opt_text({"s": "cuda:0 é ✓"}, "s", one_line=True) == "cuda:0 é ✓"


@pytest.mark.parametrize("bad", ["x", [1, 2], [""], ["a" * 65], ["ok\n"], ["n"] * 65, {"a": 1}])
def test_names_must_be_a_short_list_of_strings(bad):
    """A list of names is a list of 1..64-character strings, at most 64 of them."""
    assert opt_names({}, "k") == []
    assert opt_names({"k": ["empty_cache", "from_the_future"]}, "k") == [
        "empty_cache",
        "from_the_future",
    ]
    with pytest.raises(ProtocolError):
        opt_names({"k": bad}, "k")


def test_recv_message_takes_a_timeout_longer_than_a_socket_can():
    """A wait of 1e10 s (settimeout overflows past about 9.2e9) waits; it does not raise."""
    left, right = socket.socketpair()
    with left, right:
        right.sendall(encode({"type": "pong"}))
        message = recv_message(left, FrameDecoder(), [], timeout_s=1e10)
    assert message["type"] == "pong"


def test_recv_message_times_out_on_its_deadline():
    """A short timeout still ends the wait with TimeoutError when nothing arrives."""
    left, right = socket.socketpair()
    with left, right, pytest.raises(TimeoutError, match=r"0\.05 s"):
        recv_message(left, FrameDecoder(), [], timeout_s=0.05)


def test_growth_cap_is_the_engines():
    """The protocol caps a plan at what the detection engine honours, no less and no more."""
    assert MAX_GROWTH_PLANNED_S == MAX_PLANNED_GROWTH_S


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_fuzz_decoder_raises_only_protocol_errors(chunks):
    """Arbitrary bytes produce messages or a ProtocolError, never another exception."""
    decoder = FrameDecoder(max_bytes=4096)
    try:
        for chunk in chunks:
            for message in decoder.feed(chunk):
                assert isinstance(message, dict)
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        ),
        max_leaves=20,
    )
)
def test_fuzz_valid_frames_with_any_json(value):
    """Any JSON value inside a well-formed frame decodes or is refused as a ProtocolError."""
    body = json.dumps({"v": 1, "type": "t", "x": value}).encode()
    (message,) = FrameDecoder().feed(frame(body))
    assert message["x"] == value

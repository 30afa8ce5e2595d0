"""The one MIME splitter (listserv/mime.py): parts are offsets into the bytes given,
and a message deeper or broader than the limits says so instead of being followed."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from listserv import mime
from tests.helpers import nested_body


def nested(depth: int) -> bytes:
    return (b'Content-Type: multipart/related; boundary="b0"\r\n\r\n'
            + nested_body(depth, b"related"))


def flat(parts: int) -> bytes:
    return (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
            + b"".join(b"--b\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % n
                       for n in range(parts)) + b"--b--\r\n")


def test_parts_are_offsets_of_their_bytes_and_the_close_delimiter():
    raw = (b"Subject: x\r\nContent-Type: multipart/alternative; boundary=\"<<b>>\"\r\n\r\n"
           b"preamble\r\n--<<b>>\r\nContent-Type: text/plain\r\n\r\nplain\r\n"
           b"--<<b>>\r\nContent-Type: text/html\r\n\r\n<p>html</p>\r\n--<<b>>--\r\nepilogue\r\n")
    top = mime.parse(raw)
    text, markup = top.children
    assert (text.raw_body, markup.raw_body) == (b"plain", b"<p>html</p>")
    assert raw[top.close:].startswith(b"\r\n--<<b>>--")
    assert [p.content_type for p in top.children] == ["text/plain", "text/html"]
    assert top.within_limits


def test_the_depth_limit_is_reached_and_said():
    assert mime.parse(nested(mime.MAX_DEPTH)).within_limits
    deep = mime.parse(nested(mime.MAX_DEPTH + 1))
    assert not deep.within_limits
    bottom = deep
    while bottom.children:
        bottom = bottom.children[0]
    assert bottom.depth == mime.MAX_DEPTH and bottom.content_type == "text/plain"
    assert bottom.declared_type == "multipart/related"  # shown raw, not split


def test_the_parts_limit_keeps_the_rest_in_the_last_part():
    assert mime.parse(flat(mime.MAX_PARTS)).within_limits
    broad = mime.parse(flat(mime.MAX_PARTS + 1))
    assert not broad.within_limits and len(broad.children) == mime.MAX_PARTS
    assert broad.children[-1].raw_body.endswith(b"part 1000\r\n--b--\r\n")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(
    st.sampled_from(["Content-Disposition", "content-disposition", "Content-Transfer-Encoding",
                     "CONTENT-TRANSFER-ENCODING", "Content-Type"]),
    st.lists(st.sampled_from(["attachment", "Inline", " ", ";", "filename=a.txt", "BASE64",
                              "quoted-printable", "\t", "é", "\x00", "text/plain"]),
             max_size=6).map("".join)), max_size=4))
def test_disposition_and_transfer_encoding_read_as_the_email_package_reads_them(fields):
    """A part's fields are read without building its email.message.Message (`headers`),
    and must still say what that Message says."""
    head = "".join(f"{name}: {value}\r\n" for name, value in fields).encode()
    part = mime.parse(head + b"\r\nbody\r\n")
    assert part.disposition() == part.headers.get_content_disposition()
    assert part.transfer_encoding == str(
        part.headers.get("content-transfer-encoding", "")).strip().lower()

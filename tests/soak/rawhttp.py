"""A raw HTTP/1.1 client for the soak: any bytes out, a parsed answer (or none) back.

httpx cannot send what the soak needs to send (malformed headers, invalid UTF-8 in places a
client library would refuse, bodies shorter than their Content-Length) nor leave the way a
crashing client leaves (a TCP reset at an arbitrary moment). The answer is parsed with h11, the
parser Hypercorn itself uses, so a response this module accepts is one a client would.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

import h11
import trio

Header = tuple[bytes, bytes]


def request_bytes(
    method: bytes,
    target: bytes,
    headers: list[Header],
    body: bytes = b"",
    *,
    content_length: int | None = None,
    host: bytes = b"127.0.0.1",
) -> bytes:
    """One request as bytes. ``Content-Length`` is the body's unless given (or unless the caller
    set Transfer-Encoding itself); ``Connection: close`` so the answer ends with the socket."""
    names = {name.lower() for name, _ in headers}
    lines = [method + b" " + target + b" HTTP/1.1", b"Host: " + host, b"Connection: close"]
    lines += [name + b": " + value for name, value in headers]
    if b"transfer-encoding" not in names and b"content-length" not in names:
        length = len(body) if content_length is None else content_length
        lines.append(b"Content-Length: " + str(length).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


@dataclass
class Answer:
    status: int | None = None  # None: the server closed without answering
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytes = b""
    complete: bool = False  # the whole message arrived (EndOfMessage)

    @property
    def content_type(self) -> str:
        return self.headers.get(b"content-type", b"").decode("latin-1")


def _parser() -> h11.Connection:
    """An h11 client connection that believes it sent a request, ready to parse the answer."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="POST", target="/", headers=[("Host", "x"),
                                                               ("Content-Length", "0")]))
    conn.send(h11.EndOfMessage())
    return conn


async def read_answer(stream: trio.SocketStream) -> Answer:
    """Read one response until its end or until the server closes."""
    conn = _parser()
    answer = Answer()
    body = bytearray()
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:
            break
        if event is h11.NEED_DATA:
            try:
                data = await stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            conn.receive_data(data)
            continue
        if isinstance(event, h11.Response):
            answer.status = event.status_code
            answer.headers = {k.lower(): v for k, v in event.headers}
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            answer.complete = True
            break
        elif isinstance(event, h11.ConnectionClosed):
            break
    answer.body = bytes(body)
    return answer


async def send_and_read(
    port: int, data: bytes, *, half_close: bool = False, chunk: int = 0
) -> Answer:
    """Send ``data`` (in pieces of ``chunk`` bytes if set), optionally half-close, and read the
    answer. A server that answers early and closes (413, a protocol error) may make sending
    fail: the answer is still read."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        try:
            if chunk:
                for start in range(0, len(data), chunk):
                    await stream.send_all(data[start : start + chunk])
            else:
                await stream.send_all(data)
            if half_close:
                await stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        return await read_answer(stream)


def arm_reset(stream: trio.SocketStream) -> None:
    """Make closing the socket a TCP reset (SO_LINGER 0), the way a killed client leaves."""
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def reset(stream: trio.SocketStream) -> None:
    arm_reset(stream)
    await stream.aclose()

"""A lean HTTP/1.1 load client over trio sockets, for the benchmarks.

A general client (httpx) spends more CPU per request than the proxy under test, and on a
two-core machine that CPU comes out of the server's share. This one does the least a client can:
one request written in one ``send_all`` on a kept-alive connection, the status line and the
framing headers read, the body taken by ``Content-Length`` or decoded chunk by chunk, and the
time of the first content marker noted on the way. It is not a general client: no redirects,
no TLS, no pipelining.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import trio

CONTENT = b'"content":"'


class HttpError(Exception):
    pass


@dataclass
class Reply:
    status: int
    started: float
    first_content: float | None  # perf_counter() when the first content marker arrived
    finished: float
    markers: int = 0  # how many times the counted marker appeared in the body
    body: bytes = b""
    first_chunk: bytes = b""  # the decoded piece of the body the first content was in
    first_ns: int | None = None  # monotonic_ns() at the first content

    @property
    def seconds(self) -> float:
        return self.finished - self.started


@dataclass
class Target:
    """Where requests go: ``base`` (``http://host:port``), a bearer key and a model name."""

    base: str
    key: str
    model: str = "codex-5"
    path: str = "/v1/chat/completions"
    host: str = field(init=False)
    port: int = field(init=False)

    def __post_init__(self) -> None:
        parts = urlsplit(self.base)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"only http://host:port targets are supported, not {self.base!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        if parts.path not in ("", "/"):
            self.path = parts.path.rstrip("/") + "/chat/completions"

    def request(self, body: bytes) -> bytes:
        return (
            f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Authorization: Bearer {self.key}\r\nContent-Type: application/json\r\n"
            f"Accept: */*\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    def chat(self, stream: bool, text: str = "hi") -> bytes:
        import orjson

        return self.request(orjson.dumps({
            "model": self.model, "stream": stream,
            "messages": [{"role": "user", "content": text}],
        }))


class Connection:
    """One kept-alive connection; requests on it run one after another."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.stream: trio.SocketStream | None = None
        self.buf = bytearray()

    async def _connect(self) -> trio.SocketStream:
        if self.stream is None:
            self.stream = await trio.open_tcp_stream(self.target.host, self.target.port)
            self.buf.clear()
        return self.stream

    async def aclose(self) -> None:
        if self.stream is not None:
            await self.stream.aclose()
            self.stream = None

    async def _fill(self) -> None:
        assert self.stream is not None
        data = await self.stream.receive_some(262144)
        if not data:
            raise HttpError("connection closed by the server")
        self.buf += data

    async def exchange(
        self,
        raw: bytes,
        *,
        count: bytes | None = None,
        keep_body: bool = False,
        on_first: Callable[[Reply], Awaitable[None]] | None = None,
    ) -> Reply:
        """Send ``raw`` and read the whole response. ``count`` is a marker whose occurrences in
        the body are counted; ``on_first`` runs when the first content arrives (a stream
        held open by the caller returns from there by raising)."""
        started = time.perf_counter()
        for attempt in (1, 2):
            reused = self.stream is not None
            stream = await self._connect()
            buf = self.buf
            try:
                await stream.send_all(raw)
                while (end := buf.find(b"\r\n\r\n")) < 0:
                    await self._fill()
                break
            except (HttpError, trio.BrokenResourceError, OSError):
                # The server closed an idle kept-alive connection just as the request went out
                # (any client reconnects then); a fresh connection failing is a real error.
                await self.aclose()
                if not reused or buf or attempt == 2:
                    raise
        head = bytes(buf[:end]).decode("latin-1").split("\r\n")
        del buf[: end + 4]
        status = int(head[0].split(" ", 2)[1])
        length: int | None = None
        chunked = False
        close = False
        for line in head[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
            elif name == "connection" and "close" in value.lower():
                close = True
        reply = Reply(status, started, None, 0.0)
        body = bytearray()
        tail = b""
        marker_len = len(count) if count else 0

        async def piece(data: bytes) -> None:
            nonlocal tail
            if reply.first_content is None and CONTENT in data and _has_content(data):
                reply.first_content = time.perf_counter()
                reply.first_ns = time.monotonic_ns()
                reply.first_chunk = data
                if on_first is not None:
                    await on_first(reply)
            if count is not None:
                joined = tail + data
                reply.markers += joined.count(count)
                tail = joined[-(marker_len - 1):] if marker_len > 1 else b""
            if keep_body:
                body.extend(data)

        if chunked:
            while True:
                while (eol := buf.find(b"\r\n")) < 0:
                    await self._fill()
                size = int(bytes(buf[:eol]).split(b";")[0], 16)
                del buf[: eol + 2]
                if size == 0:
                    while (eol := buf.find(b"\r\n")) < 0:
                        await self._fill()
                    del buf[: eol + 2]  # no trailers are ever sent here
                    break
                while len(buf) < size + 2:
                    await self._fill()
                await piece(bytes(buf[:size]))
                del buf[: size + 2]
        elif length is not None:
            while len(buf) < length:
                await self._fill()
            await piece(bytes(buf[:length]))
            del buf[:length]
        else:
            raise HttpError("response without Content-Length or chunked framing")
        reply.finished = time.perf_counter()
        reply.body = bytes(body)
        if close:
            await self.aclose()
        return reply


def _has_content(data: bytes) -> bool:
    """A non-empty ``"content":"…`` value (the role chunk's empty content does not count)."""
    start = 0
    while (at := data.find(CONTENT, start)) >= 0:
        following = data[at + len(CONTENT): at + len(CONTENT) + 1]
        if following and following != b'"':
            return True
        start = at + 1
    return False


async def run_load(
    target: Target, raw: bytes, *, total: int, concurrency: int, count: bytes | None = None
) -> tuple[float, list[Reply]]:
    """``total`` requests over ``concurrency`` kept-alive connections: (requests/s, replies)."""
    remaining = total
    replies: list[Reply] = []
    connections = [Connection(target) for _ in range(concurrency)]
    for conn in connections:  # connect before the clock starts
        await conn._connect()

    async def worker(conn: Connection) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            replies.append(await conn.exchange(raw, count=count))

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for conn in connections:
            nursery.start_soon(worker, conn)
    elapsed = time.perf_counter() - start
    for conn in connections:
        await conn.aclose()
    return total / elapsed, replies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]

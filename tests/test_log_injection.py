"""Client-controlled text cannot add lines to the logs (text or JSON, access or app log).

A request for ``/x%0a2099-01-01T00:00:00Z%20forged`` used to write a second access-log line of
the client's choosing in ``PROXY_LOG_FORMAT=text``; JSON lines kept NEL and U+2028 raw, which
line-oriented readers (``str.splitlines``, some log shippers) split on.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import orjson
import pytest
import trio

from quartproxy.observability import (
    AccessJsonFormatter,
    AccessTextFormatter,
    JsonFormatter,
    NdjsonLog,
    TextFormatter,
    escape_text,
)

from .servers import ServerProcess, fake_env

FORGED = "\n2099-01-01T00:00:00Z forged \"GET /admin\" 200"
BREAKERS = ["\n", "\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028",
            "\u2029", "\x1b[2K", "\x00", "\x7f", "\u202e"]


def access_fields(route: str, **extra: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "ts": "2026-01-01T00:00:00.000Z", "level": "info", "req_id": "r1", "method": "GET",
        "route": route, "status": 404, "dur_ms": 1.0, "ttfb_ms": 1.0, "stream": False,
        "model": None, "outcome": "error", "ua": "curl", "auth": "none",
    }
    fields.update(extra)
    return fields


def access_record(fields: dict[str, object]) -> logging.LogRecord:
    record = logging.LogRecord("quartproxy.access", logging.INFO, __file__, 1, "access", (), None)
    record.fields = fields
    return record


@pytest.mark.parametrize("breaker", BREAKERS, ids=[repr(b) for b in BREAKERS])
def test_access_text_line_stays_one_line(breaker: str) -> None:
    route = "/x" + FORGED.replace("\n", breaker)
    line = AccessTextFormatter().format(access_record(access_fields(route, model=route)))
    assert len(line.splitlines()) == 1
    assert line.isprintable()
    # The quoted field cannot be closed early either: every quote inside it is escaped.
    assert line.count('"') - line.count('\\"') == 2


@pytest.mark.parametrize("breaker", BREAKERS, ids=[repr(b) for b in BREAKERS])
def test_access_json_line_is_one_line_and_lossless(breaker: str) -> None:
    route = "/x" + FORGED.replace("\n", breaker)
    line = AccessJsonFormatter().format(access_record(access_fields(route, ua=breaker)))
    assert len(line.splitlines()) == 1
    assert line.isprintable()
    decoded = orjson.loads(line)
    assert (decoded["route"], decoded["ua"]) == (route, breaker)


def test_app_log_text_message_and_traceback_cannot_fake_a_record() -> None:
    formatter = TextFormatter()
    try:
        raise ValueError("bad" + FORGED)
    except ValueError:
        record = logging.LogRecord("quartproxy.http", logging.ERROR, __file__, 1,
                                   "unhandled error for %s", ("/x" + FORGED,), sys.exc_info())
    lines = formatter.format(record).splitlines()
    assert "\\x0a2099-01-01T00:00:00Z forged" in lines[0]
    assert len(lines) > 2  # the traceback keeps its lines...
    assert all(line.startswith("    ") for line in lines[1:])  # ...indented under the record
    assert not any(line.startswith("2099") for line in lines)


def test_app_log_json_escapes_line_separators() -> None:
    record = logging.LogRecord("quartproxy", logging.INFO, __file__, 1, "x%sy", ("\u2028\x85",),
                               None)
    line = JsonFormatter().format(record)
    assert len(line.splitlines()) == 1
    assert orjson.loads(line)["msg"] == "x\u2028\x85y"


def test_escape_text_keeps_ordinary_text() -> None:
    assert escape_text("/v1/chat/completions é 日本") == "/v1/chat/completions é 日本"
    assert escape_text('a"b\\c') == 'a"b\\c'
    assert escape_text('a"b\\c', quoted=True) == 'a\\"b\\\\c'


async def raw_request(port: int, head: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(head)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            data += chunk
    return data


@pytest.mark.parametrize("fmt", ["text", "json"])
async def test_forged_path_and_agent_over_http(tmp_path: Path, fast_fake: Path, fmt: str) -> None:
    path = b"/x%0a2099-01-01T00:00:00Z%20forged%0d%c2%85%e2%80%a8end"
    head = (b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nX-Request-Id: forge-" + fmt.encode()
            + b"\r\nUser-Agent: ua\x85\xe2tail\r\nConnection: close\r\n\r\n")
    async with trio.open_nursery() as nursery:
        server = await ServerProcess(
            tmp_path, fake_env(fast_fake, PROXY_LOG_FORMAT=fmt)
        ).start(nursery)
        with trio.fail_after(30):
            reply = await raw_request(server.port, head)
            assert reply.startswith(b"HTTP/1.1 404")
            # The access line is written once the response has gone out: wait for it.
            while b"forge-" + fmt.encode() not in server.stdout:  # noqa: ASYNC110
                await trio.sleep(0.02)
        await server.stop()
        nursery.cancel_scope.cancel()
    lines = bytes(server.stdout).decode("utf-8").splitlines()
    ours = [line for line in lines if "forge-" in line]
    assert len(ours) == 1
    assert not any(line.startswith("2099") or line.startswith("end") for line in lines)
    if fmt == "json":
        record = orjson.loads(ours[0])
        assert record["route"] == "/x\n2099-01-01T00:00:00Z forged\r\x85\u2028end"
        assert record["ua"] == "ua\x85\xe2tail"
    else:
        assert "/x\\x0a2099-01-01T00:00:00Z forged\\x0d\\x85\\u2028end" in ours[0]


async def test_usage_and_proto_records_are_one_line_each(tmp_path: Path) -> None:
    log = NdjsonLog(tmp_path / "usage.ndjson")
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        log.record({"user_agent": "ua\u2028\x85forged", "model": "codex-5"})
        log.record_line("req1", "answer line\u2028separator \u2029 para".encode())
        log.close()
    text = (tmp_path / "usage.ndjson").read_text("utf-8")
    lines = text.splitlines()  # str.splitlines: breaks at U+2028, U+2029 and NEL too
    assert len(lines) == 2
    assert orjson.loads(lines[0])["user_agent"] == "ua\u2028\x85forged"
    assert orjson.loads(lines[1])["line"] == "answer line\u2028separator \u2029 para"

"""The HTTP stack alone: Hypercorn's trio worker and h11, answering as the proxy answers and
doing nothing else.

The proxy is served by Hypercorn (trio worker, h11) and a part of every figure is that stack's
own cost. The bench runs this app under the same loads as the proxy, so what a target leaves
for the proxy's own work is a measured figure of the same run, not a guess: a chat completion
(the same headers, a body of the same shape), a stream of the same frames (role, ten words,
finish, ``[DONE]``), ``GET /readyz``. ``BARE_HANG=1`` holds every stream open after its third
word, for the memory per open stream.

Run: ``python benchmarks/barestack.py [PORT]`` (else ``$PORT``; Hypercorn set as the proxy sets
it).
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from typing import Any

import orjson
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

WORDS = 10
HANG_AFTER = 3


def _chunk(delta: dict[str, Any], finish: str | None, created: int) -> bytes:
    return b"data: " + orjson.dumps({
        "id": "chatcmpl-bare", "object": "chat.completion.chunk", "created": created,
        "model": "codex-5", "system_fingerprint": None,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }) + b"\n\n"


def _frames(created: int) -> list[bytes]:
    return [
        _chunk({"role": "assistant", "content": ""}, None, created),
        *(_chunk({"content": f"word{i} "}, None, created) for i in range(WORDS)),
        _chunk({}, "stop", created),
        b"data: [DONE]\n\n",
    ]


def _answer(created: int) -> bytes:
    text = "".join(f"word{i} " for i in range(WORDS))
    return orjson.dumps({
        "id": "chatcmpl-bare", "object": "chat.completion", "created": created,
        "model": "codex-5", "system_fingerprint": None,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text,
                                             "refusal": None, "annotations": []},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 15, "total_tokens": 16},
    })


SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"),
               (b"cache-control", b"no-cache, no-transform"), (b"x-accel-buffering", b"no")]
JSON_HEADERS = [(b"content-type", b"application/json")]


async def app(scope: Any, receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    request_id = (b"x-request-id", uuid.uuid4().hex.encode())
    if scope["method"] != "POST":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"), request_id]})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    created = int(time.time())
    if b'"stream":true' not in body:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [*JSON_HEADERS, request_id]})
        await send({"type": "http.response.body", "body": _answer(created)})
        return
    frames = _frames(created)
    await send({"type": "http.response.start", "status": 200,
                "headers": [*SSE_HEADERS, request_id]})
    if os.environ.get("BARE_HANG"):
        await send({"type": "http.response.body", "body": b"".join(frames[:1 + HANG_AFTER]),
                    "more_body": True})
        await trio.sleep_forever()
    # As the proxy writes them: the role chunk and the first word at once, then the rest.
    await send({"type": "http.response.body", "body": frames[0] + frames[1], "more_body": True})
    await send({"type": "http.response.body", "body": b"".join(frames[2:]), "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def main() -> None:
    config = Config()
    port = int(sys.argv[1]) if len(sys.argv) > 1 else int(os.environ["PORT"])
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.keep_alive_timeout = 75
    config.h11_max_incomplete_size = 64 * 1024
    config.include_server_header = False
    trio.run(serve, app, config)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()

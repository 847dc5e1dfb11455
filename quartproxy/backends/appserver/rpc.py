"""JSON-RPC framing for ``codex app-server``, sans-io.

The worker speaks one JSON object per line on stdin/stdout, with no ``"jsonrpc"`` member. What
arrives on stdout is told apart by its *keys*, never by the id alone, because the worker numbers
its own requests from 0 and those ids may equal ids the proxy used:

* ``id`` + ``result`` or ``error`` (no ``method``): a :class:`Response` to one of our requests;
* ``method`` without ``id``: a :class:`Notification`;
* ``method`` + ``id``: a :class:`ServerRequest`, which the proxy must answer.

Anything else is :class:`NotAMessage`: the caller logs it and reads on. The worker does the same
with our junk (it answers nothing at all), which is why every request needs its own timeout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

RequestId = int | str


@dataclass(frozen=True, slots=True)
class RpcError:
    code: int
    message: str


@dataclass(frozen=True, slots=True)
class Response:
    """The answer to the request with ``id``: ``error`` is set, or ``result`` holds the value."""

    id: RequestId
    result: Any
    error: RpcError | None


@dataclass(frozen=True, slots=True)
class Notification:
    method: str
    params: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ServerRequest:
    """A request from the worker (an approval, a dynamic tool call); ``id`` is the worker's."""

    id: RequestId
    method: str
    params: dict[str, Any]


Incoming = Response | Notification | ServerRequest


class NotAMessage(ValueError):
    """A stdout line that is not a JSON-RPC message (logged by the caller, then skipped)."""


def _request_id(value: Any) -> RequestId:
    # bool is an int subclass; a JSON true is never an id.
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise NotAMessage(f"id is neither an integer nor a string: {value!r}")


def _params(obj: dict[str, Any]) -> dict[str, Any]:
    params = obj.get("params")
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise NotAMessage("params is not an object")
    return params


def _rpc_error(value: Any) -> RpcError:
    # Lenient on purpose: a malformed error still answers its request, and the waiter must be
    # released either way.
    if isinstance(value, dict):
        code = value.get("code")
        message = value.get("message")
        return RpcError(
            code if isinstance(code, int) and not isinstance(code, bool) else 0,
            message if isinstance(message, str) else orjson.dumps(value).decode(),
        )
    return RpcError(0, str(value))


def parse_message(line: bytes) -> Incoming | None:
    """One stdout line to a message; ``None`` for a blank line; :class:`NotAMessage` for junk."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        if not line.strip():  # looked at only here: stripping every line costs a copy each
            return None
        raise NotAMessage(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise NotAMessage("not a JSON object")
    has_id = "id" in obj
    if "method" in obj:
        method = obj["method"]
        if not isinstance(method, str) or not method:
            raise NotAMessage("method is not a non-empty string")
        if "result" in obj or "error" in obj:
            raise NotAMessage("both a method and a result/error")
        if has_id:
            return ServerRequest(_request_id(obj["id"]), method, _params(obj))
        return Notification(method, _params(obj))
    if has_id and ("result" in obj or "error" in obj):
        error = obj.get("error")
        return Response(
            _request_id(obj["id"]),
            obj.get("result") if error is None else None,
            None if error is None else _rpc_error(error),
        )
    raise NotAMessage("neither a response, a notification nor a request")


# --------------------------------------------------------------------------------------------
# What we write: every function returns exactly one line (orjson never emits a raw newline).


def encode_request(id: RequestId, method: str, params: dict[str, Any] | None = None) -> bytes:
    """A request line; ``params`` is always sent (``{}`` when ``None``)."""
    body = {"id": id, "method": method, "params": {} if params is None else params}
    return orjson.dumps(body) + b"\n"


def encode_notification(method: str, params: dict[str, Any] | None = None) -> bytes:
    """A notification line; without ``params`` the member is left out (``initialized``)."""
    obj: dict[str, Any] = {"method": method}
    if params is not None:
        obj["params"] = params
    return orjson.dumps(obj) + b"\n"


def encode_result(id: RequestId, result: Any) -> bytes:
    """The successful answer to a server request."""
    return orjson.dumps({"id": id, "result": result}) + b"\n"


def encode_error(id: RequestId, code: int, message: str) -> bytes:
    """The error answer to a server request."""
    return orjson.dumps({"id": id, "error": {"code": code, "message": message}}) + b"\n"


# --------------------------------------------------------------------------------------------
# Helpers for the layer above


def thread_id_of(msg: Notification | ServerRequest) -> str | None:
    """The thread a message belongs to (the routing key), or ``None`` for process-wide ones.

    Everything thread-scoped carries ``params.threadId`` except ``thread/started``, which carries
    the whole thread object instead.
    """
    thread_id = msg.params.get("threadId")
    if isinstance(thread_id, str):
        return thread_id
    if msg.method == "thread/started":
        thread = msg.params.get("thread")
        if isinstance(thread, dict) and isinstance(thread.get("id"), str):
            return str(thread["id"])
    return None


MAX_ERROR_MESSAGE = 500


def error_message(err: RpcError) -> str:
    """An RPC error as one short line for logs and 400 bodies.

    codex puts the useful part first; an unknown method, though, gets the list of every method
    (about 4.5 KB), so the line is capped too.
    """
    first = next((line.strip() for line in err.message.splitlines() if line.strip()), "")
    if len(first) > MAX_ERROR_MESSAGE:
        first = first[: MAX_ERROR_MESSAGE - 3] + "..."
    return first or f"JSON-RPC error {err.code}"

"""A tiny codex look-alike that lets ``quartproxy serve --demo`` work with no Codex CLI.

The proxy starts it by path, exactly as it would start codex, so every part of the proxy's child
handling is exercised for real; the mode is picked by argv, as codex's subcommands are:

* ``demo_backend.py app-server -c key=value ...`` (the default backend of ``--demo``): one
  long-lived JSON-RPC worker per pool slot, speaking the app-server protocol of codex 0.140 —
  ``initialize`` (ready at once, ``optOutNotificationMethods`` honoured), ``thread/start``,
  ``thread/inject_items``, ``turn/start`` (the answer streams as ``item/agentMessage/delta``
  words, then ``item/completed``, ``thread/tokenUsage/updated`` and ``turn/completed``),
  ``turn/interrupt``, ``thread/delete``/``thread/archive`` (a running turn is interrupted
  first) and ``thread/loaded/list``; anything else is a JSON-RPC error. stdin EOF or SIGTERM
  ends it with exit code 0. ``--version`` reports 0.140.0 so the proxy drives it in full mode
  but without function calling, which the demo does not implement: a request with ``tools``
  gets the proxy's clean 400;
* ``demo_backend.py proto -c key=value ...`` (``PROXY_BACKEND=proto``): one process per request
  that copies codex 0.42's observable behaviour — the first line is ``session_configured``
  printed before stdin is read; events use the ``{"id", "msg"}`` envelope; a turn reports
  ``token_count`` with ``info: null`` at its start and nested usage at its end; an
  ``interrupt`` op yields ``turn_aborted``; and the process neither exits after
  ``task_complete`` nor on stdin EOF, only on SIGTERM (or, as with codex, on stdin EOF after a
  SIGINT).

Both give the same canned reply, which quotes the last user message, word by word
``DELTA_PAUSE_S`` apart, with usage estimated at four characters per token.

It must not import ``quartproxy`` (or anything outside a handful of standard modules): in proto
mode it runs once per request, and start-up time is part of every response's latency.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable

CONTEXT_WINDOW = 272000
DELTA_PAUSE_S = 0.01
SNIPPET_MAX = 120
ROLES = ("system", "developer", "user", "assistant", "tool")
NO_RATE_LIMITS: dict[str, object] = {"primary": None, "secondary": None}

_quiet = False  # set by SIGINT: codex stops printing and waits for stdin to close


def write_line(text: str) -> None:
    """Write one line and flush it, so the proxy sees each delta as soon as it exists."""
    try:
        sys.stdout.buffer.write(text.encode("utf-8") + b"\n")
        sys.stdout.buffer.flush()
    except (BrokenPipeError, ValueError):
        # Nobody can read us any more; lingering would only leak a process.
        os._exit(1)


def emit(sub_id: str, msg: dict[str, object]) -> None:
    """One proto event line in the ``{"id", "msg"}`` envelope."""
    if _quiet:
        return
    write_line(json.dumps({"id": sub_id, "msg": msg}, ensure_ascii=False, separators=(",", ":")))


def new_id() -> str:
    """A random UUID-shaped id (``uuid`` would cost start-up time)."""
    raw = os.urandom(16).hex()
    return "-".join((raw[:8], raw[8:12], raw[12:16], raw[16:20], raw[20:]))


def log(level: str, text: str) -> None:
    """A tracing-style stderr line; the proxy keeps a tail of these for diagnostics."""
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1e6):06d}Z"
    try:
        sys.stderr.write(f"{stamp} {level:>5} quartproxy::demo_backend: {text}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


class StdinLines:
    """Line reader over fd 0 that can also peek without blocking.

    A turn has to notice an ``interrupt`` while it streams, and threads or ``select`` would cost
    start-up time, so the descriptor is switched between blocking (idle) and non-blocking
    (mid-turn polling) reads.
    """

    def __init__(self) -> None:
        self.buf = b""
        self.eof = False

    def _fill(self, block: bool) -> None:
        try:
            os.set_blocking(0, block)
            chunk = os.read(0, 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            self.buf += chunk
        else:
            self.eof = True

    def next_line(self, block: bool) -> str | None:
        """The next complete line; None at EOF, or (non-blocking) when none is ready yet."""
        while b"\n" not in self.buf:
            if self.eof:
                if self.buf:
                    rest, self.buf = self.buf, b""
                    return rest.decode("utf-8", "replace")
                return None
            before = len(self.buf)
            self._fill(block)
            if not block and len(self.buf) == before and not self.eof:
                return None
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode("utf-8", "replace").rstrip("\r")


def parse_submission(line: str) -> dict[str, object] | None:
    """Validate like codex does: bad lines are reported on stderr and otherwise ignored."""
    if not line.strip():
        return None
    try:
        sub = json.loads(line)
    except ValueError as exc:
        log("ERROR", f"invalid submission: {exc}")
        return None
    op = sub.get("op") if isinstance(sub, dict) else None
    if not isinstance(op, dict) or not isinstance(op.get("type"), str):
        log("ERROR", "invalid submission: missing field `op`")
        return None
    if op["type"] != "interrupt" and not isinstance(sub.get("id"), str):
        log("ERROR", "invalid submission: missing field `id`")
        return None
    valid: dict[str, object] = sub
    return valid


def model_from_argv(argv: list[str]) -> str:
    """The ``model`` from ``-c model=...`` (TOML string or bare word), else codex's default."""
    model = "gpt-5"
    for i, arg in enumerate(argv):
        item = argv[i + 1] if arg == "-c" and i + 1 < len(argv) else ""
        key, _, value = item.partition("=")
        if key.strip() != "model":
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            try:
                value = str(json.loads(value))
            except ValueError:
                value = value[1:-1]
        if value:
            model = value
    return model


def last_user_text(prompt: str) -> str:
    """The last ``[user]`` block of the flattened conversation, whitespace collapsed.

    The proxy flattens messages into ``[role] text`` blocks joined by newlines; a message can
    span several lines, so continuation lines belong to the block above them. A prompt without
    role tags counts as a single user message.
    """
    blocks: list[tuple[str, list[str]]] = []
    for line in prompt.split("\n"):
        end = line.find("]") if line.startswith("[") else -1
        role = line[1:end] if end > 0 else ""
        if role in ROLES and line[end + 1 : end + 2] in ("", " "):
            blocks.append((role, [line[end + 2 :]]))
        elif blocks:
            blocks[-1][1].append(line)
        else:
            blocks.append(("user", [line]))
    chosen = [lines for role, lines in blocks if role == "user"]
    if not chosen and blocks:
        chosen = [blocks[-1][1]]
    return " ".join(" ".join(chosen[-1]).split()) if chosen else ""


def compose_answer(said: str) -> str:
    """The canned reply to what the user said (already whitespace-collapsed), in both modes."""
    if not said:
        return (
            "Hello from the quartproxy demo backend! Your message was empty, so there is nothing"
            " to echo back."
        )
    if len(said) > SNIPPET_MAX:
        said = said[: SNIPPET_MAX - 3].rstrip() + "..."
    return (
        f"Hello from the quartproxy demo backend! You said: \u201c{said}\u201d. This is a canned"
        " reply; install the Codex CLI and start without --demo for real answers."
    )


def split_words(text: str) -> list[str]:
    """Word-sized pieces whose concatenation is exactly ``text`` (the space leads each word)."""
    head, *rest = text.split(" ")
    return [head] + [" " + word for word in rest]


def usage(prompt: str, answer: str) -> dict[str, int]:
    given = math.ceil(len(prompt) / 4)
    produced = math.ceil(len(answer) / 4)
    return {
        "input_tokens": given,
        "cached_input_tokens": 0,
        "output_tokens": produced,
        "reasoning_output_tokens": 0,
        "total_tokens": given + produced,
    }


def interrupt_pending(stdin: StdinLines) -> bool:
    """Drain what has arrived mid-turn; like codex 0.42, a second user_input is dropped."""
    while True:
        line = stdin.next_line(block=False)
        if line is None:
            return False
        sub = parse_submission(line)
        if sub is None:
            continue
        op = sub["op"]
        assert isinstance(op, dict)
        if op["type"] == "interrupt":
            return True
        if op["type"] == "user_input":
            log("WARN", "a turn is already running; input dropped")


def run_turn(sub_id: str, prompt: str, stdin: StdinLines) -> None:
    emit(sub_id, {"type": "task_started", "model_context_window": CONTEXT_WINDOW})
    emit(sub_id, {"type": "token_count", "info": None, "rate_limits": NO_RATE_LIMITS})
    answer = compose_answer(last_user_text(prompt))
    for i, piece in enumerate(split_words(answer)):
        if i:
            time.sleep(DELTA_PAUSE_S)
        if interrupt_pending(stdin):
            emit(sub_id, {"type": "turn_aborted", "reason": "interrupted"})
            return
        emit(sub_id, {"type": "agent_message_delta", "delta": piece})
    emit(sub_id, {"type": "agent_message", "message": answer})
    counted = usage(prompt, answer)
    info = {
        "total_token_usage": counted,
        "last_token_usage": dict(counted),
        "model_context_window": CONTEXT_WINDOW,
    }
    emit(sub_id, {"type": "token_count", "info": info, "rate_limits": NO_RATE_LIMITS})
    emit(sub_id, {"type": "task_complete", "last_agent_message": answer})


def prompt_of(op: dict[str, object]) -> str:
    items = op.get("items")
    texts = [
        str(item.get("text", ""))
        for item in (items if isinstance(items, list) else [])
        if isinstance(item, dict) and item.get("type") == "text"
    ]
    return "\n".join(texts)


def run_proto(argv: list[str]) -> None:
    """``codex proto``: one turn at a time on one long-lived stdin/stdout pair."""
    stdin = StdinLines()

    def on_sigint(_signum: int, _frame: object) -> None:
        global _quiet
        _quiet = True
        if stdin.eof:
            os._exit(0)

    # Default SIGTERM even if the parent ignored it: the proxy relies on it to end us.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, on_sigint)
    model = model_from_argv(argv)
    session_id = new_id()
    emit(
        "",
        {
            "type": "session_configured",
            "session_id": session_id,
            "model": model,
            "history_log_id": 0,
            "history_entry_count": 0,
        },
    )
    log("INFO", f"demo backend started (pid {os.getpid()}), no Codex CLI involved")
    log("INFO", f"model {model}; answers are canned and reflect the last user message")

    while True:
        line = stdin.next_line(block=True)
        if line is None:
            break
        sub = parse_submission(line)
        if sub is None:
            continue
        op = sub["op"]
        assert isinstance(op, dict)
        if op["type"] == "user_input":
            run_turn(str(sub["id"]), prompt_of(op), stdin)

    log("INFO", "Submission queue closed")
    # Like codex: stay until signalled. After a SIGINT, stdin EOF is the cue to leave.
    while True:
        if _quiet:
            os._exit(0)
        signal.pause()


# ------------------------------------------------------------------------------ app-server mode

VERSION = "0.140.0-demo"  # full app-server protocol, but below function calling (0.169)
INVALID_REQUEST = -32600
MESSAGE_ROLES = ("user", "assistant", "developer")


class RpcError(Exception):
    """A request codex would refuse: answered with a JSON-RPC error, the process goes on."""


def now_ms() -> int:
    return int(time.time() * 1000)


def token_usage(input_tokens: int, output_tokens: int) -> dict[str, int]:
    return {
        "totalTokens": input_tokens + output_tokens,
        "inputTokens": input_tokens,
        "cachedInputTokens": 0,
        "outputTokens": output_tokens,
        "reasoningOutputTokens": 0,
    }


def said_in(texts: list[str]) -> str:
    return " ".join(" ".join(texts).split())


def item_texts(item: dict[str, object]) -> tuple[str | None, list[str]]:
    """(role, texts) of an injected Responses item; tool items count as ``tool`` text."""
    kind = item.get("type")
    if kind == "message" and item.get("role") in MESSAGE_ROLES:
        content = item.get("content")
        parts = content if isinstance(content, list) else [{"text": content}]
        texts = [str(p.get("text", "")) for p in parts if isinstance(p, dict)]
        return str(item["role"]), texts
    if kind == "function_call":
        return "tool", [str(item.get("arguments", ""))]
    if kind == "function_call_output":
        return "tool", [str(item.get("output", ""))]
    return None, []  # codex drops other items (and system messages) silently


class DemoThread:
    """One conversation: what the turn may quote, its size for the estimate, its usage."""

    def __init__(self, model: str, cwd: str, instructions: str, originator: str) -> None:
        self.id = new_id()
        self.model = model
        self.cwd = cwd
        self.created = int(time.time())
        self.originator = originator
        self.history: list[tuple[str, str]] = [("developer", instructions)] if instructions else []
        self.total = (0, 0)  # cumulative (input, output) tokens
        self.turn: DemoTurn | None = None

    def obj(self) -> dict[str, object]:
        # A subset of codex's thread object; the demo keeps no rollout, hence no path.
        return {
            "id": self.id, "sessionId": self.id, "preview": "", "ephemeral": False,
            "modelProvider": "demo", "model": self.model, "createdAt": self.created,
            "updatedAt": self.created, "status": {"type": "idle"}, "path": None,
            "cwd": self.cwd, "cliVersion": VERSION, "originator": self.originator,
            "source": "vscode", "turns": [],
        }


class DemoTurn:
    """One turn: the canned answer cut into words, sent one per step, ``DELTA_PAUSE_S`` apart."""

    def __init__(self, thread: DemoThread, texts: list[str]) -> None:
        self.id = new_id()
        self.thread = thread
        self.texts = texts
        self.started = time.time()
        # What the user said: this turn's input; else (input [] after injected history) the
        # newest injected user message; else, as the proto mode does, the newest text at all.
        said = said_in(texts)
        users = [text for role, text in thread.history if role == "user"]
        for candidates in (users, [text for _role, text in thread.history]):
            if not said and candidates:
                said = " ".join(candidates[-1].split())
        self.answer = compose_answer(said)
        self.pieces = split_words(self.answer)
        size = sum(len(text) for _role, text in thread.history) + len("\n".join(texts))
        self.input_tokens = math.ceil(size / 4)
        self.sent = 0
        self.due = time.monotonic()
        self.item_id = f"msg_{new_id()}"
        self.item_started = 0

    def obj(self, status: str = "inProgress", items: list[dict[str, object]] | None = None,
            started: bool = False) -> dict[str, object]:
        done = status != "inProgress"
        now = time.time()
        return {
            "id": self.id, "rootTurnId": self.id, "items": items or [],
            "itemsView": "summary" if status == "completed" else "notLoaded",
            "status": status, "error": None,
            "startedAt": int(self.started) if started or done else None,
            "completedAt": int(now) if done else None,
            "durationMs": int((now - self.started) * 1000) if done else None,
        }

    def agent_item(self, text: str, done: bool) -> dict[str, object]:
        return {
            "type": "agentMessage", "moderation": None, "id": self.item_id, "text": text,
            "phase": None, "memoryCitation": None, "delivery": None, "questions": None,
            "startedAtMs": self.item_started, "completedAtMs": now_ms() if done else None,
        }


class AppServer:
    """The JSON-RPC connection: handshake, threads, and the turns that are streaming."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.initialized = False
        self.client_name = "codex"
        self.opt_out: set[str] = set()
        self.threads: dict[str, DemoThread] = {}
        self.running: list[DemoTurn] = []
        self.handlers: dict[str, Callable[[object, dict[str, object]], None]] = {
            "thread/start": self.thread_start,
            "thread/inject_items": self.inject_items,
            "turn/start": self.turn_start,
            "turn/interrupt": self.turn_interrupt,
            "thread/delete": self.thread_delete,
            "thread/archive": self.thread_archive,
            "thread/loaded/list": self.loaded_list,
        }

    # -- output

    @staticmethod
    def send(obj: dict[str, object]) -> None:
        write_line(json.dumps(obj, ensure_ascii=False, separators=(",", ":")))

    def notify(self, method: str, params: dict[str, object]) -> None:
        if method not in self.opt_out:
            self.send({"method": method, "params": params, "emittedAtMs": now_ms()})

    def respond(self, req_id: object, result: object) -> None:
        self.send({"id": req_id, "result": result})

    # -- input

    def handle_line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").strip()
        if not text:
            return
        try:
            msg = json.loads(text)
        except ValueError as exc:
            log("ERROR", f"Failed to deserialize JSONRPCMessage: {exc}")
            return
        method = msg.get("method") if isinstance(msg, dict) else None
        if not isinstance(method, str):
            if not (isinstance(msg, dict) and "id" in msg and ("result" in msg or "error" in msg)):
                log("ERROR", "Failed to deserialize JSONRPCMessage: not a JSON-RPC message")
            return  # an answer to a server request: the demo never sends any
        if "id" not in msg:
            return  # `initialized` and other notifications need no answer
        req_id, params = msg["id"], msg.get("params")
        try:
            if not isinstance(params, dict):
                if params is not None:
                    raise RpcError("Invalid request: params must be an object")
                params = {}
            if method == "initialize":
                self.initialize(req_id, params)
                return
            if not self.initialized:
                raise RpcError("Not initialized")
            handler = self.handlers.get(method)
            if handler is None:
                known = ", ".join(f"`{name}`" for name in ("initialize", *self.handlers))
                raise RpcError(f"Invalid request: unknown variant `{method}`, expected one of "
                               f"{known}")
            handler(req_id, params)
        except RpcError as exc:
            self.send({"error": {"code": INVALID_REQUEST, "message": str(exc)}, "id": req_id})

    def thread_of(self, params: dict[str, object]) -> DemoThread:
        thread_id = params.get("threadId")
        if not isinstance(thread_id, str):
            raise RpcError("Invalid request: missing field `threadId`")
        thread = self.threads.get(thread_id)
        if thread is None:
            raise RpcError(f"thread not found: {thread_id}")
        return thread

    # -- methods

    def initialize(self, req_id: object, params: dict[str, object]) -> None:
        if self.initialized:
            raise RpcError("Already initialized")
        info = params.get("clientInfo")
        caps = params.get("capabilities")
        name = info.get("name") if isinstance(info, dict) else None
        self.client_name = name if isinstance(name, str) and name else "codex"
        opt_out = caps.get("optOutNotificationMethods") if isinstance(caps, dict) else None
        if isinstance(opt_out, list):
            self.opt_out = {method for method in opt_out if isinstance(method, str)}
        self.initialized = True
        self.respond(req_id, {
            "userAgent": f"{self.client_name}/{VERSION} (demo)",
            "codexHome": os.environ.get("CODEX_HOME") or os.path.expanduser("~/.codex"),
            "platformFamily": "unix" if os.name == "posix" else os.name,
            "platformOs": sys.platform,
        })

    def thread_start(self, req_id: object, params: dict[str, object]) -> None:
        if params.get("dynamicTools"):
            raise RpcError("the demo backend has no dynamic tools (function calling)")
        model, cwd = params.get("model"), params.get("cwd")
        instructions = [params.get(key) for key in ("baseInstructions", "developerInstructions")]
        thread = DemoThread(
            model if isinstance(model, str) and model else self.model,
            cwd if isinstance(cwd, str) and cwd else os.getcwd(),
            "\n".join(text for text in instructions if isinstance(text, str)),
            self.client_name,
        )
        self.threads[thread.id] = thread
        policy = params.get("approvalPolicy")
        self.respond(req_id, {
            "thread": thread.obj(), "model": thread.model, "modelProvider": "demo",
            "cwd": thread.cwd, "approvalPolicy": policy if isinstance(policy, str) else "never",
            "reasoningEffort": None,
        })
        self.notify("thread/started", {"thread": thread.obj()})

    def inject_items(self, req_id: object, params: dict[str, object]) -> None:
        thread = self.thread_of(params)
        items = params.get("items")
        if not isinstance(items, list):
            raise RpcError("Invalid request: missing field `items`")
        for item in items:
            role, texts = item_texts(item) if isinstance(item, dict) else (None, [])
            if role is not None:
                thread.history.append((role, "\n".join(texts)))
        self.respond(req_id, {})

    def turn_start(self, req_id: object, params: dict[str, object]) -> None:
        thread = self.thread_of(params)
        items = params.get("input")
        if not isinstance(items, list):
            raise RpcError("Invalid request: missing field `input`")
        if thread.turn is not None:
            raise RpcError("a turn is already running on this thread (the demo does not steer)")
        texts = [str(i.get("text", "")) for i in items
                 if isinstance(i, dict) and i.get("type") == "text"]
        turn = DemoTurn(thread, texts)
        thread.turn = turn
        self.respond(req_id, {"turn": turn.obj()})
        self.notify("thread/status/changed",
                    {"threadId": thread.id, "status": {"type": "active", "activeFlags": []}})
        self.notify("turn/started", {"threadId": thread.id, "turn": turn.obj(started=True)})
        if texts:
            started = now_ms()
            user = {"type": "userMessage", "id": new_id(), "clientId": None,
                    "content": [{"type": "text", "text": text, "text_elements": []}
                                for text in texts],
                    "startedAtMs": started, "completedAtMs": None}
            where = {"threadId": thread.id, "turnId": turn.id}
            self.notify("item/started", {"item": user, **where, "startedAtMs": started})
            done = now_ms()
            self.notify("item/completed", {"item": {**user, "completedAtMs": done}, **where,
                                           "contentTokenCount": None, "completedAtMs": done})
        self.running.append(turn)

    def turn_interrupt(self, req_id: object, params: dict[str, object]) -> None:
        thread = self.thread_of(params)
        turn, wanted = thread.turn, params.get("turnId")
        # turnId may be left out (codex insists on it; the proxy never interrupts).
        if turn is None or (wanted is not None and wanted != turn.id):
            raise RpcError("no active turn to interrupt")
        self.respond(req_id, {})
        self.end_turn(turn, "interrupted")

    def thread_delete(self, req_id: object, params: dict[str, object]) -> None:
        self.unload(req_id, self.thread_of(params), "thread/deleted")

    def thread_archive(self, req_id: object, params: dict[str, object]) -> None:
        self.unload(req_id, self.thread_of(params), "thread/archived")

    def unload(self, req_id: object, thread: DemoThread, closing: str) -> None:
        running = thread.turn is not None
        if thread.turn is not None:
            self.end_turn(thread.turn, "interrupted")
        del self.threads[thread.id]
        times = 2 if running or closing == "thread/archived" else 1
        for _ in range(times):
            self.notify("thread/status/changed",
                        {"threadId": thread.id, "status": {"type": "notLoaded"}})
        self.respond(req_id, {})
        self.notify(closing, {"threadId": thread.id})

    def loaded_list(self, req_id: object, params: dict[str, object]) -> None:
        self.respond(req_id, {"data": list(self.threads), "nextCursor": None})

    # -- turns

    def end_turn(self, turn: DemoTurn, status: str,
                 items: list[dict[str, object]] | None = None) -> None:
        self.running.remove(turn)
        turn.thread.turn = None
        thread_id = turn.thread.id
        self.notify("thread/status/changed", {"threadId": thread_id, "status": {"type": "idle"}})
        self.notify("turn/completed", {"threadId": thread_id, "turn": turn.obj(status, items)})

    def step(self, turn: DemoTurn) -> None:
        """Send the turn's next word; after the last one, the message, usage and the end."""
        where = {"threadId": turn.thread.id, "turnId": turn.id}
        if turn.sent == 0:
            turn.item_started = now_ms()
            self.notify("item/started", {"item": turn.agent_item("", False), **where,
                                         "startedAtMs": turn.item_started})
        self.notify("item/agentMessage/delta",
                    {**where, "itemId": turn.item_id, "delta": turn.pieces[turn.sent]})
        turn.sent += 1
        if turn.sent < len(turn.pieces):
            turn.due = time.monotonic() + DELTA_PAUSE_S
            return
        item = turn.agent_item(turn.answer, True)
        self.notify("item/completed", {"item": item, **where, "contentTokenCount": None,
                                       "completedAtMs": item["completedAtMs"]})
        last = (turn.input_tokens, math.ceil(len(turn.answer) / 4))
        total = turn.thread.total = (turn.thread.total[0] + last[0], turn.thread.total[1] + last[1])
        self.notify("thread/tokenUsage/updated", {**where, "tokenUsage": {
            "total": token_usage(*total), "last": token_usage(*last),
            "modelContextWindow": CONTEXT_WINDOW}})
        self.end_turn(turn, "completed", [item])

    def next_due(self) -> float | None:
        return min((turn.due for turn in self.running), default=None)

    def run_due(self) -> None:
        now = time.monotonic()
        for turn in [turn for turn in self.running if turn.due <= now]:
            self.step(turn)


def run_app_server(argv: list[str]) -> None:
    """``codex app-server``: JSON-RPC over stdio, many threads, turns streaming side by side.

    One thread of control: ``select`` waits for stdin or the next word that is due. Every
    request of one read is handled before any turn streams on, and stdin EOF ends the process.
    """
    import select  # here, not at the top: the proto mode's start-up does not need it

    signal.signal(signal.SIGTERM, lambda _signum, _frame: os._exit(0))
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    server = AppServer(model_from_argv(argv))
    log("INFO", f"demo app-server started (pid {os.getpid()}), no Codex CLI involved")
    buf = b""
    while True:
        due = server.next_due()
        timeout = None if due is None else max(0.0, due - time.monotonic())
        readable, _, _ = select.select([0], [], [], timeout)
        if readable:
            try:
                chunk = os.read(0, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            *lines, buf = (buf + chunk).split(b"\n")
            for line in lines:
                server.handle_line(line)
        server.run_due()
    server.handle_line(buf)
    log("INFO", "stdin closed: exiting")


def usage_error(message: str) -> None:
    sys.stderr.write(f"error: {message}\n\nUsage: demo_backend.py [proto|app-server] "
                     "[-c key=value]...\n       demo_backend.py --version\n")
    sys.exit(2)


def main(argv: list[str]) -> None:
    if argv[:1] in (["--version"], ["-V"]):
        print(f"codex-cli {VERSION}", flush=True)
        return
    positional = [arg for i, arg in enumerate(argv)
                  if not arg.startswith("-") and (i == 0 or argv[i - 1] != "-c")]
    command = positional[0] if positional else None
    if command == "proto":
        run_proto(argv)
    elif command == "app-server":
        run_app_server(argv)
    else:
        usage_error(f"unrecognized subcommand '{command}'" if command else
                    "a subcommand is required")

if __name__ == "__main__":
    main(sys.argv[1:])

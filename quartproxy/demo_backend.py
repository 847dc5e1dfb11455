"""A tiny ``codex proto`` look-alike that lets ``quartproxy --demo`` work with no Codex CLI.

The proxy starts it by path (``<python> demo_backend.py proto -c key=value ...``), exactly as it
would start codex, so every part of the proxy's child handling is exercised for real. That is
why it copies codex 0.42's observable behaviour rather than just answering: the first line is
``session_configured`` printed before stdin is read; events use the ``{"id", "msg"}`` envelope;
a turn reports ``token_count`` with ``info: null`` at its start and nested usage at its end; an
``interrupt`` op yields ``turn_aborted``; and the process neither exits after ``task_complete``
nor on stdin EOF, only on SIGTERM (or, as with codex, on stdin EOF after a SIGINT).

It must not import ``quartproxy`` (or anything outside a handful of standard modules): it runs
once per request and start-up time is part of every response's latency.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time

CONTEXT_WINDOW = 272000
DELTA_PAUSE_S = 0.01
SNIPPET_MAX = 120
ROLES = ("system", "developer", "user", "assistant", "tool")
NO_RATE_LIMITS: dict[str, object] = {"primary": None, "secondary": None}

_quiet = False  # set by SIGINT: codex stops printing and waits for stdin to close


def emit(sub_id: str, msg: dict[str, object]) -> None:
    """Write one event line and flush it, so the proxy sees each delta as soon as it exists."""
    if _quiet:
        return
    line = json.dumps({"id": sub_id, "msg": msg}, ensure_ascii=False, separators=(",", ":"))
    try:
        sys.stdout.buffer.write(line.encode("utf-8") + b"\n")
        sys.stdout.buffer.flush()
    except (BrokenPipeError, ValueError):
        # Nobody can read us any more; lingering would only leak a process.
        os._exit(1)


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


def compose_answer(prompt: str) -> str:
    said = last_user_text(prompt)
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
    answer = compose_answer(prompt)
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


def main(argv: list[str]) -> None:
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
    raw_id = os.urandom(16).hex()
    session_id = "-".join((raw_id[:8], raw_id[8:12], raw_id[12:16], raw_id[16:20], raw_id[20:]))
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


if __name__ == "__main__":
    main(sys.argv[1:])

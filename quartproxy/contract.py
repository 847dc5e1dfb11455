"""Sans-io checker for the OpenAI wire contract this proxy promises.

Feed it the raw bytes of a response body (or an already-decoded JSON object) and it returns
*every* :class:`Violation` it finds, each tagged with the index of the SSE frame it concerns
(``None`` for whole-body problems).  It never stops at the first problem, so one failing test
shows the whole picture.  Nothing here does I/O or imports anything outside the stdlib.

Stream grammar enforced (``text/event-stream``, see spec/lifecycle.md)
----------------------------------------------------------------------
* The body is UTF-8 with ``\\n`` line endings.
* It is a sequence of *event blocks*; each block is one or more non-empty lines and is
  terminated by a blank line (so every block ends in ``\\n\\n``).  A block holds only
  ``data: ...`` lines and ``:`` comment lines (keepalives such as ``: keepalive 15000``).
* No ``id:``, ``retry:`` or ``event:`` fields and no empty ``data:`` lines, because of how
  openai-python's SSE decoder works: it dispatches an event on every blank line once *any*
  field has been seen, and it never forgets the last event id.  After a single ``id:`` line,
  every later blank line becomes an event with ``data == ""``, which the SDK then fails to parse
  as JSON.  A ``retry:``-only or ``event:``-only block, or an empty ``data:`` line, yields the same
  empty event; an ``event:`` name also changes how the SDK routes the frame.
* The payload of every data frame is ``[DONE]`` or a JSON object: a chunk, or an error frame
  ``{"error": {"message", "type", "param", "code"}}``.
* ``data: [DONE]`` appears exactly once and is the very last thing in the body: nothing after
  it, not a comment and not even a blank line.  Older openai-python reads until the connection
  closes, so a body that does not end right after [DONE] hangs or breaks clients, and a body that
  ends without it looks like a truncated answer.

Chunk order (chat): role chunk, content chunks and tool-call chunks, exactly one finish chunk
(``delta == {}``),
exactly one usage chunk (``choices == []``) when ``include_usage``, then ``[DONE]``.  A stream may
instead end with one error frame before ``[DONE]``; nothing but ``[DONE]`` may follow it.  Every
chunk carries the same ``id``, ``created`` and ``model``; with ``include_usage`` every chunk has a
``usage`` key, ``null`` except on the usage chunk.  Legacy ``text_completion`` streams follow the
same rules without the role chunk; their finish chunk carries ``text == ""``.

Tool calls (chat): a chunk whose delta is ``{"tool_calls": [...]}``. The first entry for a call
``index`` opens it and carries ``id``, ``type: "function"`` and ``function.name`` (and string
``function.arguments``); later entries for that index carry only ``function.arguments``
fragments. Indexes open in order 0, 1, 2 ... The finish reason is ``tool_calls`` exactly when at
least one call was streamed, and every streamed call's arguments join to a JSON document. In a
non-stream body the same holds for ``message.tool_calls`` (``content`` may then be ``null``).

Frame indexes count the items returned by :func:`parse_sse` in body order: data frames, comment
lines and stray field lines (``id:`` ...), 0-based.

Responses API (``/v1/responses``) bodies have their own checkers, :func:`check_responses_stream`
and :func:`check_responses_json`, described with them at the end of this module: typed
``event:`` + ``data:`` blocks, no ``[DONE]``, one terminal event.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeGuard

__all__ = [
    "FINISH_REASONS",
    "ContractError",
    "Frame",
    "ResponsesEvent",
    "ResponsesTranscript",
    "Violation",
    "assert_valid",
    "check_chat_json",
    "check_chat_stream",
    "check_completion_json",
    "check_completion_stream",
    "check_error_json",
    "check_responses_json",
    "check_responses_stream",
    "collect_responses_stream",
    "collect_stream_content",
    "parse_responses_sse",
    "parse_sse",
    "response_output_text",
]

DONE: Final = "[DONE]"
FINISH_REASONS: Final = frozenset({"stop", "length", "content_filter", "tool_calls"})
ERROR_KEYS: Final = ("message", "type", "param", "code")
FORBIDDEN_FIELDS: Final = {"id": "id-field", "retry": "retry-field", "event": "event-field"}

FrameKind = Literal["data", "comment", "other"]
ChunkKind = Literal["role", "content", "tool_call", "finish", "usage"]
JsonObject = dict[str, Any]


# --------------------------------------------------------------------------- public types


@dataclass(frozen=True)
class Violation:
    """One broken rule.  ``index`` is the frame index, or None for whole-body problems."""

    index: int | None
    rule: str
    message: str

    def __str__(self) -> str:
        where = "body" if self.index is None else f"frame {self.index}"
        return f"{where}: {self.rule}: {self.message}"


class ContractError(AssertionError):
    """Raised by :func:`assert_valid`; ``str()`` lists every violation, one per line."""

    def __init__(self, violations: Sequence[Violation]) -> None:
        self.violations: tuple[Violation, ...] = tuple(violations)
        super().__init__("\n".join(str(v) for v in self.violations))


@dataclass(frozen=True)
class Frame:
    """One item of an SSE body.

    ``kind`` is "data" (all ``data:`` lines of one block, joined with ``\\n`` as SSE does),
    "comment" (one ``:`` line) or "other" (one line with any other field; ``field`` holds its
    name followed by ``:`` when the line has a colon, e.g. ``"id:"``).  ``json`` is the parsed
    payload of a data frame (None for ``[DONE]`` and for unparsable data, see ``json_error``).
    """

    kind: FrameKind
    raw: str
    json: Any = None
    field: str | None = None
    data: str | None = None
    json_error: str | None = None
    empty_data: bool = False
    block: int = 0
    terminated: bool = True
    end: int = 0

    @property
    def is_done(self) -> bool:
        return self.kind == "data" and self.data == DONE


# --------------------------------------------------------------------------- small helpers


@dataclass
class _Sink:
    """Collects violations; ``index`` is the frame the next ones are about."""

    found: list[Violation] = dataclasses.field(default_factory=list)
    index: int | None = None

    def add(self, rule: str, message: str) -> None:
        self.found.append(Violation(self.index, rule, message))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_count(value: object) -> TypeGuard[int]:
    return _is_int(value) and isinstance(value, int) and value >= 0


def _is_str_or_none(value: object) -> bool:
    return value is None or isinstance(value, str)


def _type_name(value: object) -> str:
    return "null" if value is None else type(value).__name__


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _loads(text: str) -> Any:
    return json.loads(text, parse_constant=_reject_constant)


def _sorted(found: Iterable[Violation]) -> list[Violation]:
    return sorted(found, key=lambda v: -1 if v.index is None else v.index)


# --------------------------------------------------------------------------- SSE parsing


@dataclass(frozen=True)
class _Block:
    lines: list[str]
    terminated: bool
    end: int


def _decode(body: bytes, sink: _Sink) -> str:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        sink.add("not-utf8", f"body is not valid UTF-8 ({exc.reason} at byte {exc.start})")
        text = body.decode("utf-8", errors="replace")
    return text


def _normalize_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _split_blocks(text: str) -> list[_Block]:
    blocks: list[_Block] = []
    current: list[str] = []
    pos = 0
    while pos < len(text):
        newline = text.find("\n", pos)
        if newline < 0:
            current.append(text[pos:])
            break
        line, pos = text[pos:newline], newline + 1
        if line:
            current.append(line)
        elif current:
            blocks.append(_Block(current, True, pos))
            current = []
    if current:
        blocks.append(_Block(current, False, len(text)))
    return blocks


def _data_frame(lines: list[str], values: list[str], block_no: int, block: _Block) -> Frame:
    data = "\n".join(values)
    empty = any(v == "" for v in values)
    parsed: Any = None
    error: str | None = None
    if empty:
        error = "empty data line"
    elif data != DONE:
        try:
            parsed = _loads(data)
        except ValueError as exc:
            error = str(exc)
    return Frame(
        "data", "\n".join(lines), json=parsed, data=data, json_error=error, empty_data=empty,
        block=block_no, terminated=block.terminated, end=block.end,
    )


def _block_frames(block: _Block, block_no: int) -> list[Frame]:
    frames: list[Frame] = []
    data_lines: list[str] = []
    values: list[str] = []
    data_at: int | None = None
    for line in block.lines:
        if line.startswith(":"):
            frames.append(Frame("comment", line, block=block_no,
                                terminated=block.terminated, end=block.end))
            continue
        name, colon, value = line.partition(":")
        if name == "data":
            data_at = len(frames) if data_at is None else data_at
            data_lines.append(line)
            values.append(value[1:] if value.startswith(" ") else value)
            continue
        frames.append(Frame("other", line, field=name + colon, block=block_no,
                            terminated=block.terminated, end=block.end))
    if data_at is not None:
        frames.insert(data_at, _data_frame(data_lines, values, block_no, block))
    return frames


def _parse_text(text: str) -> list[Frame]:
    frames: list[Frame] = []
    for block_no, block in enumerate(_split_blocks(text)):
        frames.extend(_block_frames(block, block_no))
    return frames


def parse_sse(body: bytes) -> list[Frame]:
    """Split an SSE body into frames (lenient: undecodable bytes are replaced, CRs accepted)."""
    text = body.decode("utf-8", errors="replace")
    return _parse_text(_normalize_newlines(text))


# --------------------------------------------------------------------------- stream grammar


def _check_line_fields(frames: Sequence[Frame], sink: _Sink) -> None:
    for i, frame in enumerate(frames):
        sink.index = i
        if frame.kind == "other":
            name = (frame.field or "").rstrip(":")
            rule = FORBIDDEN_FIELDS.get(name, "unknown-field")
            sink.add(rule, f"only data: and ':' comment lines are allowed, got {frame.raw!r}")
        elif frame.empty_data:
            sink.add("empty-data", f"empty data: line in {frame.raw!r}")


def _check_termination(frames: Sequence[Frame], sink: _Sink) -> None:
    last_of_block: dict[int, int] = {f.block: i for i, f in enumerate(frames)}
    for block_no, i in last_of_block.items():
        if not frames[i].terminated:
            sink.index = i
            sink.add("unterminated-frame",
                     f"block {block_no} is not terminated by a blank line (\\n\\n)")


def _check_done(text: str, frames: Sequence[Frame], sink: _Sink) -> None:
    done = [i for i, f in enumerate(frames) if f.is_done]
    if not done:
        sink.index = None
        sink.add("missing-done", "the body ends without data: [DONE]")
        return
    for i in range(done[0] + 1, len(frames)):
        sink.index = i
        if frames[i].is_done:
            sink.add("duplicate-done", "[DONE] sent more than once")
        else:
            sink.add("done-not-last", f"{frames[i].kind} frame after [DONE]: {frames[i].raw!r}")
    last = frames[done[0]]
    if done[0] == len(frames) - 1 and last.end < len(text):
        sink.index = None
        sink.add("done-not-last", f"{len(text) - last.end} trailing byte(s) after [DONE]")


def _check_grammar(body: bytes, sink: _Sink) -> tuple[str, list[Frame]]:
    text = _decode(body, sink)
    if "\r" in text:
        sink.index = None
        sink.add("bad-line-ending", "lines must end with \\n only (found \\r)")
        text = _normalize_newlines(text)
    frames = _parse_text(text)
    _check_line_fields(frames, sink)
    _check_termination(frames, sink)
    _check_done(text, frames, sink)
    return text, frames


# --------------------------------------------------------------------------- shared checks


def _check_usage(usage: object, sink: _Sink, *, prompt: str = "prompt_tokens",
                 completion: str = "completion_tokens", prompt_details: str =
                 "prompt_tokens_details", completion_details: str =
                 "completion_tokens_details") -> None:
    """Counts are integers >= 0 and the total is their sum (never codex's own total); chat and
    legacy name them prompt/completion, the Responses API input/output."""
    if not isinstance(usage, dict):
        sink.add("bad-usage", f"usage must be an object, got {_type_name(usage)}")
        return
    counts: dict[str, int] = {}
    for key in (prompt, completion, "total_tokens"):
        value = usage.get(key)
        if _is_count(value):
            counts[key] = value
        else:
            sink.add("bad-usage", f"usage.{key} must be an integer >= 0, got {value!r}")
    if len(counts) == 3 and counts["total_tokens"] != counts[prompt] + counts[completion]:
        sink.add("usage-total-mismatch",
                 f"total_tokens {counts['total_tokens']} != {prompt} {counts[prompt]} + "
                 f"{completion} {counts[completion]}")
    _check_usage_details(usage, prompt_details, "cached_tokens", sink)
    _check_usage_details(usage, completion_details, "reasoning_tokens", sink)


def _check_usage_details(usage: Mapping[str, Any], key: str, inner: str, sink: _Sink) -> None:
    details = usage.get(key)
    if not isinstance(details, dict):
        sink.add("bad-usage", f"usage.{key} must be an object, got {_type_name(details)}")
    elif not _is_count(details.get(inner)):
        sink.add("bad-usage", f"usage.{key}.{inner} must be an integer >= 0, "
                              f"got {details.get(inner)!r}")


def _check_error_envelope(doc: Mapping[str, Any], sink: _Sink) -> None:
    for key in sorted(set(doc) - {"error"}):
        sink.add("error-extra-key", f"unexpected top-level key {key!r} next to 'error'")
    error = doc.get("error")
    if not isinstance(error, dict):
        sink.add("error-not-object", f"'error' must be an object, got {_type_name(error)}")
        return
    for key in ERROR_KEYS:
        if key not in error:
            sink.add("error-missing-key", f"error.{key} is missing")
    for key in sorted(set(error) - set(ERROR_KEYS)):
        sink.add("error-extra-key", f"unexpected key error.{key}")
    _check_error_values(error, sink)


def _check_error_values(error: Mapping[str, Any], sink: _Sink) -> None:
    for key in ("message", "type"):
        value = error.get(key, "")
        if not isinstance(value, str) or (key in error and not value):
            sink.add("error-bad-value", f"error.{key} must be a non-empty string, got {value!r}")
    for key in ("param", "code"):
        if not _is_str_or_none(error.get(key)):
            sink.add("error-bad-value",
                     f"error.{key} must be a string or null, got {error.get(key)!r}")


def _check_envelope(
    doc: Mapping[str, Any], *, prefix: str, obj: str, model: str | None,
    fingerprint: bool, sink: _Sink,
) -> None:
    ident = doc.get("id")
    if not (isinstance(ident, str) and ident.startswith(prefix) and len(ident) > len(prefix)):
        sink.add("bad-id", f"id must be a string starting with {prefix!r}, got {ident!r}")
    if doc.get("object") != obj:
        sink.add("bad-object", f"object must be {obj!r}, got {doc.get('object')!r}")
    if not _is_count(doc.get("created")):
        sink.add("bad-created", f"created must be an integer >= 0, got {doc.get('created')!r}")
    _check_model(doc.get("model"), model, sink)
    if fingerprint and "system_fingerprint" not in doc:
        sink.add("missing-system-fingerprint", "system_fingerprint key is missing")
    elif not _is_str_or_none(doc.get("system_fingerprint")):
        sink.add("bad-system-fingerprint", "system_fingerprint must be a string or null, got "
                                           f"{doc.get('system_fingerprint')!r}")


def _check_model(value: object, expected: str | None, sink: _Sink) -> None:
    if not isinstance(value, str) or not value:
        sink.add("bad-model", f"model must be a non-empty string, got {value!r}")
    elif expected is not None and value != expected:
        sink.add("model-mismatch", f"model is {value!r}, expected {expected!r}")


def _check_choice_basics(choice: Mapping[str, Any], sink: _Sink, *, final: bool) -> None:
    index = choice.get("index")
    if not (_is_int(index) and index == 0):
        sink.add("bad-choice-index", f"choices[0].index must be 0, got {index!r}")
    if "logprobs" not in choice or choice["logprobs"] is not None:
        sink.add("bad-logprobs", f"logprobs key must be present and null, got "
                                 f"{choice.get('logprobs', '<missing>')!r}")
    reason = choice.get("finish_reason", "<missing>")
    if reason is None and final:
        sink.add("bad-finish-reason", "finish_reason must not be null in a complete response")
    elif reason is not None and reason not in FINISH_REASONS:
        sink.add("bad-finish-reason", f"finish_reason must be null or one of "
                                      f"{sorted(FINISH_REASONS)}, got {reason!r}")


def _check_extra_keys(choice: Mapping[str, Any], allowed: set[str], sink: _Sink) -> None:
    for key in sorted(set(choice) - allowed):
        sink.add("unexpected-choice-key", f"unexpected key choices[0].{key}")


def _check_legacy_shape(choice: Mapping[str, Any], sink: _Sink) -> None:
    chat_keys = sorted({"role", "delta", "message"} & set(choice))
    if chat_keys:
        sink.add("legacy-role", f"text_completion choices carry 'text', not chat keys {chat_keys}")
    legacy = {"index", "text", "logprobs", "finish_reason"}
    _check_extra_keys(choice, legacy | set(chat_keys), sink)
    if not isinstance(choice.get("text"), str):
        sink.add("bad-text", f"choices[0].text must be a string, got {choice.get('text')!r}")


def _first_choice(doc: Mapping[str, Any], sink: _Sink, *, allow_empty: bool) -> object:
    """choices[0], or None when there is none (empty list allowed only for usage chunks)."""
    choices = doc.get("choices")
    if not isinstance(choices, list):
        sink.add("bad-choices", f"choices must be a list, got {_type_name(choices)}")
        return None
    if not choices:
        if not allow_empty:
            sink.add("bad-choices", "choices must hold exactly one choice, got []")
        return None
    if len(choices) > 1:
        sink.add("bad-choices", f"choices must hold exactly one choice, got {len(choices)}")
    if not isinstance(choices[0], dict):
        sink.add("bad-choice", f"choices[0] must be an object, got {_type_name(choices[0])}")
        return None
    return choices[0]


# --------------------------------------------------------------------------- chunk kinds


def _classify_chat(choice: Mapping[str, Any], sink: _Sink) -> ChunkKind | None:
    _check_choice_basics(choice, sink, final=False)
    _check_extra_keys(choice, {"index", "delta", "logprobs", "finish_reason"}, sink)
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        sink.add("bad-delta", f"choices[0].delta must be an object, got {_type_name(delta)}")
        return None
    if choice.get("finish_reason") is not None:
        if delta:
            sink.add("finish-delta-not-empty", f"finish chunk delta must be {{}}, got {delta!r}")
        return "finish"
    if "role" in delta:
        _check_role_delta(delta, sink)
        return "role"
    if "tool_calls" in delta:
        if set(delta) != {"tool_calls"} or not isinstance(delta["tool_calls"], list) or \
                not delta["tool_calls"]:
            sink.add("bad-tool-call", f"tool-call chunk delta must be {{'tool_calls': [...]}}, "
                                      f"got {delta!r}")
        return "tool_call"
    if set(delta) != {"content"} or not isinstance(delta["content"], str):
        sink.add("bad-delta", f"content chunk delta must be {{'content': str}}, got {delta!r}")
    return "content"


def _check_role_delta(delta: Mapping[str, Any], sink: _Sink) -> None:
    if delta.get("role") != "assistant":
        sink.add("bad-role", f"delta.role must be 'assistant', got {delta.get('role')!r}")
    extra = sorted(set(delta) - {"role", "content", "refusal"})
    if extra:
        sink.add("bad-delta", f"unexpected keys in role delta: {extra}")
    if not isinstance(delta.get("content", ""), str) or delta.get("refusal") is not None:
        sink.add("bad-delta", f"role delta content must be a string and refusal null: {delta!r}")


def _classify_completion(choice: Mapping[str, Any], sink: _Sink) -> ChunkKind | None:
    _check_choice_basics(choice, sink, final=False)
    _check_legacy_shape(choice, sink)
    if choice.get("finish_reason") is not None:
        if choice.get("text") not in ("", None):
            sink.add("finish-text-not-empty",
                     f"finish chunk text must be '', got {choice.get('text')!r}")
        return "finish"
    return "content"


# --------------------------------------------------------------------------- stream state


@dataclass(frozen=True)
class _Flavor:
    prefix: str
    obj: str
    needs_role: bool
    fingerprint: bool
    classify: Callable[[Mapping[str, Any], _Sink], ChunkKind | None]


CHAT: Final = _Flavor("chatcmpl-", "chat.completion.chunk", True, True, _classify_chat)
COMPLETION: Final = _Flavor("cmpl-", "text_completion", False, False, _classify_completion)


@dataclass
class _Stream:
    flavor: _Flavor
    include_usage: bool
    model: str | None
    sink: _Sink
    first: Mapping[str, Any] | None = None
    chunks: int = 0
    finish: bool = False
    usage: bool = False
    error: bool = False
    calls: dict[int, list[str]] = dataclasses.field(default_factory=dict)  # index -> arguments


def _check_stable(chunk: Mapping[str, Any], st: _Stream) -> None:
    if st.first is None:
        st.first = chunk
        return
    for key in ("id", "created", "model"):
        if chunk.get(key) != st.first.get(key):
            st.sink.add(f"{key}-changed", f"{key} changed mid-stream: "
                                          f"{st.first.get(key)!r} -> {chunk.get(key)!r}")


def _check_usage_key(chunk: Mapping[str, Any], kind: ChunkKind | None, st: _Stream) -> None:
    usage = chunk.get("usage")
    if kind == "usage":
        if st.include_usage:
            _check_usage(usage, st.sink)
    elif st.include_usage and "usage" not in chunk:
        st.sink.add("missing-usage-key", "with include_usage every chunk needs a usage key")
    elif st.include_usage and usage is not None:
        st.sink.add("usage-not-null", "usage must be null except on the usage chunk")
    elif usage is not None:
        st.sink.add("unexpected-usage", "usage must be absent or null without include_usage")


def _check_role_position(kind: ChunkKind | None, st: _Stream) -> None:
    first = st.chunks == 0
    if kind == "role" and not first:
        st.sink.add("misplaced-role", "the role chunk must be the first chunk, and only once")
    elif kind != "role" and first:
        st.sink.add("missing-role",
                    f"first chunk must be the role chunk, got a {kind or 'malformed'} chunk")


def _advance(kind: ChunkKind | None, st: _Stream) -> None:
    add = st.sink.add
    if st.error:
        add("chunk-after-error", f"{kind or 'malformed'} chunk after an error frame")
    elif st.flavor.needs_role:
        _check_role_position(kind, st)
    if kind in ("content", "tool_call") and (st.finish or st.usage):
        add("content-after-finish", f"{kind} chunk after the finish chunk")
    elif kind == "finish" and st.finish:
        add("duplicate-finish", "more than one finish chunk")
    elif kind == "usage":
        _advance_usage(st)
    st.chunks += 1
    st.finish = st.finish or kind == "finish"


def _advance_usage(st: _Stream) -> None:
    if not st.include_usage:
        st.sink.add("unexpected-usage-chunk", "usage chunk without include_usage")
    elif st.usage:
        st.sink.add("duplicate-usage", "more than one usage chunk")
    elif not st.finish:
        st.sink.add("usage-before-finish", "usage chunk before the finish chunk")
    st.usage = True


def _on_chunk(chunk: Mapping[str, Any], st: _Stream) -> None:
    flavor = st.flavor
    _check_envelope(chunk, prefix=flavor.prefix, obj=flavor.obj, model=st.model,
                    fingerprint=flavor.fingerprint, sink=st.sink)
    _check_stable(chunk, st)
    choice = _first_choice(chunk, st.sink, allow_empty=True)
    kind: ChunkKind | None = None
    if isinstance(choice, dict):
        kind = flavor.classify(choice, st.sink)
    elif isinstance(chunk.get("choices"), list) and not chunk["choices"]:
        kind = "usage"
    _check_usage_key(chunk, kind, st)
    if kind == "tool_call" and isinstance(choice, dict):
        _on_tool_calls(choice["delta"]["tool_calls"], st)
    elif kind == "finish" and isinstance(choice, dict) and not st.finish:
        _check_finish_against_calls(choice.get("finish_reason"), bool(st.calls), st.sink)
    _advance(kind, st)


def _on_tool_calls(entries: Any, st: _Stream) -> None:
    add = st.sink.add
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or not _is_count(entry.get("index")):
            add("bad-tool-call", f"each tool_calls entry needs an integer index: {entry!r}")
            continue
        index = entry["index"]
        function = entry.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("arguments", ""), str):
            add("bad-tool-call", f"tool call {index}: function.arguments must be a string")
            continue
        if index not in st.calls:
            if index != len(st.calls):
                add("tool-call-index", f"tool call index {index} opened out of order "
                                       f"(expected {len(st.calls)})")
            ok = (isinstance(entry.get("id"), str) and entry["id"]
                  and entry.get("type") == "function"
                  and isinstance(function.get("name"), str) and function["name"])
            if not ok:
                add("bad-tool-call", f"the first chunk of tool call {index} needs id, type "
                                     f"'function' and function.name: {entry!r}")
            st.calls[index] = []
        elif set(entry) - {"index", "function"} or set(function) - {"arguments"}:
            add("bad-tool-call", f"a later chunk of tool call {index} carries only "
                                 f"function.arguments: {entry!r}")
        st.calls[index].append(function.get("arguments", ""))


def _check_finish_against_calls(reason: object, has_calls: bool, sink: _Sink) -> None:
    if has_calls and reason != "tool_calls":
        sink.add("finish-without-tool-calls",
                 f"tool calls were made but finish_reason is {reason!r}")
    elif not has_calls and reason == "tool_calls":
        sink.add("tool-calls-finish-without-calls", "finish_reason tool_calls without a call")


def _on_error_frame(doc: Mapping[str, Any], st: _Stream) -> None:
    _check_error_envelope(doc, st.sink)
    if st.error:
        st.sink.add("duplicate-error", "more than one error frame")
    elif st.finish or st.usage:
        st.sink.add("error-after-finish", "error frame after the finish/usage chunk")
    st.error = True


def _on_data(frame: Frame, st: _Stream) -> None:
    if frame.empty_data:
        return  # already reported as empty-data
    if frame.json_error is not None:
        st.sink.add("bad-json", f"data is not JSON ({frame.json_error}): {frame.data!r}")
    elif not isinstance(frame.json, dict):
        st.sink.add("not-object", f"data must be a JSON object, got {_type_name(frame.json)}")
    elif "error" in frame.json:
        _on_error_frame(frame.json, st)
    else:
        _on_chunk(frame.json, st)


def _check_end(st: _Stream, done_index: int | None) -> None:
    st.sink.index = done_index
    if st.error:
        return
    if st.chunks == 0:
        st.sink.add("empty-stream", "no chunk and no error frame before [DONE]")
        return
    if not st.finish:
        st.sink.add("missing-finish", "the stream has no finish chunk")
    for index, parts in st.calls.items():
        try:
            json.loads("".join(parts))
        except ValueError:
            st.sink.add("bad-tool-arguments", f"tool call {index}: the arguments do not join "
                                              "to a JSON document")
    if st.include_usage and not st.usage:
        st.sink.add("missing-usage-chunk", "include_usage was requested but no usage chunk came")


def _check_stream(
    body: bytes, flavor: _Flavor, include_usage: bool, model: str | None
) -> list[Violation]:
    sink = _Sink()
    _, frames = _check_grammar(body, sink)
    st = _Stream(flavor, include_usage, model, sink)
    done_index = next((i for i, f in enumerate(frames) if f.is_done), None)
    for i, frame in enumerate(frames[:done_index]):
        if frame.kind == "data":
            sink.index = i
            _on_data(frame, st)
    _check_end(st, done_index)
    return _sorted(sink.found)


def check_chat_stream(
    body: bytes, *, include_usage: bool, model: str | None = None
) -> list[Violation]:
    """Validate a ``chat.completion.chunk`` SSE body; returns every violation found."""
    return _check_stream(body, CHAT, include_usage, model)


def check_completion_stream(
    body: bytes, *, include_usage: bool, model: str | None = None
) -> list[Violation]:
    """Validate a legacy ``text_completion`` SSE body; returns every violation found."""
    return _check_stream(body, COMPLETION, include_usage, model)


# --------------------------------------------------------------------------- JSON bodies


def _load_object(body: bytes | Mapping[str, Any], sink: _Sink) -> Mapping[str, Any] | None:
    if isinstance(body, Mapping):
        return body
    text = _decode(body, sink)
    try:
        doc = _loads(text)
    except ValueError as exc:
        sink.add("bad-json", f"body is not JSON ({exc})")
        return None
    if not isinstance(doc, dict):
        sink.add("not-object", f"body must be a JSON object, got {_type_name(doc)}")
        return None
    return doc


def _is_error_body(doc: Mapping[str, Any], sink: _Sink) -> bool:
    if "error" in doc and "choices" not in doc:
        sink.add("error-body", f"expected a completion, got an error envelope: {doc['error']!r}")
        return True
    return False


def _check_usage_present(doc: Mapping[str, Any], sink: _Sink) -> None:
    if "usage" not in doc:
        sink.add("missing-usage", "usage is mandatory in a non-stream response")
    else:
        _check_usage(doc["usage"], sink)


def _check_message(message: object, reason: object, sink: _Sink) -> None:
    if not isinstance(message, dict):
        sink.add("bad-message", f"choices[0].message must be an object, got "
                                f"{_type_name(message)}")
        return
    if message.get("role") != "assistant":
        sink.add("bad-role", f"message.role must be 'assistant', got {message.get('role')!r}")
    calls = message.get("tool_calls")
    content = message.get("content")
    if not isinstance(content, str) and not (calls and content is None):
        sink.add("bad-message", f"message.content must be a string, got {content!r}")
    if "refusal" not in message or message["refusal"] is not None:
        sink.add("bad-message", "message.refusal must be present and null")
    extra = sorted(set(message) - {"role", "content", "refusal", "tool_calls"})
    if extra:
        sink.add("bad-message", f"unexpected keys in message: {extra}")
    if "tool_calls" in message:
        _check_json_calls(calls, sink)
    _check_finish_against_calls(reason, bool(calls), sink)


def _check_json_calls(calls: object, sink: _Sink) -> None:
    if not isinstance(calls, list) or not calls:
        sink.add("bad-tool-call", f"message.tool_calls must be a non-empty array: {calls!r}")
        return
    for index, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        ok = (isinstance(call, dict) and set(call) == {"id", "type", "function"}
              and isinstance(call["id"], str) and call["id"] and call["type"] == "function"
              and isinstance(function, dict) and set(function) == {"name", "arguments"}
              and isinstance(function["name"], str) and isinstance(function["arguments"], str))
        if not ok:
            sink.add("bad-tool-call", f"message.tool_calls[{index}] must be {{id, type: "
                                      f"'function', function: {{name, arguments}}}}: {call!r}")
            continue
        try:
            json.loads(function["arguments"])  # type: ignore[index]
        except ValueError:
            sink.add("bad-tool-arguments", f"message.tool_calls[{index}].function.arguments "
                                           "is not a JSON document")


def check_chat_json(
    body: bytes | Mapping[str, Any], *, model: str | None = None
) -> list[Violation]:
    """Validate a non-stream ``chat.completion`` body."""
    sink = _Sink()
    doc = _load_object(body, sink)
    if doc is None or _is_error_body(doc, sink):
        return sink.found
    _check_envelope(doc, prefix="chatcmpl-", obj="chat.completion", model=model,
                    fingerprint=True, sink=sink)
    choice = _first_choice(doc, sink, allow_empty=False)
    if isinstance(choice, dict):
        _check_choice_basics(choice, sink, final=True)
        _check_extra_keys(choice, {"index", "message", "logprobs", "finish_reason"}, sink)
        _check_message(choice.get("message"), choice.get("finish_reason"), sink)
    _check_usage_present(doc, sink)
    return sink.found


def check_completion_json(
    body: bytes | Mapping[str, Any], *, model: str | None = None
) -> list[Violation]:
    """Validate a non-stream legacy ``text_completion`` body."""
    sink = _Sink()
    doc = _load_object(body, sink)
    if doc is None or _is_error_body(doc, sink):
        return sink.found
    _check_envelope(doc, prefix="cmpl-", obj="text_completion", model=model,
                    fingerprint=False, sink=sink)
    choice = _first_choice(doc, sink, allow_empty=False)
    if isinstance(choice, dict):
        _check_choice_basics(choice, sink, final=True)
        _check_legacy_shape(choice, sink)
    _check_usage_present(doc, sink)
    return sink.found


def check_error_json(body: bytes | Mapping[str, Any]) -> list[Violation]:
    """Validate an error envelope: exactly ``{"error": {message, type, param, code}}``."""
    sink = _Sink()
    doc = _load_object(body, sink)
    if doc is not None:
        _check_error_envelope(doc, sink)
    return sink.found


def assert_valid(violations: Sequence[Violation]) -> None:
    """Raise :class:`ContractError` listing all violations, if there are any."""
    if violations:
        raise ContractError(violations)


# --------------------------------------------------------------------------- test helper


def _choice_text(choice: Mapping[str, Any]) -> str:
    delta = choice.get("delta")
    if isinstance(delta, dict) and isinstance(delta.get("content"), str):
        return str(delta["content"])
    text = choice.get("text")
    return text if isinstance(text, str) else ""


def collect_stream_content(body: bytes) -> tuple[str, str | None, JsonObject | None]:
    """(joined content/text, last finish_reason, usage object or None) of a chat/legacy stream."""
    parts: list[str] = []
    reason: str | None = None
    usage: JsonObject | None = None
    for frame in parse_sse(body):
        if frame.is_done:
            break
        doc = frame.json
        if not isinstance(doc, dict):
            continue
        if isinstance(doc.get("usage"), dict):
            usage = doc["usage"]
        choices = doc.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                parts.append(_choice_text(choice))
                found = choice.get("finish_reason")
                reason = found if isinstance(found, str) else reason
    return "".join(parts), reason, usage


# =========================================================================== Responses API
#
# ``/v1/responses`` streams follow another grammar (see :func:`check_responses_stream`): every
# event block is ``event: <type>`` + one ``data: <json>`` line whose ``type`` is that name, with
# a strictly increasing ``sequence_number``; ``:`` comment blocks (keepalives) may come between
# events; there is no ``[DONE]`` — the stream ends right after its one terminal event
# (``response.completed``/``response.incomplete``/``response.failed``). For these streams a
# violation's index is the *block* index: one event or one comment block per index.

RESPONSE_STATUSES: Final = frozenset({"completed", "incomplete", "failed", "in_progress"})
ITEM_STATUSES: Final = frozenset({"in_progress", "completed", "incomplete"})
TERMINAL_EVENTS: Final = {
    "response.completed": "completed",
    "response.incomplete": "incomplete",
    "response.failed": "failed",
}
LIFECYCLE_EVENTS: Final = frozenset({"response.created", "response.in_progress"})
RESPONSE_REQUIRED_KEYS: Final = ("parallel_tool_calls", "tool_choice", "tools", "output")


@dataclass(frozen=True)
class ResponsesEvent:
    """One block of a Responses stream: an event (``name`` + ``data``) or comments only."""

    index: int
    name: str | None
    data: str | None
    json: Any
    comments: tuple[str, ...]
    stray: tuple[str, ...]  # lines that are neither event:, data: nor comments
    data_lines: int
    event_lines: int
    terminated: bool
    end: int
    json_error: str | None = None


def _responses_block(index: int, block: _Block) -> ResponsesEvent:
    name: str | None = None
    datas: list[str] = []
    comments: list[str] = []
    stray: list[str] = []
    events = 0
    for line in block.lines:
        if line.startswith(":"):
            comments.append(line)
            continue
        field_name, colon, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field_name == "event" and colon:
            events += 1
            name = value
        elif field_name == "data" and colon:
            datas.append(value)
        else:
            stray.append(line)
    data = "\n".join(datas) if datas else None
    parsed: Any = None
    error: str | None = None
    if data is not None and data != DONE:
        try:
            parsed = _loads(data)
        except ValueError as exc:
            error = str(exc)
    return ResponsesEvent(index, name, data, parsed, tuple(comments), tuple(stray), len(datas),
                          events, block.terminated, block.end, error)


def parse_responses_sse(body: bytes) -> list[ResponsesEvent]:
    """Split a Responses SSE body into blocks (lenient, like :func:`parse_sse`)."""
    text = _normalize_newlines(body.decode("utf-8", errors="replace"))
    return [_responses_block(i, block) for i, block in enumerate(_split_blocks(text))]


# --------------------------------------------------------------------------- response objects


def _check_responses_usage(usage: object, sink: _Sink) -> None:
    _check_usage(usage, sink, prompt="input_tokens", completion="output_tokens",
                 prompt_details="input_tokens_details",
                 completion_details="output_tokens_details")


def _item_text(item: Mapping[str, Any]) -> str | None:
    """The concatenated output_text of a message item (None when it is not a message)."""
    if item.get("type") != "message" or not isinstance(item.get("content"), list):
        return None
    return "".join(part.get("text", "") for part in item["content"]
                   if isinstance(part, dict) and part.get("type") == "output_text"
                   and isinstance(part.get("text"), str))


def _check_message_item(item: Mapping[str, Any], where: str, sink: _Sink) -> None:
    if item.get("role") != "assistant":
        sink.add("bad-item", f"{where}.role must be 'assistant', got {item.get('role')!r}")
    content = item.get("content")
    if not isinstance(content, list):
        sink.add("bad-item", f"{where}.content must be a list, got {_type_name(content)}")
        return
    for number, part in enumerate(content):
        here = f"{where}.content[{number}]"
        if not isinstance(part, dict):
            sink.add("bad-item", f"{here} must be an object")
        elif part.get("type") == "output_text":
            if not isinstance(part.get("text"), str):
                sink.add("bad-item", f"{here}.text must be a string, got {part.get('text')!r}")
            if not isinstance(part.get("annotations"), list):
                sink.add("bad-item", f"{here}.annotations must be a list")
        elif part.get("type") != "refusal":
            sink.add("bad-item", f"{here}.type must be output_text or refusal, got "
                                 f"{part.get('type')!r}")


def _check_reasoning_item(item: Mapping[str, Any], where: str, sink: _Sink) -> None:
    summary = item.get("summary")
    if not isinstance(summary, list):
        sink.add("bad-item", f"{where}.summary must be a list, got {_type_name(summary)}")
        return
    for number, part in enumerate(summary):
        if not (isinstance(part, dict) and part.get("type") == "summary_text"
                and isinstance(part.get("text"), str)):
            sink.add("bad-item", f"{where}.summary[{number}] must be a summary_text part, "
                                 f"got {part!r}")


def _check_item(item: object, where: str, sink: _Sink, *, final: bool) -> str | None:
    """Check one output item; its id when it has a usable one."""
    if not isinstance(item, dict):
        sink.add("bad-item", f"{where} must be an object, got {_type_name(item)}")
        return None
    kind = item.get("type")
    ident = item.get("id")
    if not isinstance(ident, str) or not ident:
        sink.add("bad-item", f"{where}.id must be a non-empty string, got {ident!r}")
        ident = None
    status = item.get("status")
    if kind == "message":
        _check_message_item(item, where, sink)
    elif kind == "reasoning":
        _check_reasoning_item(item, where, sink)
        return ident
    elif kind == "function_call":
        for key in ("call_id", "name", "arguments"):
            if not isinstance(item.get(key), str) or (key != "arguments" and not item[key]):
                sink.add("bad-item", f"{where}.{key} must be a string, got {item.get(key)!r}")
    else:
        sink.add("bad-item-type", f"{where}.type must be message, reasoning or function_call, "
                                  f"got {kind!r}")
        return ident
    if status not in ITEM_STATUSES:
        sink.add("bad-item", f"{where}.status must be one of {sorted(ITEM_STATUSES)}, got "
                             f"{status!r}")
    elif final and status == "in_progress":
        sink.add("item-status", f"{where} is still in_progress in a final response")
    return ident


def _check_status_fields(doc: Mapping[str, Any], status: object, sink: _Sink) -> None:
    error = doc.get("error")
    details = doc.get("incomplete_details")
    if status == "failed":
        if not (isinstance(error, dict) and isinstance(error.get("message"), str)
                and isinstance(error.get("code"), str)):
            sink.add("status-mismatch", f"a failed response needs error {{code, message}}, "
                                        f"got {error!r}")
    elif error is not None:
        sink.add("status-mismatch", f"error must be null unless the status is failed, got "
                                    f"{error!r}")
    if status == "incomplete":
        if not (isinstance(details, dict) and isinstance(details.get("reason"), str)):
            sink.add("status-mismatch", f"an incomplete response needs incomplete_details."
                                        f"reason, got {details!r}")
    elif details is not None:
        sink.add("status-mismatch", f"incomplete_details must be null unless the status is "
                                    f"incomplete, got {details!r}")


def _check_response_object(
    doc: Mapping[str, Any], *, model: str | None, final: bool, sink: _Sink
) -> None:
    """A ``response`` object; ``final``: the non-stream body or a terminal event's response."""
    ident = doc.get("id")
    if not (isinstance(ident, str) and ident.startswith("resp_") and len(ident) > 5):
        sink.add("bad-id", f"id must be a string starting with 'resp_', got {ident!r}")
    if doc.get("object") != "response":
        sink.add("bad-object", f"object must be 'response', got {doc.get('object')!r}")
    created = doc.get("created_at")
    if not _is_count(created):
        sink.add("bad-created", f"created_at must be an integer >= 0, got {created!r}")
    _check_model(doc.get("model"), model, sink)
    for key in RESPONSE_REQUIRED_KEYS:
        if key not in doc:
            sink.add("missing-key", f"{key} is missing")
    status = doc.get("status")
    if status not in RESPONSE_STATUSES or (final and status == "in_progress"):
        allowed = sorted(RESPONSE_STATUSES - ({"in_progress"} if final else set()))
        sink.add("bad-status", f"status must be one of {allowed}, got {status!r}")
    _check_status_fields(doc, status, sink)
    output = doc.get("output")
    if not isinstance(output, list):
        sink.add("bad-output", f"output must be a list, got {_type_name(output)}")
        output = []
    seen: set[str] = set()
    for number, item in enumerate(output):
        item_id = _check_item(item, f"output[{number}]", sink, final=final)
        if item_id is not None:
            if item_id in seen:
                sink.add("duplicate-item-id", f"output item id {item_id!r} appears twice")
            seen.add(item_id)
        if (final and isinstance(item, dict) and item.get("type") == "message"
                and status in ("completed", "incomplete") and item.get("status") != status):
            sink.add("item-status", f"output[{number}] (a message) says {item.get('status')!r} "
                                    f"in a {status} response")
    if final:
        if "usage" not in doc:
            sink.add("missing-usage", "usage is mandatory in a final response")
        else:
            _check_responses_usage(doc["usage"], sink)
    elif doc.get("usage") is not None:
        sink.add("bad-usage", "usage must be null before the response is final")


def check_responses_json(
    body: bytes | Mapping[str, Any], *, model: str | None = None
) -> list[Violation]:
    """Validate a non-stream ``response`` object (``POST /v1/responses``)."""
    sink = _Sink()
    doc = _load_object(body, sink)
    if doc is None:
        return sink.found
    if "error" in doc and "object" not in doc:
        sink.add("error-body", f"expected a response, got an error envelope: {doc['error']!r}")
        return sink.found
    _check_response_object(doc, model=model, final=True, sink=sink)
    return sink.found


# --------------------------------------------------------------------------- stream state


@dataclass
class _OpenItem:
    index: int
    item_id: str | None
    kind: object
    parts: dict[int, list[str]] = dataclasses.field(default_factory=dict)  # content/summary
    open_parts: set[int] = dataclasses.field(default_factory=set)
    done_parts: dict[int, str] = dataclasses.field(default_factory=dict)
    arguments: list[str] = dataclasses.field(default_factory=list)
    arguments_done: str | None = None


@dataclass
class _RStream:
    sink: _Sink
    model: str | None
    seq: int | None = None
    response_id: object = None
    created: bool = False
    in_progress: bool = False
    terminal: int | None = None
    item: _OpenItem | None = None
    added: int = 0
    ids: set[str] = dataclasses.field(default_factory=set)
    done_items: list[Any] = dataclasses.field(default_factory=list)


def _check_block_grammar(ev: ResponsesEvent, sink: _Sink) -> None:
    if not ev.terminated:
        sink.add("unterminated-frame", "block is not terminated by a blank line (\\n\\n)")
    for line in ev.stray:
        name = line.partition(":")[0]
        rule = {"id": "id-field", "retry": "retry-field"}.get(name, "unknown-field")
        sink.add(rule, f"only event:, data: and ':' comment lines are allowed, got {line!r}")
    if ev.data == DONE:
        sink.add("done-in-responses", "Responses streams end with their terminal event, "
                                      "not data: [DONE]")
        return
    if ev.data is None:
        if ev.event_lines:
            sink.add("missing-data", f"event {ev.name!r} has no data: line")
        return
    if ev.event_lines != 1:
        sink.add("missing-event-field" if not ev.event_lines else "duplicate-event-field",
                 f"an event block needs exactly one event: line, got {ev.event_lines}")
    if ev.data_lines != 1:
        sink.add("multi-line-data", f"the event's JSON must be one data: line, got "
                                    f"{ev.data_lines}")
    if ev.json_error is not None:
        sink.add("bad-json", f"data is not JSON ({ev.json_error}): {ev.data!r}")
    elif not isinstance(ev.json, dict):
        sink.add("not-object", f"data must be a JSON object, got {_type_name(ev.json)}")
    elif ev.json.get("type") != ev.name and ev.event_lines:
        sink.add("event-type-mismatch", f"event: {ev.name!r} but data.type is "
                                        f"{ev.json.get('type')!r}")


def _check_sequence(doc: Mapping[str, Any], st: _RStream) -> None:
    seq = doc.get("sequence_number")
    if not _is_count(seq):
        st.sink.add("bad-sequence-number", f"sequence_number must be an integer >= 0, got "
                                           f"{seq!r}")
        return
    if st.seq is not None and seq <= st.seq:
        st.sink.add("sequence-not-increasing", f"sequence_number {seq} after {st.seq}")
    st.seq = seq


def _on_lifecycle(kind: str, doc: Mapping[str, Any], st: _RStream) -> None:
    response = doc.get("response")
    if not isinstance(response, dict):
        st.sink.add("bad-response", f"{kind} needs a response object")
        return
    if kind == "response.created":
        if st.created:
            st.sink.add("duplicate-created", "more than one response.created")
        st.created = True
        st.response_id = response.get("id")
    elif kind == "response.in_progress":
        if st.in_progress or st.added:
            st.sink.add("misplaced-in-progress", "response.in_progress must come once, before "
                                                 "any output item")
        st.in_progress = True
    if response.get("id") != st.response_id:
        st.sink.add("response-id-changed", f"response id {response.get('id')!r}, stream "
                                           f"started as {st.response_id!r}")
    final = kind in TERMINAL_EVENTS
    _check_response_object(response, model=st.model, final=final, sink=st.sink)
    if not final and response.get("status") not in ("in_progress", "queued"):
        st.sink.add("bad-status", f"{kind} must say in_progress, got {response.get('status')!r}")
    if final:
        _on_terminal(kind, response, st)


def _on_terminal(kind: str, response: Mapping[str, Any], st: _RStream) -> None:
    if st.item is not None:
        st.sink.add("unfinished-item", f"output item {st.item.index} was never done")
    if response.get("status") != TERMINAL_EVENTS[kind]:
        st.sink.add("terminal-status", f"{kind} carries status {response.get('status')!r}")
    if response.get("output") != st.done_items:
        st.sink.add("final-output-mismatch",
                    "the final response's output is not the items the stream sent")


def _item_event(doc: Mapping[str, Any], st: _RStream) -> _OpenItem | None:
    """The open item a content event refers to, or None (reported)."""
    item = st.item
    if item is None:
        st.sink.add("event-outside-item", f"{doc.get('type')} with no open output item")
        return None
    if doc.get("output_index") != item.index or doc.get("item_id") != item.item_id:
        st.sink.add("item-mismatch", f"{doc.get('type')} names item {doc.get('item_id')!r} at "
                                     f"{doc.get('output_index')!r}; the open item is "
                                     f"{item.item_id!r} at {item.index}")
    return item


def _on_item_added(doc: Mapping[str, Any], st: _RStream) -> None:
    raw = doc.get("item")
    _check_item(raw, "item", st.sink, final=False)
    if st.item is not None:
        st.sink.add("item-overlap", f"an item was added while item {st.item.index} is open")
    if doc.get("output_index") != st.added:
        st.sink.add("bad-output-index", f"output_index {doc.get('output_index')!r}, expected "
                                        f"{st.added}")
    item = raw if isinstance(raw, dict) else {}
    item_id = item.get("id")
    if isinstance(item_id, str):
        if item_id in st.ids:
            st.sink.add("duplicate-item-id", f"item id {item_id!r} added twice")
        st.ids.add(item_id)
    if item.get("status", "in_progress") != "in_progress":
        st.sink.add("item-status", f"an added item must be in_progress, got "
                                   f"{item.get('status')!r}")
    st.item = _OpenItem(st.added, item_id if isinstance(item_id, str) else None,
                        item.get("type"))
    st.added += 1


def _part_index(doc: Mapping[str, Any], key: str, item: _OpenItem, st: _RStream, *,
                adding: bool) -> int | None:
    number = doc.get(key)
    if not _is_int(number):
        st.sink.add("bad-content-index", f"{key} must be an integer, got {number!r}")
        return None
    assert isinstance(number, int)
    if adding:
        if number != len(item.parts):
            st.sink.add("bad-content-index", f"{key} {number}, expected {len(item.parts)}")
        item.parts[number] = []
        item.open_parts.add(number)
    elif number not in item.open_parts:
        st.sink.add("part-not-open", f"{doc.get('type')} for {key} {number}, which is not open")
        return None
    return number


def _on_part_event(kind: str, doc: Mapping[str, Any], st: _RStream) -> None:
    item = _item_event(doc, st)
    if item is None:
        return
    summary = kind.startswith("response.reasoning_summary")
    if item.kind != ("reasoning" if summary else "message"):
        st.sink.add("item-mismatch", f"{kind} on a {item.kind!r} item")
    key = "summary_index" if summary else "content_index"
    adding = kind.endswith("part.added")
    number = _part_index(doc, key, item, st, adding=adding)
    if number is None:
        return
    joined = "".join(item.parts[number])
    if kind.endswith(".delta"):
        if number in item.done_parts:
            st.sink.add("delta-after-done", f"{kind} after the part's text was done")
        delta = doc.get("delta")
        if not isinstance(delta, str):
            st.sink.add("bad-delta", f"delta must be a string, got {delta!r}")
        else:
            item.parts[number].append(delta)
    elif kind.endswith("text.done"):
        if doc.get("text") != joined:
            st.sink.add("text-mismatch", f"{kind} text {doc.get('text')!r} != the deltas "
                                         f"{joined!r}")
        item.done_parts[number] = joined
    elif kind.endswith("part.done"):
        part = doc.get("part")
        text = part.get("text") if isinstance(part, dict) else None
        if text != joined:
            st.sink.add("text-mismatch", f"{kind} part text {text!r} != the deltas {joined!r}")
        if number not in item.done_parts:
            st.sink.add("part-without-text-done", f"{kind} before the text's done event")
        item.open_parts.discard(number)


def _on_arguments(kind: str, doc: Mapping[str, Any], st: _RStream) -> None:
    item = _item_event(doc, st)
    if item is None:
        return
    if item.kind != "function_call":
        st.sink.add("item-mismatch", f"{kind} on a {item.kind!r} item")
    joined = "".join(item.arguments)
    if kind.endswith(".delta"):
        delta = doc.get("delta")
        if item.arguments_done is not None:
            st.sink.add("delta-after-done", "arguments delta after arguments.done")
        if isinstance(delta, str):
            item.arguments.append(delta)
        else:
            st.sink.add("bad-delta", f"delta must be a string, got {delta!r}")
    else:
        if doc.get("arguments") != joined:
            st.sink.add("arguments-mismatch", f"arguments {doc.get('arguments')!r} != the "
                                              f"deltas {joined!r}")
        item.arguments_done = joined


def _on_item_done(doc: Mapping[str, Any], st: _RStream) -> None:
    item = _item_event({**doc, "item_id": (doc.get("item") or {}).get("id")
                        if isinstance(doc.get("item"), dict) else None}, st)
    raw = doc.get("item")
    _check_item(raw, "item", st.sink, final=True)
    st.done_items.append(raw)
    if item is None:
        return
    st.item = None
    if item.open_parts:
        st.sink.add("unfinished-part", f"item {item.index} is done with parts still open: "
                                       f"{sorted(item.open_parts)}")
    if not isinstance(raw, dict):
        return
    if raw.get("type") != item.kind:
        st.sink.add("item-mismatch", f"item {item.index} was added as {item.kind!r}, done as "
                                     f"{raw.get('type')!r}")
    texts = [item.done_parts.get(n, "".join(p)) for n, p in sorted(item.parts.items())]
    if raw.get("type") == "message":
        content = raw.get("content")
        got = [part.get("text") for part in content if isinstance(part, dict)] \
            if isinstance(content, list) else None
        if got != texts:
            st.sink.add("text-mismatch", f"the done message holds {got!r}, the stream sent "
                                         f"{texts!r}")
    elif raw.get("type") == "reasoning":
        summary = raw.get("summary")
        got = [part.get("text") for part in summary if isinstance(part, dict)] \
            if isinstance(summary, list) else None
        if got != texts:
            st.sink.add("summary-mismatch", f"the done reasoning holds {got!r}, the stream sent "
                                            f"{texts!r}")
    elif raw.get("type") == "function_call":
        if item.arguments_done is None:
            st.sink.add("arguments-not-done", "function_call done without arguments.done")
        if raw.get("arguments") != "".join(item.arguments):
            st.sink.add("arguments-mismatch", f"the done call's arguments "
                                              f"{raw.get('arguments')!r} != the deltas")


PART_EVENTS: Final = frozenset({
    "response.content_part.added", "response.output_text.delta", "response.output_text.done",
    "response.content_part.done", "response.reasoning_summary_part.added",
    "response.reasoning_summary_text.delta", "response.reasoning_summary_text.done",
    "response.reasoning_summary_part.done",
})
ARGUMENT_EVENTS: Final = frozenset({
    "response.function_call_arguments.delta", "response.function_call_arguments.done",
})


def _on_event(ev: ResponsesEvent, st: _RStream) -> None:
    doc = ev.json
    if not isinstance(doc, dict):
        return
    kind = doc.get("type")
    _check_sequence(doc, st)
    if not st.created and kind != "response.created":
        st.sink.add("first-not-created", f"the first event must be response.created, got "
                                         f"{kind!r}")
        st.created = True  # report once
    if kind in LIFECYCLE_EVENTS or kind in TERMINAL_EVENTS:
        _on_lifecycle(str(kind), doc, st)
    elif kind == "response.output_item.added":
        _on_item_added(doc, st)
    elif kind == "response.output_item.done":
        _on_item_done(doc, st)
    elif kind in PART_EVENTS:
        _on_part_event(str(kind), doc, st)
    elif kind in ARGUMENT_EVENTS:
        _on_arguments(str(kind), doc, st)
    else:
        st.sink.add("unknown-event", f"unexpected event type {kind!r}")


def check_responses_stream(body: bytes, *, model: str | None = None) -> list[Violation]:
    """Validate a ``/v1/responses`` SSE body; returns every violation found.

    Grammar as described above; then the event order: ``response.created`` first (then at most
    one ``response.in_progress``), output items one at a time with ``output_index`` 0, 1, …
    and unique ids, content events only inside their open item and part, text/summary/argument
    deltas adding up to their ``.done`` values and to the item's done form, exactly one
    terminal event whose status matches its type and whose ``output`` is exactly the items the
    stream finished, and nothing after it — no event, comment or byte.
    """
    sink = _Sink()
    text = _decode(body, sink)
    if "\r" in text:
        sink.add("bad-line-ending", "lines must end with \\n only (found \\r)")
        text = _normalize_newlines(text)
    events = [_responses_block(i, block) for i, block in enumerate(_split_blocks(text))]
    st = _RStream(sink, model)
    for ev in events:
        sink.index = ev.index
        if st.terminal is not None:
            sink.add("after-terminal", f"block after the terminal event: "
                                       f"{(ev.name or ev.comments or ev.stray)!r}")
            continue
        _check_block_grammar(ev, sink)
        if ev.json is not None and isinstance(ev.json, dict):
            _on_event(ev, st)
            if ev.json.get("type") in TERMINAL_EVENTS:
                st.terminal = ev.index
    sink.index = None
    if st.terminal is None:
        sink.add("missing-terminal", "the stream ends without response.completed, "
                                     "response.incomplete or response.failed")
    elif events[st.terminal].end < len(text):
        sink.add("after-terminal", f"{len(text) - events[st.terminal].end} trailing byte(s) "
                                   "after the terminal event")
    return _sorted(sink.found)


@dataclass(frozen=True)
class ResponsesTranscript:
    """What a Responses stream said, for assertions: its answer text (all ``output_text``
    deltas), the terminal event's type and response (None without one), and every event."""

    text: str
    terminal: str | None
    response: JsonObject | None
    events: list[JsonObject]

    @property
    def status(self) -> str | None:
        return self.response.get("status") if self.response is not None else None

    @property
    def usage(self) -> JsonObject | None:
        return self.response.get("usage") if self.response is not None else None

    def types(self) -> list[str]:
        return [str(event.get("type")) for event in self.events]


def collect_responses_stream(body: bytes) -> ResponsesTranscript:
    parts: list[str] = []
    events: list[JsonObject] = []
    terminal: str | None = None
    response: JsonObject | None = None
    for ev in parse_responses_sse(body):
        doc = ev.json
        if not isinstance(doc, dict):
            continue
        events.append(doc)
        kind = doc.get("type")
        if kind == "response.output_text.delta" and isinstance(doc.get("delta"), str):
            parts.append(doc["delta"])
        elif kind in TERMINAL_EVENTS and terminal is None:
            terminal = str(kind)
            response = doc.get("response") if isinstance(doc.get("response"), dict) else None
    return ResponsesTranscript("".join(parts), terminal, response, events)


def response_output_text(doc: Mapping[str, Any]) -> str:
    """All output_text of a response object's message items, joined (the SDK's output_text)."""
    output = doc.get("output")
    return "".join(text for item in output if isinstance(item, dict)
                   and (text := _item_text(item)) is not None) if isinstance(output, list) else ""

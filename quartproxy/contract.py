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
    "Violation",
    "assert_valid",
    "check_chat_json",
    "check_chat_stream",
    "check_completion_json",
    "check_completion_stream",
    "check_error_json",
    "collect_stream_content",
    "parse_sse",
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


def _check_usage(usage: object, sink: _Sink) -> None:
    if not isinstance(usage, dict):
        sink.add("bad-usage", f"usage must be an object, got {_type_name(usage)}")
        return
    counts: dict[str, int] = {}
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        value = usage.get(key)
        if _is_count(value):
            counts[key] = value
        else:
            sink.add("bad-usage", f"usage.{key} must be an integer >= 0, got {value!r}")
    if len(counts) == 3 and counts["total_tokens"] != (
        counts["prompt_tokens"] + counts["completion_tokens"]
    ):
        sink.add("usage-total-mismatch",
                 f"total_tokens {counts['total_tokens']} != prompt_tokens "
                 f"{counts['prompt_tokens']} + completion_tokens {counts['completion_tokens']}")
    _check_usage_details(usage, "prompt_tokens_details", "cached_tokens", sink)
    _check_usage_details(usage, "completion_tokens_details", "reasoning_tokens", sink)


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

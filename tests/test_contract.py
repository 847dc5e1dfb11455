"""Tests for quartproxy.contract: hand-written valid transcripts, then one mutation per rule."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from quartproxy.contract import (
    ContractError,
    Violation,
    assert_valid,
    check_chat_json,
    check_chat_stream,
    check_completion_json,
    check_completion_stream,
    check_error_json,
    check_responses_json,
    check_responses_stream,
    collect_responses_stream,
    collect_stream_content,
    parse_responses_sse,
    parse_sse,
)

Checker = Callable[[bytes], list[Violation]]
Mutation = Callable[[bytes], bytes]

# --------------------------------------------------------------------------- valid transcripts

CHAT_HEAD = (
    b'data: {"id":"chatcmpl-7Q2x","object":"chat.completion.chunk","created":1710000000,'
    b'"model":"codex-5","system_fingerprint":null,'
)
ROLE_CHOICE = (
    b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
    b'"logprobs":null,"finish_reason":null}]'
)
STOP_CHOICE = b'"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]'


def content_choice(text: bytes) -> bytes:
    return (
        b'"choices":[{"index":0,"delta":{"content":"' + text + b'"},'
        b'"logprobs":null,"finish_reason":null}]'
    )


DONE = b"data: [DONE]\n\n"

# frames: 0 role, 1 content, 2 finish, 3 [DONE]
CHAT_MINIMAL = (
    CHAT_HEAD + ROLE_CHOICE + b"}\n\n"
    + CHAT_HEAD + content_choice(b"Hello") + b"}\n\n"
    + CHAT_HEAD + STOP_CHOICE + b"}\n\n"
    + DONE
)

# frames: 0 comment, 1 role, 2 content, 3 comment, 4 content, 5 content, 6 finish, 7 [DONE]
CHAT_KEEPALIVE = (
    b": keepalive 15000\n\n"
    + CHAT_HEAD + ROLE_CHOICE + b"}\n\n"
    + CHAT_HEAD + content_choice(b"Hel") + b"}\n\n"
    + b": keepalive 30000\n\n"
    + CHAT_HEAD + content_choice(b"lo, ") + b"}\n\n"
    + CHAT_HEAD + content_choice(b'w\\u00f6rld \\u2014 \\"quoted\\"\\n') + b"}\n\n"
    + CHAT_HEAD + STOP_CHOICE + b"}\n\n"
    + DONE
)

# frames: 0 role, 1 content, 2 finish, 3 usage, 4 [DONE]; checked with include_usage=True
CHAT_USAGE = (
    CHAT_HEAD + ROLE_CHOICE + b',"usage":null}\n\n'
    + CHAT_HEAD + content_choice(b"Hello") + b',"usage":null}\n\n'
    + CHAT_HEAD + STOP_CHOICE + b',"usage":null}\n\n'
    + CHAT_HEAD + b'"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":4,'
    b'"total_tokens":16,"prompt_tokens_details":{"cached_tokens":0},'
    b'"completion_tokens_details":{"reasoning_tokens":0}}}\n\n'
    + DONE
)

ERROR_FRAME = (
    b'data: {"error":{"message":"codex exited before answering","type":"server_error",'
    b'"param":null,"code":"backend_error"}}\n\n'
)

# frames: 0 role, 1 content, 2 error, 3 [DONE]
CHAT_ERROR = (
    CHAT_HEAD + ROLE_CHOICE + b"}\n\n"
    + CHAT_HEAD + content_choice(b"Hel") + b"}\n\n"
    + ERROR_FRAME
    + DONE
)

# frames: 0 error, 1 [DONE]
CHAT_ERROR_ONLY = ERROR_FRAME + DONE

LEGACY_HEAD = (
    b'data: {"id":"cmpl-9zK","object":"text_completion","created":1710000000,'
    b'"model":"codex-5",'
)


def legacy_choice(text: bytes, reason: bytes = b"null") -> bytes:
    return (
        b'"choices":[{"index":0,"text":"' + text + b'","logprobs":null,'
        b'"finish_reason":' + reason + b"}]"
    )


# frames: 0 text, 1 comment, 2 text, 3 finish, 4 usage, 5 [DONE]; include_usage=True
LEGACY_STREAM = (
    LEGACY_HEAD + legacy_choice(b"Hel") + b',"usage":null}\n\n'
    + b": keepalive 15000\n\n"
    + LEGACY_HEAD + legacy_choice(b"lo") + b',"usage":null}\n\n'
    + LEGACY_HEAD + legacy_choice(b"", b'"length"') + b',"usage":null}\n\n'
    + LEGACY_HEAD + b'"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,'
    b'"total_tokens":5,"prompt_tokens_details":{"cached_tokens":1},'
    b'"completion_tokens_details":{"reasoning_tokens":0}}}\n\n'
    + DONE
)

# frames: 0 text, 1 finish, 2 [DONE]; include_usage=False
LEGACY_PLAIN = (
    LEGACY_HEAD + legacy_choice(b"Hi") + b"}\n\n"
    + LEGACY_HEAD + legacy_choice(b"", b'"stop"') + b"}\n\n"
    + DONE
)

CHAT_JSON = (
    b'{"id":"chatcmpl-7Q2x","object":"chat.completion","created":1710000000,"model":"codex-5",'
    b'"system_fingerprint":null,'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"Hello","refusal":null},'
    b'"logprobs":null,"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":12,"completion_tokens":4,"total_tokens":16,'
    b'"prompt_tokens_details":{"cached_tokens":0},'
    b'"completion_tokens_details":{"reasoning_tokens":0}}}'
)

LEGACY_JSON = (
    b'{"id":"cmpl-9zK","object":"text_completion","created":1710000000,"model":"codex-5",'
    b'"choices":[{"index":0,"text":"Hello","logprobs":null,"finish_reason":"length"}],'
    b'"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5,'
    b'"prompt_tokens_details":{"cached_tokens":0},'
    b'"completion_tokens_details":{"reasoning_tokens":0}}}'
)

ERROR_JSON = (
    b'{"error":{"message":"The model gpt-9 does not exist or you do not have access to it.",'
    b'"type":"invalid_request_error","param":"model","code":"model_not_found"}}'
)


def chat(include_usage: bool = False, model: str | None = None) -> Checker:
    return lambda body: check_chat_stream(body, include_usage=include_usage, model=model)


def legacy(include_usage: bool = False, model: str | None = None) -> Checker:
    return lambda body: check_completion_stream(body, include_usage=include_usage, model=model)


# --------------------------------------------------------------------------- valid bodies pass

VALID_STREAMS = [
    pytest.param(CHAT_MINIMAL, chat(), id="chat-minimal"),
    pytest.param(CHAT_MINIMAL, chat(model="codex-5"), id="chat-minimal-model"),
    pytest.param(CHAT_KEEPALIVE, chat(), id="chat-keepalive"),
    pytest.param(CHAT_USAGE, chat(include_usage=True), id="chat-usage"),
    pytest.param(CHAT_ERROR, chat(), id="chat-error"),
    pytest.param(CHAT_ERROR_ONLY, chat(include_usage=True), id="chat-error-only"),
    pytest.param(LEGACY_STREAM, legacy(include_usage=True), id="legacy-usage"),
    pytest.param(LEGACY_PLAIN, legacy(), id="legacy-plain"),
    pytest.param(CHAT_ERROR_ONLY, legacy(), id="legacy-error-only"),
]


@pytest.mark.parametrize(("body", "check"), VALID_STREAMS)
def test_valid_streams_have_no_violations(body: bytes, check: Checker) -> None:
    assert check(body) == []


def test_valid_json_bodies_have_no_violations() -> None:
    assert check_chat_json(CHAT_JSON, model="codex-5") == []
    assert check_chat_json(json.loads(CHAT_JSON)) == []
    assert check_completion_json(LEGACY_JSON, model="codex-5") == []
    assert check_completion_json(json.loads(LEGACY_JSON)) == []
    assert check_error_json(ERROR_JSON) == []
    assert check_error_json(json.loads(ERROR_JSON)) == []
    assert_valid([])


def test_comment_sharing_a_block_with_data_is_allowed() -> None:
    body = CHAT_MINIMAL.replace(b"data: [DONE]", b": keepalive 45000\ndata: [DONE]")
    assert check_chat_stream(body, include_usage=False) == []


def test_parse_sse_frames() -> None:
    frames = parse_sse(CHAT_KEEPALIVE + b"id: 3\nretry: 10\n\nevent: x\n\nnonsense\n\n")
    kinds = [f.kind for f in frames]
    assert kinds == ["comment", "data", "data", "comment", *["data"] * 4, *["other"] * 4]
    assert frames[0].raw == ": keepalive 15000"
    assert frames[1].json["choices"][0]["delta"]["role"] == "assistant"
    assert frames[5].json["choices"][0]["delta"]["content"] == 'wörld — "quoted"\n'
    assert frames[7].is_done and frames[7].json is None
    assert [f.field for f in frames[8:]] == ["id:", "retry:", "event:", "nonsense"]
    assert all(f.terminated for f in frames)
    assert frames[8].block == frames[9].block != frames[10].block


def test_collect_stream_content() -> None:
    assert collect_stream_content(CHAT_KEEPALIVE) == ('Hello, wörld — "quoted"\n', "stop", None)
    text, reason, usage = collect_stream_content(CHAT_USAGE)
    assert (text, reason) == ("Hello", "stop")
    assert usage is not None and usage["total_tokens"] == 16
    text, reason, usage = collect_stream_content(LEGACY_STREAM)
    assert (text, reason) == ("Hello", "length")
    assert usage is not None and usage["prompt_tokens_details"] == {"cached_tokens": 1}
    assert collect_stream_content(CHAT_ERROR) == ("Hel", None, None)


# --------------------------------------------------------------------------- mutation helpers

DELETE = object()


def _blocks(body: bytes) -> list[bytes]:
    assert body.endswith(b"\n\n")
    return body[:-2].split(b"\n\n")


def _join(blocks: list[bytes]) -> bytes:
    return b"".join(block + b"\n\n" for block in blocks)


def drop(i: int) -> Mutation:
    return lambda body: _join([b for n, b in enumerate(_blocks(body)) if n != i])


def insert(i: int, block: bytes) -> Mutation:
    def mutate(body: bytes) -> bytes:
        blocks = _blocks(body)
        blocks.insert(i, block)
        return _join(blocks)

    return mutate


def duplicate(i: int) -> Mutation:
    return lambda body: insert(i, _blocks(body)[i])(body)


def swap(i: int, j: int) -> Mutation:
    def mutate(body: bytes) -> bytes:
        blocks = _blocks(body)
        blocks[i], blocks[j] = blocks[j], blocks[i]
        return _join(blocks)

    return mutate


def append(raw: bytes) -> Mutation:
    return lambda body: body + raw


def replace(old: bytes, new: bytes) -> Mutation:
    return lambda body: body.replace(old, new)


def _apply(doc: Any, path: tuple[str | int, ...], value: object) -> None:
    for key in path[:-1]:
        doc = doc[key]
    if value is DELETE:
        del doc[path[-1]]
    else:
        doc[path[-1]] = value


def edit(i: int, path: tuple[str | int, ...], value: object) -> Mutation:
    """Set (or DELETE) a JSON path inside the data frame of block i."""

    def mutate(body: bytes) -> bytes:
        blocks = _blocks(body)
        assert blocks[i].startswith(b"data: ")
        doc = json.loads(blocks[i][6:])
        _apply(doc, path, value)
        blocks[i] = b"data: " + json.dumps(doc, ensure_ascii=False).encode()
        return _join(blocks)

    return mutate


def edit_doc(i: int, change: Callable[[dict[str, Any]], None]) -> Mutation:
    """Apply an arbitrary change to the JSON of the data frame of block i."""

    def mutate(body: bytes) -> bytes:
        blocks = _blocks(body)
        doc = json.loads(blocks[i][6:])
        change(doc)
        blocks[i] = b"data: " + json.dumps(doc).encode()
        return _join(blocks)

    return mutate


def _second_choice(doc: dict[str, Any]) -> None:
    doc["choices"].append({**doc["choices"][0], "index": 1})


def chain(*mutations: Mutation) -> Mutation:
    def mutate(body: bytes) -> bytes:
        for m in mutations:
            body = m(body)
        return body

    return mutate


USAGE_CHUNK_BLOCK = _blocks(CHAT_USAGE)[3]
FINISH_BLOCK = _blocks(CHAT_MINIMAL)[2]
CONTENT_BLOCK = _blocks(CHAT_MINIMAL)[1]
C0 = ("choices", 0)

# (id, base, checker, mutation, expected rule, expected frame index)
STREAM_MUTATIONS: list[tuple[str, bytes, Checker, Mutation, str, int | None]] = [
    # [DONE] and framing
    ("drop-done", CHAT_MINIMAL, chat(), drop(3), "missing-done", None),
    ("duplicate-done", CHAT_MINIMAL, chat(), duplicate(3), "duplicate-done", 4),
    ("text-after-done", CHAT_MINIMAL, chat(), append(b"hello"), "done-not-last", 4),
    ("data-after-done", CHAT_MINIMAL, chat(), append(CONTENT_BLOCK + b"\n\n"),
     "done-not-last", 4),
    ("comment-after-done", CHAT_MINIMAL, chat(), append(b": keepalive 1\n\n"),
     "done-not-last", 4),
    ("blank-line-after-done", CHAT_MINIMAL, chat(), append(b"\n"), "done-not-last", None),
    ("done-missing-blank-line", CHAT_MINIMAL, chat(), lambda b: b[:-1],
     "unterminated-frame", 3),
    ("done-missing-both-newlines", CHAT_MINIMAL, chat(), lambda b: b[:-2],
     "unterminated-frame", 3),
    ("chunk-missing-blank-line", CHAT_MINIMAL, chat(),
     replace(b"}\n\ndata: [DONE]", b"}\ndata: [DONE]"), "bad-json", 2),
    ("id-field-own-block", CHAT_MINIMAL, chat(), insert(1, b"id: 7"), "id-field", 1),
    ("id-field-in-data-block", CHAT_MINIMAL, chat(),
     replace(b"data: [DONE]", b"id: 7\ndata: [DONE]"), "id-field", 3),
    ("retry-field", CHAT_MINIMAL, chat(), insert(0, b"retry: 3000"), "retry-field", 0),
    ("event-field", CHAT_MINIMAL, chat(), insert(2, b"event: message"), "event-field", 2),
    ("unknown-field", CHAT_KEEPALIVE, chat(), insert(1, b"keepalive"), "unknown-field", 1),
    ("empty-data", CHAT_MINIMAL, chat(), insert(1, b"data:"), "empty-data", 1),
    ("empty-data-space", CHAT_MINIMAL, chat(), insert(2, b"data: "), "empty-data", 2),
    ("non-json-data", CHAT_MINIMAL, chat(), insert(1, b"data: {not json"), "bad-json", 1),
    ("nan-is-not-json", CHAT_MINIMAL, chat(), replace(b'"created":1710000000',
     b'"created":NaN'), "bad-json", 0),
    ("json-not-object", CHAT_MINIMAL, chat(), insert(1, b"data: [1, 2]"), "not-object", 1),
    ("crlf", CHAT_MINIMAL, chat(), replace(b"\n", b"\r\n"), "bad-line-ending", None),
    ("not-utf8", CHAT_MINIMAL, chat(), replace(b"Hello", b"H\xffllo"), "not-utf8", None),
    ("empty-body", CHAT_MINIMAL, chat(), lambda b: b"", "missing-done", None),
    ("only-done", CHAT_MINIMAL, chat(), lambda b: DONE, "empty-stream", 0),
    # envelope
    ("wrong-object", CHAT_MINIMAL, chat(), edit(1, ("object",), "chat.completion"),
     "bad-object", 1),
    ("bad-id-prefix", CHAT_MINIMAL, chat(), edit(0, ("id",), "cmpl-7Q2x"), "bad-id", 0),
    ("created-not-int", CHAT_MINIMAL, chat(), edit(2, ("created",), "1710000000"),
     "bad-created", 2),
    ("created-bool", CHAT_MINIMAL, chat(), edit(2, ("created",), True), "bad-created", 2),
    ("model-mismatch", CHAT_MINIMAL, chat(model="codex-5"),
     replace(b'"model":"codex-5"', b'"model":"codex-5-high"'), "model-mismatch", 0),
    ("model-not-str", CHAT_MINIMAL, chat(), edit(1, ("model",), None), "bad-model", 1),
    ("missing-fingerprint", CHAT_MINIMAL, chat(), edit(1, ("system_fingerprint",), DELETE),
     "missing-system-fingerprint", 1),
    ("bad-fingerprint", CHAT_MINIMAL, chat(), edit(1, ("system_fingerprint",), 3),
     "bad-system-fingerprint", 1),
    ("id-changed", CHAT_MINIMAL, chat(), edit(1, ("id",), "chatcmpl-other"), "id-changed", 1),
    ("created-changed", CHAT_MINIMAL, chat(), edit(2, ("created",), 1710000001),
     "created-changed", 2),
    ("model-changed", CHAT_MINIMAL, chat(), edit(2, ("model",), "codex-5-low"),
     "model-changed", 2),
    ("choices-not-list", CHAT_MINIMAL, chat(), edit(1, ("choices",), {}), "bad-choices", 1),
    ("two-choices", CHAT_MINIMAL, chat(), edit_doc(1, _second_choice), "bad-choices", 1),
    ("choice-index", CHAT_MINIMAL, chat(), edit(1, (*C0, "index"), 1), "bad-choice-index", 1),
    ("logprobs-missing", CHAT_MINIMAL, chat(), edit(1, (*C0, "logprobs"), DELETE),
     "bad-logprobs", 1),
    ("extra-choice-key", CHAT_MINIMAL, chat(), edit(1, (*C0, "text"), "x"),
     "unexpected-choice-key", 1),
    # deltas
    ("bad-finish-reason", CHAT_MINIMAL, chat(), edit(2, (*C0, "finish_reason"), "done"),
     "bad-finish-reason", 2),
    ("finish-delta-not-empty", CHAT_MINIMAL, chat(),
     edit(2, (*C0, "delta"), {"content": "!"}), "finish-delta-not-empty", 2),
    ("content-delta-extra-key", CHAT_MINIMAL, chat(),
     edit(1, (*C0, "delta", "refusal"), None), "bad-delta", 1),
    ("content-delta-empty", CHAT_MINIMAL, chat(), edit(1, (*C0, "delta"), {}), "bad-delta", 1),
    ("content-not-str", CHAT_MINIMAL, chat(), edit(1, (*C0, "delta", "content"), 5),
     "bad-delta", 1),
    ("delta-not-object", CHAT_MINIMAL, chat(), edit(1, (*C0, "delta"), "Hello"),
     "bad-delta", 1),
    ("role-not-assistant", CHAT_MINIMAL, chat(), edit(0, (*C0, "delta", "role"), "user"),
     "bad-role", 0),
    # order
    ("content-before-role", CHAT_MINIMAL, chat(), swap(0, 1), "missing-role", 0),
    ("role-after-content", CHAT_MINIMAL, chat(), swap(0, 1), "misplaced-role", 1),
    ("no-role", CHAT_MINIMAL, chat(), drop(0), "missing-role", 0),
    ("two-roles", CHAT_MINIMAL, chat(), duplicate(0), "misplaced-role", 1),
    ("two-finish", CHAT_MINIMAL, chat(), duplicate(2), "duplicate-finish", 3),
    ("no-finish", CHAT_MINIMAL, chat(), drop(2), "missing-finish", 2),
    ("no-finish-no-done", CHAT_MINIMAL, chat(), chain(drop(3), drop(2)), "missing-finish", None),
    ("content-after-finish", CHAT_MINIMAL, chat(), swap(1, 2), "content-after-finish", 2),
    # usage
    ("usage-before-finish", CHAT_USAGE, chat(True), swap(2, 3), "usage-before-finish", 2),
    ("missing-usage-chunk", CHAT_USAGE, chat(True), drop(3), "missing-usage-chunk", 3),
    ("usage-not-requested", CHAT_MINIMAL, chat(False), insert(3, USAGE_CHUNK_BLOCK),
     "unexpected-usage-chunk", 3),
    ("usage-on-chunk-not-requested", CHAT_MINIMAL, chat(),
     edit(1, ("usage",), {"prompt_tokens": 1}), "unexpected-usage", 1),
    ("two-usage-chunks", CHAT_USAGE, chat(True), duplicate(3), "duplicate-usage", 4),
    ("missing-usage-null-key", CHAT_USAGE, chat(True), edit(1, ("usage",), DELETE),
     "missing-usage-key", 1),
    ("usage-not-null-on-content", CHAT_USAGE, chat(True),
     edit(1, ("usage",), json.loads(USAGE_CHUNK_BLOCK[6:])["usage"]), "usage-not-null", 1),
    ("usage-total-mismatch", CHAT_USAGE, chat(True), edit(3, ("usage", "total_tokens"), 17),
     "usage-total-mismatch", 3),
    ("usage-negative", CHAT_USAGE, chat(True), edit(3, ("usage", "prompt_tokens"), -1),
     "bad-usage", 3),
    ("usage-null-on-usage-chunk", CHAT_USAGE, chat(True), edit(3, ("usage",), None),
     "bad-usage", 3),
    ("usage-no-cached-tokens", CHAT_USAGE, chat(True),
     edit(3, ("usage", "prompt_tokens_details"), {}), "bad-usage", 3),
    ("usage-no-reasoning-details", CHAT_USAGE, chat(True),
     edit(3, ("usage", "completion_tokens_details"), DELETE), "bad-usage", 3),
    # error path
    ("error-then-finish", CHAT_ERROR, chat(), insert(3, FINISH_BLOCK), "chunk-after-error", 3),
    ("error-then-usage", CHAT_ERROR, chat(False),
     insert(3, USAGE_CHUNK_BLOCK), "chunk-after-error", 3),
    ("error-then-content", CHAT_ERROR_ONLY, chat(), insert(1, CONTENT_BLOCK),
     "chunk-after-error", 1),
    ("two-error-frames", CHAT_ERROR, chat(), duplicate(2), "duplicate-error", 3),
    ("error-after-finish", CHAT_MINIMAL, chat(), insert(3, ERROR_FRAME[:-2]),
     "error-after-finish", 3),
    ("error-frame-extra-key", CHAT_ERROR, chat(), edit(2, ("error", "status"), 502),
     "error-extra-key", 2),
    ("error-frame-missing-code", CHAT_ERROR, chat(), edit(2, ("error", "code"), DELETE),
     "error-missing-key", 2),
    ("error-frame-bad-param", CHAT_ERROR, chat(), edit(2, ("error", "param"), 1),
     "error-bad-value", 2),
    ("error-frame-not-object", CHAT_ERROR, chat(), edit(2, ("error",), "boom"),
     "error-not-object", 2),
    ("error-frame-no-done", CHAT_ERROR, chat(), drop(3), "missing-done", None),
    # legacy text_completion streams
    ("legacy-role", LEGACY_STREAM, legacy(True), edit(0, (*C0, "role"), "assistant"),
     "legacy-role", 0),
    ("legacy-delta-role", LEGACY_PLAIN, legacy(),
     edit(0, (*C0, "delta"), {"role": "assistant"}), "legacy-role", 0),
    ("legacy-chat-chunk", LEGACY_PLAIN, legacy(), lambda b: CHAT_MINIMAL, "bad-object", 0),
    ("legacy-wrong-prefix", LEGACY_PLAIN, legacy(), edit(1, ("id",), "chatcmpl-9zK"),
     "bad-id", 1),
    ("legacy-text-missing", LEGACY_PLAIN, legacy(), edit(0, (*C0, "text"), DELETE),
     "bad-text", 0),
    ("legacy-finish-with-text", LEGACY_PLAIN, legacy(), edit(1, (*C0, "text"), "!"),
     "finish-text-not-empty", 1),
    ("legacy-no-finish", LEGACY_PLAIN, legacy(), drop(1), "missing-finish", 1),
    ("legacy-usage-before-finish", LEGACY_STREAM, legacy(True), swap(3, 4),
     "usage-before-finish", 3),
    ("legacy-missing-usage", LEGACY_STREAM, legacy(True), drop(4), "missing-usage-chunk", 4),
    ("legacy-unrequested-usage", LEGACY_PLAIN, legacy(False),
     insert(2, _blocks(LEGACY_STREAM)[4]), "unexpected-usage-chunk", 2),
    ("legacy-model-changed", LEGACY_STREAM, legacy(True), edit(2, ("model",), "codex-5-low"),
     "model-changed", 2),
    ("legacy-comment-after-done", LEGACY_PLAIN, legacy(), append(b": bye\n\n"),
     "done-not-last", 3),
    ("legacy-error-then-finish", LEGACY_PLAIN, legacy(), insert(1, ERROR_FRAME[:-2]),
     "chunk-after-error", 2),
]


@pytest.mark.parametrize(
    ("base", "check", "mutate", "rule", "index"),
    [pytest.param(*case[1:], id=case[0]) for case in STREAM_MUTATIONS],
)
def test_stream_mutation_is_reported(
    base: bytes, check: Checker, mutate: Mutation, rule: str, index: int | None
) -> None:
    assert check(base) == [], "the base transcript must be valid"
    found = check(mutate(base))
    assert (index, rule) in {(v.index, v.rule) for v in found}, "\n".join(map(str, found))


# --------------------------------------------------------------------------- JSON mutations

JsonMutation = Callable[[dict[str, Any]], None]
JsonChecker = Callable[[bytes | dict[str, Any]], list[Violation]]


def set_at(path: tuple[str | int, ...], value: object) -> JsonMutation:
    return lambda doc: _apply(doc, path, value)


def _become_error(doc: dict[str, Any]) -> None:
    doc.clear()
    doc.update(json.loads(ERROR_JSON))


JSON_MUTATIONS: list[tuple[str, bytes, JsonChecker, JsonMutation, str]] = [
    ("chat-missing-usage", CHAT_JSON, check_chat_json, set_at(("usage",), DELETE),
     "missing-usage"),
    ("chat-wrong-object", CHAT_JSON, check_chat_json,
     set_at(("object",), "chat.completion.chunk"), "bad-object"),
    ("chat-bad-id", CHAT_JSON, check_chat_json, set_at(("id",), "chatcmpl-"), "bad-id"),
    ("chat-no-fingerprint", CHAT_JSON, check_chat_json, set_at(("system_fingerprint",), DELETE),
     "missing-system-fingerprint"),
    ("chat-finish-null", CHAT_JSON, check_chat_json, set_at((*C0, "finish_reason"), None),
     "bad-finish-reason"),
    ("chat-finish-bogus", CHAT_JSON, check_chat_json, set_at((*C0, "finish_reason"), "eos"),
     "bad-finish-reason"),
    ("chat-no-refusal", CHAT_JSON, check_chat_json, set_at((*C0, "message", "refusal"), DELETE),
     "bad-message"),
    ("chat-content-null", CHAT_JSON, check_chat_json,
     set_at((*C0, "message", "content"), None), "bad-message"),
    ("chat-role-user", CHAT_JSON, check_chat_json, set_at((*C0, "message", "role"), "user"),
     "bad-role"),
    ("chat-delta-not-message", CHAT_JSON, check_chat_json,
     set_at((*C0, "delta"), {}), "unexpected-choice-key"),
    ("chat-no-choices", CHAT_JSON, check_chat_json, set_at(("choices",), []), "bad-choices"),
    ("chat-total-mismatch", CHAT_JSON, check_chat_json,
     set_at(("usage", "completion_tokens"), 5), "usage-total-mismatch"),
    ("chat-usage-float", CHAT_JSON, check_chat_json,
     set_at(("usage", "prompt_tokens"), 12.0), "bad-usage"),
    ("chat-is-error", CHAT_JSON, check_chat_json, _become_error, "error-body"),
    ("legacy-missing-usage", LEGACY_JSON, check_completion_json, set_at(("usage",), DELETE),
     "missing-usage"),
    ("legacy-wrong-object", LEGACY_JSON, check_completion_json,
     set_at(("object",), "chat.completion"), "bad-object"),
    ("legacy-chat-id", LEGACY_JSON, check_completion_json, set_at(("id",), "chatcmpl-1"),
     "bad-id"),
    ("legacy-message", LEGACY_JSON, check_completion_json,
     set_at((*C0, "message"), {"role": "assistant", "content": "x"}), "legacy-role"),
    ("legacy-text-null", LEGACY_JSON, check_completion_json, set_at((*C0, "text"), None),
     "bad-text"),
    ("legacy-logprobs-missing", LEGACY_JSON, check_completion_json,
     set_at((*C0, "logprobs"), DELETE), "bad-logprobs"),
    ("error-extra-top-key", ERROR_JSON, check_error_json, set_at(("detail",), "x"),
     "error-extra-key"),
    ("error-extra-inner-key", ERROR_JSON, check_error_json, set_at(("error", "status"), 404),
     "error-extra-key"),
    ("error-missing-param", ERROR_JSON, check_error_json, set_at(("error", "param"), DELETE),
     "error-missing-key"),
    ("error-missing-type", ERROR_JSON, check_error_json, set_at(("error", "type"), DELETE),
     "error-missing-key"),
    ("error-empty-message", ERROR_JSON, check_error_json, set_at(("error", "message"), ""),
     "error-bad-value"),
    ("error-code-int", ERROR_JSON, check_error_json, set_at(("error", "code"), 404),
     "error-bad-value"),
    ("error-not-object", ERROR_JSON, check_error_json, set_at(("error",), "nope"),
     "error-not-object"),
]


@pytest.mark.parametrize(
    ("base", "check", "mutate", "rule"),
    [pytest.param(*case[1:], id=case[0]) for case in JSON_MUTATIONS],
)
def test_json_mutation_is_reported(
    base: bytes, check: JsonChecker, mutate: JsonMutation, rule: str
) -> None:
    doc = json.loads(base)
    assert check(doc) == []
    mutate(doc)
    found = check(doc)
    assert rule in {v.rule for v in found}, "\n".join(map(str, found))
    assert all(v.index is None for v in found)
    # the same result when the body arrives as bytes
    assert check(json.dumps(doc).encode()) == found


@pytest.mark.parametrize(
    ("body", "rule"),
    [
        pytest.param(b"{", "bad-json", id="truncated"),
        pytest.param(b"[]", "not-object", id="array"),
        pytest.param(b'{"a":\xff}', "not-utf8", id="not-utf8"),
    ],
)
def test_unparsable_json_bodies(body: bytes, rule: str) -> None:
    for check in (check_chat_json, check_completion_json, check_error_json):
        assert rule in {v.rule for v in check(body)}


# --------------------------------------------------------------------------- reporting


def test_every_violation_is_reported_with_its_frame() -> None:
    body = chain(
        edit(1, ("id",), "chatcmpl-zzz"),          # frame 1: id changed
        edit(2, (*C0, "finish_reason"), "done"),   # frame 2: bad finish_reason
        insert(3, b"retry: 5"),                    # frame 3: retry field
        drop(4),                                   # no [DONE]
    )(CHAT_MINIMAL)
    found = check_chat_stream(body, include_usage=False, model="codex-5")
    pairs = [(v.index, v.rule) for v in found]
    assert pairs == [
        (None, "missing-done"),
        (1, "id-changed"),
        (2, "bad-finish-reason"),
        (3, "retry-field"),
    ]


def test_contract_error_lists_all_violations() -> None:
    body = chain(swap(2, 3), append(b": late\n\n"))(CHAT_USAGE)
    found = check_chat_stream(body, include_usage=True)
    assert {(v.index, v.rule) for v in found} >= {
        (2, "usage-before-finish"),
        (5, "done-not-last"),
    }
    with pytest.raises(ContractError) as info:
        assert_valid(found)
    lines = str(info.value).splitlines()
    assert lines == [str(v) for v in found]
    assert "frame 2: usage-before-finish: usage chunk before the finish chunk" in lines
    assert all(line.startswith(("frame ", "body: ")) for line in lines)
    assert info.value.violations == tuple(found)
    assert isinstance(info.value, AssertionError)


def test_body_level_violation_formatting() -> None:
    body = chain(drop(3), drop(2))(CHAT_MINIMAL)
    assert [str(v) for v in check_chat_stream(body, include_usage=False)] == [
        "body: missing-done: the body ends without data: [DONE]",
        "body: missing-finish: the stream has no finish chunk",
    ]


# --------------------------------------------------------------------------- why id: is banned


def test_openai_decoder_agrees_about_id_fields() -> None:
    """openai-python's decoder turns blank lines after an id: field into empty events."""
    streaming = pytest.importorskip("openai._streaming")
    decoder_cls = getattr(streaming, "SSEDecoder", None)
    if decoder_cls is None:
        pytest.skip("openai SSEDecoder not available")

    def datas(body: bytes) -> list[str]:
        return [sse.data for sse in decoder_cls().iter_bytes(iter([body]))]

    assert "" not in datas(CHAT_KEEPALIVE + b"\n\n")
    poisoned = insert(1, b"id: 1")(CHAT_MINIMAL)
    assert "" in datas(poisoned)
    assert ("id-field", 1) in {(v.rule, v.index) for v in check_chat_stream(
        poisoned, include_usage=False)}


# =========================================================================== Responses API

USAGE_R = {"input_tokens": 12, "input_tokens_details": {"cached_tokens": 0},
           "output_tokens": 4, "output_tokens_details": {"reasoning_tokens": 0},
           "total_tokens": 16}
MSG_ID = "msg_1"
AT = {"item_id": MSG_ID, "output_index": 0, "content_index": 0}


def response_doc(status: str, output: list[Any], usage: Any = None, **extra: Any) -> Any:
    return {"id": "resp_1", "object": "response", "created_at": 1710000000, "status": status,
            "error": None, "incomplete_details": None, "model": "codex-5", "output": output,
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": [], "usage": usage,
            **extra}


def message(text: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "message", "id": MSG_ID, "status": status, "role": "assistant",
            "content": [] if status == "in_progress" else
            [{"type": "output_text", "annotations": [], "text": text}]}


def events(*specs: tuple[str, dict[str, Any]] | bytes) -> bytes:
    """SSE body from (type, fields) pairs, numbered 0, 1, ...; bytes are raw blocks."""
    out = b""
    seq = 0
    for spec in specs:
        if isinstance(spec, bytes):
            out += spec + b"\n\n"
            continue
        kind, fields = spec
        doc = {"type": kind, "sequence_number": seq, **fields}
        seq += 1
        out += b"event: " + kind.encode() + b"\ndata: " + json.dumps(doc).encode() + b"\n\n"
    return out


OPENING = (("response.created", {"response": response_doc("in_progress", [])}),
           ("response.in_progress", {"response": response_doc("in_progress", [])}))
PART = {"type": "output_text", "annotations": [], "text": ""}

# blocks: 0 created, 1 in_progress, 2 item added, 3 part added, 4 delta, 5 keepalive comment,
# 6 delta, 7 text done, 8 part done, 9 item done, 10 completed
RESP_TEXT = events(
    *OPENING,
    ("response.output_item.added", {"output_index": 0, "item": message("", "in_progress")}),
    ("response.content_part.added", {**AT, "part": PART}),
    ("response.output_text.delta", {**AT, "delta": "Hel", "logprobs": []}),
    b": keepalive 15000",
    ("response.output_text.delta", {**AT, "delta": "lo", "logprobs": []}),
    ("response.output_text.done", {**AT, "text": "Hello", "logprobs": []}),
    ("response.content_part.done", {**AT, "part": {**PART, "text": "Hello"}}),
    ("response.output_item.done", {"output_index": 0, "item": message("Hello")}),
    ("response.completed", {"response": response_doc("completed", [message("Hello")], USAGE_R)}),
)

RS = {"item_id": "rs_1", "output_index": 0, "summary_index": 0}
FC = {"item_id": "fc_1", "output_index": 1}
REASONING_DONE = {"type": "reasoning", "id": "rs_1",
                  "summary": [{"type": "summary_text", "text": "Plan."}]}
CALL_DONE = {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "f",
             "arguments": '{"a":1}', "status": "completed"}

# blocks: 0 created, 1 in_progress, 2 rs added, 3 summary part added, 4 summary delta,
# 5 summary done, 6 summary part done, 7 rs done, 8 fc added, 9 args delta, 10 args done,
# 11 fc done, 12 completed
RESP_TOOLS = events(
    *OPENING,
    ("response.output_item.added", {"output_index": 0, "item": {
        "type": "reasoning", "id": "rs_1", "summary": []}}),
    ("response.reasoning_summary_part.added", {**RS, "part": {"type": "summary_text",
                                                              "text": ""}}),
    ("response.reasoning_summary_text.delta", {**RS, "delta": "Plan."}),
    ("response.reasoning_summary_text.done", {**RS, "text": "Plan."}),
    ("response.reasoning_summary_part.done", {**RS, "part": {"type": "summary_text",
                                                             "text": "Plan."}}),
    ("response.output_item.done", {"output_index": 0, "item": REASONING_DONE}),
    ("response.output_item.added", {"output_index": 1, "item": {
        **CALL_DONE, "arguments": "", "status": "in_progress"}}),
    ("response.function_call_arguments.delta", {**FC, "delta": '{"a":1}'}),
    ("response.function_call_arguments.done", {**FC, "arguments": '{"a":1}'}),
    ("response.output_item.done", {"output_index": 1, "item": CALL_DONE}),
    ("response.completed", {"response": response_doc(
        "completed", [REASONING_DONE, CALL_DONE], USAGE_R)}),
)

FAILED_ERROR = {"code": "upstream_retry_diverged", "message": "codex retried"}
# blocks: 0 created, 1 in_progress, 2 added, 3 part added, 4 delta, 5 text done, 6 part done,
# 7 item done, 8 failed
RESP_FAILED = events(
    *OPENING,
    ("response.output_item.added", {"output_index": 0, "item": message("", "in_progress")}),
    ("response.content_part.added", {**AT, "part": PART}),
    ("response.output_text.delta", {**AT, "delta": "Hel", "logprobs": []}),
    ("response.output_text.done", {**AT, "text": "Hel", "logprobs": []}),
    ("response.content_part.done", {**AT, "part": {**PART, "text": "Hel"}}),
    ("response.output_item.done", {"output_index": 0, "item": message("Hel", "incomplete")}),
    ("response.failed", {"response": response_doc(
        "failed", [message("Hel", "incomplete")], USAGE_R, error=FAILED_ERROR)}),
)

RESP_INCOMPLETE = RESP_TEXT.replace(b'"status": "completed"', b'"status": "incomplete"').replace(
    b"response.completed", b"response.incomplete").replace(
    b'"incomplete_details": null, "model": "codex-5", "output": [{',
    b'"incomplete_details": {"reason": "max_output_tokens"}, "model": "codex-5", "output": [{')

RESP_JSON = json.dumps(response_doc("completed", [REASONING_DONE, message("Hello"), CALL_DONE],
                                    USAGE_R)).encode()


def responses(model: str | None = None) -> Checker:
    return lambda body: check_responses_stream(body, model=model)


def redit(i: int, path: tuple[str | int, ...], value: object) -> Mutation:
    """Set (or DELETE) a JSON path in the data line of block i (an event block)."""

    def mutate(body: bytes) -> bytes:
        blocks = _blocks(body)
        head, data = blocks[i].split(b"\ndata: ")
        doc = json.loads(data)
        _apply(doc, path, value)
        blocks[i] = head + b"\ndata: " + json.dumps(doc).encode()
        return _join(blocks)

    return mutate


def test_valid_responses_transcripts() -> None:
    for body in (RESP_TEXT, RESP_TOOLS, RESP_FAILED, RESP_INCOMPLETE):
        assert check_responses_stream(body, model="codex-5") == []
    assert check_responses_json(RESP_JSON, model="codex-5") == []
    assert check_responses_json(json.loads(RESP_JSON)) == []


def test_collect_responses_stream() -> None:
    transcript = collect_responses_stream(RESP_TEXT)
    assert transcript.text == "Hello" and transcript.terminal == "response.completed"
    assert transcript.status == "completed" and transcript.usage == USAGE_R
    assert transcript.types()[0] == "response.created" and len(transcript.events) == 10
    failed = collect_responses_stream(RESP_FAILED)
    assert failed.terminal == "response.failed" and failed.response is not None
    assert failed.response["error"] == FAILED_ERROR
    blocks = parse_responses_sse(RESP_TEXT)
    assert blocks[5].comments == (": keepalive 15000",) and blocks[5].name is None
    assert blocks[4].name == "response.output_text.delta" and blocks[4].json["delta"] == "Hel"


def _done_item_text(text: str) -> Mutation:
    return redit(9, ("item", "content", 0, "text"), text)


RESPONSES_MUTATIONS: list[tuple[str, bytes, Checker, Mutation, str, int | None]] = [
    # framing
    ("no-terminal", RESP_TEXT, responses(), drop(10), "missing-terminal", None),
    ("two-terminals", RESP_TEXT, responses(), duplicate(10), "after-terminal", 11),
    ("comment-after-terminal", RESP_TEXT, responses(), append(b": keepalive 1\n\n"),
     "after-terminal", 11),
    ("blank-line-after-terminal", RESP_TEXT, responses(), append(b"\n"), "after-terminal", None),
    ("done-after-terminal", RESP_TEXT, responses(), append(DONE), "after-terminal", 11),
    ("done-before-terminal", RESP_TEXT, responses(), insert(10, b"data: [DONE]"),
     "done-in-responses", 10),
    ("unterminated", RESP_TEXT, responses(), lambda b: b[:-1], "unterminated-frame", 10),
    ("crlf", RESP_TEXT, responses(), replace(b"\n", b"\r\n"), "bad-line-ending", None),
    ("not-json", RESP_TEXT, responses(), replace(b'"delta": "lo"', b'"delta": lo'),
     "bad-json", 6),
    ("id-field", RESP_TEXT, responses(), insert(4, b"id: 4"), "id-field", 4),
    ("retry-field", RESP_TEXT, responses(), insert(0, b"retry: 100"), "retry-field", 0),
    ("no-event-line", RESP_TEXT, responses(),
     replace(b"event: response.output_text.done\n", b""), "missing-event-field", 7),
    ("two-data-lines", RESP_TEXT, responses(),
     replace(b'event: response.content_part.done\ndata: ',
             b'event: response.content_part.done\ndata: {}\ndata: '), "multi-line-data", 8),
    ("event-name-mismatch", RESP_TEXT, responses(),
     replace(b"event: response.output_text.done\n", b"event: response.output_text.delta\n"),
     "event-type-mismatch", 7),
    ("unknown-event", RESP_TEXT, responses(), chain(
        replace(b"event: response.content_part.done\n", b"event: response.fancy\n"),
        replace(b'"type": "response.content_part.done"', b'"type": "response.fancy"')),
     "unknown-event", 8),
    # sequence numbers and order
    ("sequence-repeats", RESP_TEXT, responses(), redit(6, ("sequence_number",), 4),
     "sequence-not-increasing", 6),
    ("sequence-missing", RESP_TEXT, responses(), redit(3, ("sequence_number",), DELETE),
     "bad-sequence-number", 3),
    ("created-not-first", RESP_TEXT, responses(), swap(0, 1), "first-not-created", 0),
    ("two-created", RESP_TEXT, responses(), redit(1, ("type",), "response.created"),
     "event-type-mismatch", 1),
    ("in-progress-late", RESP_TEXT, responses(), chain(swap(1, 2)), "misplaced-in-progress", 2),
    ("response-id-changed", RESP_TEXT, responses(), redit(10, ("response", "id"), "resp_2"),
     "response-id-changed", 10),
    ("model-mismatch", RESP_TEXT, responses("codex-5-high"), lambda b: b, "model-mismatch", 0),
    ("lifecycle-not-in-progress", RESP_TEXT, responses(),
     redit(1, ("response", "status"), "completed"), "bad-status", 1),
    ("usage-before-final", RESP_TEXT, responses(), redit(0, ("response", "usage"), USAGE_R),
     "bad-usage", 0),
    # items
    ("delta-before-part", RESP_TEXT, responses(), swap(3, 4), "part-not-open", 3),
    ("delta-outside-item", RESP_TEXT, responses(), chain(drop(3), drop(2)),
     "event-outside-item", 2),
    ("delta-wrong-item", RESP_TEXT, responses(), redit(4, ("item_id",), "msg_9"),
     "item-mismatch", 4),
    ("delta-wrong-index", RESP_TEXT, responses(), redit(6, ("output_index",), 1),
     "item-mismatch", 6),
    ("added-wrong-index", RESP_TEXT, responses(), redit(2, ("output_index",), 1),
     "bad-output-index", 2),
    ("added-twice", RESP_TEXT, responses(), duplicate(2), "item-overlap", 3),
    ("added-done", RESP_TEXT, responses(), redit(2, ("item", "status"), "completed"),
     "item-status", 2),
    ("part-index", RESP_TEXT, responses(), redit(3, ("content_index",), 1),
     "bad-content-index", 3),
    ("item-never-done", RESP_TEXT, responses(), drop(9), "unfinished-item", 9),
    ("part-never-done", RESP_TEXT, responses(), drop(8), "unfinished-part", 8),
    ("delta-after-text-done", RESP_TEXT, responses(), swap(6, 7), "delta-after-done", 7),
    ("done-in-progress", RESP_TEXT, responses(), redit(9, ("item", "status"), "in_progress"),
     "item-status", 9),
    ("duplicate-item-id", RESP_TOOLS, responses(), chain(
        redit(8, ("item", "id"), "rs_1"), redit(9, ("item_id",), "rs_1"),
        redit(10, ("item_id",), "rs_1"), redit(11, ("item", "id"), "rs_1")),
     "duplicate-item-id", 8),
    # text adds up
    ("text-done-differs", RESP_TEXT, responses(), redit(7, ("text",), "Help"),
     "text-mismatch", 7),
    ("part-done-differs", RESP_TEXT, responses(), redit(8, ("part", "text"), "Hell"),
     "text-mismatch", 8),
    ("item-done-differs", RESP_TEXT, responses(), _done_item_text("Hello!"), "text-mismatch", 9),
    ("final-output-differs", RESP_TEXT, responses(),
     redit(10, ("response", "output", 0, "content", 0, "text"), "Hi"),
     "final-output-mismatch", 10),
    ("final-output-missing-item", RESP_TOOLS, responses(),
     redit(12, ("response", "output"), [CALL_DONE]), "final-output-mismatch", 12),
    ("summary-done-differs", RESP_TOOLS, responses(), redit(5, ("text",), "Plan"),
     "text-mismatch", 5),
    ("summary-item-differs", RESP_TOOLS, responses(),
     redit(7, ("item", "summary", 0, "text"), "Other."), "summary-mismatch", 7),
    ("arguments-done-differs", RESP_TOOLS, responses(), redit(10, ("arguments",), "{}"),
     "arguments-mismatch", 10),
    ("arguments-item-differs", RESP_TOOLS, responses(), redit(11, ("item", "arguments"), "{}"),
     "arguments-mismatch", 11),
    ("arguments-never-done", RESP_TOOLS, responses(), drop(10), "arguments-not-done", 10),
    ("arguments-on-message", RESP_TEXT, responses(),
     insert(4, b'event: response.function_call_arguments.delta\ndata: {"type": '
               b'"response.function_call_arguments.delta", "sequence_number": 4, '
               b'"item_id": "msg_1", "output_index": 0, "delta": "x"}'),
     "item-mismatch", 4),
    ("call-no-name", RESP_TOOLS, responses(), redit(11, ("item", "name"), ""), "bad-item", 11),
    # terminal status
    ("terminal-status", RESP_TEXT, responses(), redit(10, ("response", "status"), "incomplete"),
     "terminal-status", 10),
    ("incomplete-without-reason", RESP_INCOMPLETE, responses(),
     redit(10, ("response", "incomplete_details"), None), "status-mismatch", 10),
    ("failed-without-error", RESP_FAILED, responses(), redit(8, ("response", "error"), None),
     "status-mismatch", 8),
    ("error-on-completed", RESP_TEXT, responses(),
     redit(10, ("response", "error"), FAILED_ERROR), "status-mismatch", 10),
    ("message-status-vs-response", RESP_INCOMPLETE, responses(), chain(
        redit(9, ("item", "status"), "completed"),
        redit(10, ("response", "output", 0, "status"), "completed")), "item-status", 10),
    ("terminal-no-usage", RESP_TEXT, responses(), redit(10, ("response", "usage"), DELETE),
     "missing-usage", 10),
    ("terminal-usage-total", RESP_TEXT, responses(),
     redit(10, ("response", "usage", "total_tokens"), 17), "usage-total-mismatch", 10),
    ("terminal-usage-details", RESP_FAILED, responses(),
     redit(8, ("response", "usage", "input_tokens_details"), {}), "bad-usage", 8),
]


@pytest.mark.parametrize(
    ("base", "check", "mutate", "rule", "index"),
    [pytest.param(*case[1:], id=case[0]) for case in RESPONSES_MUTATIONS],
)
def test_responses_stream_mutation_is_reported(
    base: bytes, check: Checker, mutate: Mutation, rule: str, index: int | None
) -> None:
    assert check_responses_stream(base) == [], "the base transcript must be valid"
    found = check(mutate(base))
    assert (index, rule) in {(v.index, v.rule) for v in found}, "\n".join(map(str, found))


def _become_envelope(doc: dict[str, Any]) -> None:
    doc.clear()
    doc.update(json.loads(ERROR_JSON))


RESPONSES_JSON_MUTATIONS: list[tuple[str, JsonMutation, str]] = [
    ("bad-id", set_at(("id",), "chatcmpl-1"), "bad-id"),
    ("bad-object", set_at(("object",), "chat.completion"), "bad-object"),
    ("created-string", set_at(("created_at",), "now"), "bad-created"),
    ("model-missing", set_at(("model",), DELETE), "bad-model"),
    ("status-bogus", set_at(("status",), "done"), "bad-status"),
    ("status-in-progress", set_at(("status",), "in_progress"), "bad-status"),
    ("completed-with-error", set_at(("error",), FAILED_ERROR), "status-mismatch"),
    ("incomplete-no-details", set_at(("status",), "incomplete"), "status-mismatch"),
    ("failed-no-error", set_at(("status",), "failed"), "status-mismatch"),
    ("usage-missing", set_at(("usage",), DELETE), "missing-usage"),
    ("usage-total", set_at(("usage", "output_tokens"), 5), "usage-total-mismatch"),
    ("usage-float", set_at(("usage", "input_tokens"), 1.5), "bad-usage"),
    ("output-not-list", set_at(("output",), {}), "bad-output"),
    ("no-parallel-key", set_at(("parallel_tool_calls",), DELETE), "missing-key"),
    ("no-tools-key", set_at(("tools",), DELETE), "missing-key"),
    ("item-unknown-type", set_at(("output", 1, "type"), "web_search_call"), "bad-item-type"),
    ("item-no-id", set_at(("output", 1, "id"), DELETE), "bad-item"),
    ("message-role", set_at(("output", 1, "role"), "user"), "bad-item"),
    ("message-content", set_at(("output", 1, "content"), "Hello"), "bad-item"),
    ("part-no-annotations", set_at(("output", 1, "content", 0, "annotations"), DELETE),
     "bad-item"),
    ("part-text-null", set_at(("output", 1, "content", 0, "text"), None), "bad-item"),
    ("message-status", set_at(("output", 1, "status"), "incomplete"), "item-status"),
    ("call-no-call-id", set_at(("output", 2, "call_id"), DELETE), "bad-item"),
    ("call-arguments-object", set_at(("output", 2, "arguments"), {}), "bad-item"),
    ("reasoning-summary", set_at(("output", 0, "summary"), [{"type": "text"}]), "bad-item"),
    ("duplicate-ids", set_at(("output", 2, "id"), "rs_1"), "duplicate-item-id"),
    ("envelope", _become_envelope, "error-body"),
]


@pytest.mark.parametrize(("mutate", "rule"),
                         [pytest.param(*c[1:], id=c[0]) for c in RESPONSES_JSON_MUTATIONS])
def test_responses_json_mutation_is_reported(mutate: JsonMutation, rule: str) -> None:
    doc = json.loads(RESP_JSON)
    assert check_responses_json(doc) == []
    mutate(doc)
    found = check_responses_json(doc)
    assert rule in {v.rule for v in found}, "\n".join(map(str, found))
    assert check_responses_json(json.dumps(doc).encode()) == found

"""Golden transcripts: what the proxy puts on the wire for a fixed set of requests.

One file per case under ``fixtures/goldens/<case>.golden``:

* a JSON header (indented, so it diffs line by line): case name, method, path, the exact
  request body, whether it was authenticated, the proxy settings that differ from the test
  defaults, the response status, a few response headers and free-text notes;
* the separator line :data:`SEPARATOR`;
* the response body, byte for byte as it was received (an SSE body keeps every frame and blank
  line, a JSON body is the single line the server wrote, no newline is added at the end).

Only three things are normalised, all of them values that differ on every run:
``"chatcmpl-…"``/``"cmpl-…"`` ids become ``"chatcmpl-<id>"``/``"cmpl-<id>"`` (Responses ids
``"resp_…"``, ``"msg_…"``, ``"rs_…"``, ``"fc_…"`` become ``"resp_<id>"`` …), ``"created":<n>`` and
``"created_at":<n>`` become 0, and a keepalive comment ``: keepalive <ms>`` becomes
``: keepalive <ts>``.  X-Request-Id is not stored.  Chunk boundaries on the wire are not part of a
golden: the whole body is stored.

Comparing is exact (bytes); a mismatch is reported as a unified diff of the normalised text
(plus, for a JSON body, a diff of the pretty-printed documents).  Goldens are only ever written
when ``QUARTPROXY_UPDATE_GOLDENS=1`` (``nox -s goldens``); otherwise a missing golden fails.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from quartproxy import contract

ROOT = Path(__file__).resolve().parent.parent
GOLDENS_DIR = ROOT / "fixtures" / "goldens"
SUFFIX = ".golden"
UPDATE_ENV = "QUARTPROXY_UPDATE_GOLDENS"
HOW = f"`nox -s goldens` (or `{UPDATE_ENV}=1 pytest tests/test_goldens.py`)"
REGENERATE = (
    f"If the new output is intended, regenerate with {HOW} and review `git diff fixtures/goldens`."
)
MISSING = f"Goldens are never created implicitly: generate it with {HOW}, review it and commit it."
SEPARATOR = "=== body: bytes as received; only ids, created, keepalive timestamps normalised ==="
_SEPARATOR_LINE = b"\n" + SEPARATOR.encode() + b"\n"
API_KEY_HEADER = "Authorization"

# Response headers worth pinning (the rest — date, server, X-Request-Id, CORS — are not content).
RECORDED_HEADERS = ("content-type", "cache-control", "x-accel-buffering", "www-authenticate",
                    "allow", "retry-after")

Kind = Literal["chat_stream", "chat_json", "completion_stream", "completion_json", "error_json",
               "responses_stream", "responses_json"]

# Files written or removed by the current run in update mode (reported at the end of the run).
CHANGED: list[str] = []


# --------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    """One request whose response is pinned by ``fixtures/goldens/<name>.golden``."""

    name: str
    kind: Kind
    body: dict[str, Any]
    notes: str
    path: str = "/v1/chat/completions"
    settings: dict[str, Any] = field(default_factory=dict)
    auth: bool = True
    # Driven by the test's MockClock instead of real time (see test_goldens.py).
    mock_clock: bool = False

    @property
    def file(self) -> Path:
        return GOLDENS_DIR / f"{self.name}{SUFFIX}"

    @property
    def app_server(self) -> bool:
        """Served by the app-server backend (a long-lived fake ``codex app-server`` worker)."""
        return self.settings.get("backend") == "app-server"

    @property
    def include_usage(self) -> bool:
        options = self.body.get("stream_options")
        return isinstance(options, dict) and options.get("include_usage") is True


def _chat(prompt: str, **extra: Any) -> dict[str, Any]:
    return {"model": "codex-5", "messages": [{"role": "user", "content": prompt}], **extra}


def _legacy(prompt: str, **extra: Any) -> dict[str, Any]:
    return {"model": "codex-5", "prompt": prompt, **extra}


def _responses(prompt: str, **extra: Any) -> dict[str, Any]:
    return {"model": "codex-5", "input": prompt, **extra}


RESPONSES = "/v1/responses"


USAGE = {"include_usage": True}
KEEPALIVE_SETTINGS = {"sse_keepalive_ms": 1000, "stream_idle_timeout_ms": 2500}

CASES: tuple[Case, ...] = (
    Case("chat_json_minimal", "chat_json", _chat("hi"),
         "Minimal prompt, non-stream; fake child scenario normal (codex usage counts)."),
    Case("chat_stream_minimal", "chat_stream", _chat("hi", stream=True),
         "Minimal prompt, stream without include_usage: role, 10 content chunks, finish, [DONE]."),
    Case("chat_stream_include_usage", "chat_stream",
         _chat("hi", stream=True, stream_options=USAGE),
         "include_usage: usage null on every chunk, one usage chunk (choices []) after finish."),
    Case("chat_stream_multi_chunk", "chat_stream",
         _chat("SCENARIO=multi_chunk DELTAS=8", stream=True, stream_options=USAGE),
         "One content chunk per codex delta, in order."),
    Case("chat_stream_truncation", "chat_stream",
         _chat("SCENARIO=no_complete", stream=True, stream_options=USAGE),
         "Child exits before task_complete: finish length, estimated usage, [DONE]."),
    Case("chat_json_truncation", "chat_json", _chat("SCENARIO=no_complete"),
         "Child exits before task_complete: 200 with finish length and the partial text."),
    Case("chat_json_codex_error", "error_json", _chat("SCENARIO=error"),
         "codex error without answer text (it gave up on a context-window overflow): 400 "
         "context_length_exceeded with codex's first line."),
    Case("chat_stream_codex_error", "chat_stream",
         _chat("SCENARIO=error", stream=True, stream_options=USAGE),
         "codex error without answer text: role chunk, one error frame "
         "(context_length_exceeded), [DONE]; no usage chunk."),
    Case("chat_stream_retry_replay", "chat_stream",
         _chat("SCENARIO=retry_replay", stream=True, stream_options=USAGE),
         "Retry replays the answer from its start: the repeated prefix is not sent twice."),
    Case("chat_stream_retry_diverge", "chat_stream",
         _chat("SCENARIO=retry_diverge", stream=True, stream_options=USAGE),
         "Retry does not repeat what was sent: error frame upstream_retry_diverged, [DONE]."),
    Case("completion_json", "completion_json", _legacy("hi"),
         "Legacy /v1/completions, non-stream.", path="/v1/completions"),
    Case("completion_stream", "completion_stream",
         _legacy("hi", stream=True, stream_options=USAGE),
         "Legacy stream: text chunks (no role chunk), finish chunk with empty text, usage, [DONE].",
         path="/v1/completions"),
    Case("chat_stream_keepalive", "chat_stream",
         _chat("SCENARIO=stream_hang", stream=True, stream_options=USAGE),
         "stream_hang (3 deltas, then silence) under a MockClock: the test advances virtual time "
         "1 s, 1 s, 0.5 s, so exactly two keepalives precede the idle timeout (2.5 s) that ends "
         "the stream with finish length.",
         settings=KEEPALIVE_SETTINGS, mock_clock=True),
    Case("error_unknown_model_404", "error_json", _chat("hi", model="gpt-nope"),
         "Unknown model: 404 model_not_found, param model."),
    Case("error_stream_not_boolean_400", "error_json", _chat("hi", stream="false"),
         "stream must be a boolean: 400 invalid_request_error, param stream."),
    Case("error_missing_key_401", "error_json", _chat("hi", stream=True),
         "No Authorization header: 401 invalid_api_key with WWW-Authenticate.", auth=False),
    Case("responses_json_minimal", "responses_json", _responses("hi"),
         "Responses API, non-stream: one completed message item, usage in Responses shape.",
         path=RESPONSES),
    Case("responses_stream_minimal", "responses_stream", _responses("hi", stream=True),
         "Responses stream: created, in_progress, message item added, content part added, "
         "10 output_text deltas, text/part/item done, response.completed with usage; no [DONE].",
         path=RESPONSES),
    Case("responses_json_incomplete", "responses_json",
         _responses("SCENARIO=long", max_output_tokens=10),
         "max_output_tokens 10 cuts the answer at 40 characters: status incomplete, reason "
         "max_output_tokens, message item incomplete, estimated usage.", path=RESPONSES),
    Case("responses_stream_incomplete", "responses_stream",
         _responses("SCENARIO=long", max_output_tokens=10, stream=True),
         "The same cut, streamed: the items close as incomplete, then response.incomplete.",
         path=RESPONSES),
    Case("responses_stream_failed_retry_diverge", "responses_stream",
         _responses("SCENARIO=retry_diverge", stream=True),
         "codex's retry contradicts the streamed text: the message closes incomplete, then "
         "response.failed with error upstream_retry_diverged.", path=RESPONSES),
    Case("responses_stream_codex_error", "responses_stream",
         _responses("SCENARIO=error", stream=True),
         "codex error before any text: response.failed with context_length_exceeded and "
         "codex's first line, empty output.", path=RESPONSES),
    Case("responses_json_reasoning", "responses_json", _responses("SCENARIO=reasoning"),
         "Reasoning text becomes a reasoning item (summary parts) before the message item; "
         "usage has cached and reasoning tokens.", path=RESPONSES),
    Case("responses_stream_reasoning", "responses_stream",
         _responses("SCENARIO=reasoning", stream=True),
         "The reasoning item is streamed as one block (summary part/text events) before the "
         "message item.", path=RESPONSES),
    Case("responses_error_previous_response_id_400", "error_json",
         _responses("hi", previous_response_id="resp_abc"),
         "Nothing is stored: previous_response_id is a 400 unsupported_parameter naming it.",
         path=RESPONSES),
)

# ---- the app-server backend: the same requests, one fake worker (fixtures/fake_app_server.py)

APP = {"backend": "app-server", "workers": 1}

APP_CASES: tuple[Case, ...] = (
    Case("app_chat_json_minimal", "chat_json", _chat("hi"),
         "App-server backend, minimal prompt, non-stream: the same body as chat_json_minimal.",
         settings=APP),
    Case("app_chat_stream_minimal", "chat_stream", _chat("hi", stream=True),
         "App-server backend, stream without include_usage: the same frames as "
         "chat_stream_minimal.", settings=APP),
    Case("app_chat_stream_include_usage", "chat_stream",
         _chat("hi", stream=True, stream_options=USAGE),
         "App-server backend, include_usage: usage null on every chunk, then one usage chunk "
         "(codex's counts from thread/tokenUsage/updated).", settings=APP),
    Case("app_chat_json_codex_error", "error_json", _chat("SCENARIO=context_window"),
         "App-server backend: the turn fails with codexErrorInfo contextWindowExceeded before "
         "any text: 400 context_length_exceeded with codex's message.", settings=APP),
    Case("app_chat_stream_codex_error", "chat_stream",
         _chat("SCENARIO=context_window", stream=True, stream_options=USAGE),
         "App-server backend, the same failure streamed: role chunk, one error frame, [DONE]; "
         "no usage chunk (the context-window usage trap is not a count).", settings=APP),
    Case("app_chat_stream_retry_replay", "chat_stream",
         _chat("SCENARIO=retry_replay", stream=True, stream_options=USAGE),
         "App-server backend: a visible retry (error willRetry) replays the answer under a new "
         "item; the repeated prefix is not sent twice.", settings=APP),
)

# Function calling (app-server only): the fake calls the declared tools in order, with
# arguments made from their schemas; the call ids are call_fake_<response>_<output index>.
_WEATHER_PARAMS = {"type": "object", "properties": {
    "city": {"type": "string"},
    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}
_TIME_PARAMS = {"type": "object", "properties": {"tz": {"type": "string"}}}
CHAT_TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather.",
                                      "parameters": _WEATHER_PARAMS}},
    {"type": "function", "function": {"name": "get_time", "description": "Current time.",
                                      "parameters": _TIME_PARAMS}},
]
RESPONSES_TOOLS = [
    {"type": "function", "name": "get_weather", "description": "Current weather.",
     "parameters": _WEATHER_PARAMS},
    {"type": "function", "name": "get_time", "description": "Current time.",
     "parameters": _TIME_PARAMS},
]
_ASK = "Weather and time in Paris?"
_CALLS = (("call_fake_1_0", "get_weather", '{"city": "Paris", "unit": "celsius"}'),
          ("call_fake_1_1", "get_time", '{"tz": "Europe/Paris"}'))
_RESULTS = (("call_fake_1_0", "18C and sunny"), ("call_fake_1_1", "14:05"))
CHAT_FOLLOW_UP = [
    {"role": "user", "content": f"{_ASK} SCENARIO=tool_calls_parallel"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}
        for call_id, name, args in _CALLS]},
    *({"role": "tool", "tool_call_id": call_id, "content": output}
      for call_id, output in _RESULTS),
]
RESPONSES_FOLLOW_UP = [
    {"role": "user", "content": f"{_ASK} SCENARIO=tool_calls_parallel"},
    *({"type": "function_call", "call_id": call_id, "name": name, "arguments": args}
      for call_id, name, args in _CALLS),
    *({"type": "function_call_output", "call_id": call_id, "output": output}
      for call_id, output in _RESULTS),
]

_TOOL_SCENARIOS = (
    ("tool_call", "one call to the first declared tool (get_weather)"),
    ("tool_calls_parallel", "two calls in one model response (get_weather, get_time)"),
    ("text_then_call", "the text 'Let me check.' as a message, then one call"),
)


def _tool_cases() -> tuple[Case, ...]:
    cases: list[Case] = []
    for scenario, what in _TOOL_SCENARIOS:
        prompt = f"{_ASK} SCENARIO={scenario}"
        cases += [
            Case(f"app_tools_{scenario}_chat_json", "chat_json",
                 _chat(prompt, tools=CHAT_TOOLS),
                 f"App-server function calling, {what}: message.tool_calls, finish_reason "
                 "tool_calls; the turn ends at the end of the model response (codex waits for "
                 "the results, which come in the next request).", settings=APP),
            Case(f"app_tools_{scenario}_chat_stream", "chat_stream",
                 _chat(prompt, tools=CHAT_TOOLS, stream=True, stream_options=USAGE),
                 f"App-server function calling, {what}, streamed: each call as delta.tool_calls "
                 "(index, id, type, name, then its arguments), finish tool_calls, usage.",
                 settings=APP),
            Case(f"app_tools_{scenario}_responses_json", "responses_json",
                 _responses(prompt, tools=RESPONSES_TOOLS),
                 f"App-server function calling through the Responses API, {what}: "
                 "function_call output items (call_id, name, arguments), status completed.",
                 path=RESPONSES, settings=APP),
            Case(f"app_tools_{scenario}_responses_stream", "responses_stream",
                 _responses(prompt, tools=RESPONSES_TOOLS, stream=True),
                 f"App-server function calling through the Responses API, {what}, streamed: "
                 "each function_call item added, its arguments delta/done, item done.",
                 path=RESPONSES, settings=APP),
        ]
    cases += [
        Case("app_tools_follow_up_chat_json", "chat_json",
             _chat("", tools=CHAT_TOOLS) | {"messages": CHAT_FOLLOW_UP},
             "The follow-up: the history carries the assistant's two tool calls and their "
             "results (role tool); codex answers from them in text, finish stop.", settings=APP),
        Case("app_tools_follow_up_chat_stream", "chat_stream",
             _chat("", tools=CHAT_TOOLS, stream=True, stream_options=USAGE)
             | {"messages": CHAT_FOLLOW_UP},
             "The follow-up, streamed: the text answer from the tool results.", settings=APP),
        Case("app_tools_follow_up_responses_json", "responses_json",
             _responses("", tools=RESPONSES_TOOLS) | {"input": RESPONSES_FOLLOW_UP},
             "The follow-up through the Responses API: function_call and function_call_output "
             "input items; a completed message answers from the outputs.",
             path=RESPONSES, settings=APP),
        Case("app_tools_follow_up_responses_stream", "responses_stream",
             _responses("", tools=RESPONSES_TOOLS, stream=True) | {"input": RESPONSES_FOLLOW_UP},
             "The follow-up through the Responses API, streamed.", path=RESPONSES, settings=APP),
    ]
    return tuple(cases)


CASES = CASES + APP_CASES + _tool_cases()

# Requests that both backends must answer with the same bytes (after normalising).
SAME_ON_BOTH_BACKENDS = (
    ("chat_json_minimal", "app_chat_json_minimal"),
    ("chat_stream_minimal", "app_chat_stream_minimal"),
    ("chat_stream_include_usage", "app_chat_stream_include_usage"),
    ("chat_stream_retry_replay", "app_chat_stream_retry_replay"),
)

CASES_BY_NAME = {case.name: case for case in CASES}


# --------------------------------------------------------------------------- recording


@dataclass(frozen=True)
class Recording:
    status: int
    headers: dict[str, str]
    body: bytes  # raw, as received


def request_headers(case: Case, api_key: str) -> dict[str, str]:
    return {API_KEY_HEADER: f"Bearer {api_key}"} if case.auth else {}


def recorded_headers(resp: httpx.Response) -> dict[str, str]:
    return {name: resp.headers[name] for name in RECORDED_HEADERS if name in resp.headers}


async def record(client: httpx.AsyncClient, case: Case, api_key: str) -> Recording:
    """Send the case's request; the raw body bytes exactly as they came off the socket."""
    async with client.stream(
        "POST", case.path, json=case.body, headers=request_headers(case, api_key)
    ) as resp:
        raw = b"".join([chunk async for chunk in resp.aiter_raw()])
    return Recording(resp.status_code, recorded_headers(resp), raw)


# --------------------------------------------------------------------------- normalising

_ID = re.compile(rb'"(chatcmpl|cmpl)-[^"\\]+"')
_RESPONSES_ID = re.compile(rb'"(resp|msg|rs|fc)_[0-9a-f]{48}"')
_CREATED = re.compile(rb'("created(?:_at)?":\s*)\d+')
_KEEPALIVE = re.compile(rb"^: keepalive \d+$", re.MULTILINE)


def normalise(body: bytes) -> bytes:
    """Replace ids, ``created`` and keepalive timestamps; every other byte is kept."""
    body = _ID.sub(rb'"\1-<id>"', body)
    body = _RESPONSES_ID.sub(rb'"\1_<id>"', body)
    body = _CREATED.sub(rb"\g<1>0", body)
    return _KEEPALIVE.sub(b": keepalive <ts>", body)


def render(case: Case, rec: Recording) -> bytes:
    """The golden file content for a recording (normalised)."""
    header = {
        "case": case.name,
        "method": "POST",
        "path": case.path,
        "request": case.body,
        "auth": case.auth,
        "proxy_settings": case.settings,
        "status": rec.status,
        "headers": rec.headers,
        "notes": case.notes,
    }
    text = json.dumps(header, indent=2, ensure_ascii=False)
    return text.encode() + _SEPARATOR_LINE + normalise(rec.body)


def split_golden(data: bytes) -> tuple[dict[str, Any], bytes]:
    """(header, body) of a golden file."""
    head, sep, body = data.partition(_SEPARATOR_LINE)
    if not sep:
        raise ValueError(f"no separator line {SEPARATOR!r}")
    return json.loads(head), body


# --------------------------------------------------------------------------- contract


def contract_violations(case: Case, rec: Recording) -> list[contract.Violation]:
    """Run the wire-contract checker that fits the case on the raw recorded body."""
    model = case.body.get("model")
    model = model if isinstance(model, str) else None
    if case.kind == "chat_stream":
        return contract.check_chat_stream(rec.body, include_usage=case.include_usage, model=model)
    if case.kind == "completion_stream":
        return contract.check_completion_stream(
            rec.body, include_usage=case.include_usage, model=model
        )
    if case.kind == "chat_json":
        return contract.check_chat_json(rec.body, model=model)
    if case.kind == "completion_json":
        return contract.check_completion_json(rec.body, model=model)
    if case.kind == "responses_stream":
        return contract.check_responses_stream(rec.body, model=model)
    if case.kind == "responses_json":
        return contract.check_responses_json(rec.body, model=model)
    return contract.check_error_json(rec.body)


# --------------------------------------------------------------------------- comparing


def _show(line: str) -> str:
    """A diff line; control characters (other than tab) are made visible."""
    if any(ord(ch) < 32 and ch != "\t" for ch in line):
        return repr(line)[1:-1]
    return line


def _lines(data: bytes) -> list[str]:
    # split("\n") is lossless: a missing or extra final newline shows up as a differing line.
    return [_show(line) for line in data.decode("utf-8", errors="backslashreplace").split("\n")]


def _json_view(data: bytes) -> list[str] | None:
    try:
        _, body = split_golden(data)
        doc = json.loads(body)
    except ValueError:
        return None
    if not isinstance(doc, (dict, list)):
        return None
    return json.dumps(doc, indent=2, ensure_ascii=False).split("\n")


def diff(expected: bytes, actual: bytes, label: str) -> str:
    """Unified diff of two golden texts (empty when they are byte-identical)."""
    if expected == actual:
        return ""
    out = list(difflib.unified_diff(
        _lines(expected), _lines(actual), fromfile=f"{label} (stored)",
        tofile=f"{label} (server output, normalised)", lineterm="", n=2,
    ))
    if not out:  # cannot happen with split("\n"), but never report "no diff" for a mismatch
        out = [f"bytes differ: stored {expected!r}", f"          got {actual!r}"]
    pretty_expected, pretty_actual = _json_view(expected), _json_view(actual)
    if pretty_expected and pretty_actual and pretty_expected != pretty_actual:
        out.append("")
        out.append("JSON body, pretty-printed:")
        out.extend(difflib.unified_diff(
            pretty_expected, pretty_actual, fromfile="stored body", tofile="server body",
            lineterm="", n=2,
        ))
    return "\n".join(out)


def relative(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def compare(golden: Path, actual: bytes) -> str:
    """Problem report for ``actual`` against the golden file; empty when they match."""
    label = relative(golden)
    if not golden.exists():
        return f"golden {label} is missing.\n{MISSING}"
    found = diff(golden.read_bytes(), actual, label)
    if not found:
        return ""
    return f"golden {label} does not match the server's output:\n{found}\n\n{REGENERATE}"


def update_mode() -> bool:
    return os.environ.get(UPDATE_ENV) == "1"


def write_golden(golden: Path, actual: bytes) -> bool:
    """Write ``actual`` if it differs from what is stored; True when the file changed."""
    if golden.exists() and golden.read_bytes() == actual:
        return False
    state = "updated" if golden.exists() else "created"
    golden.parent.mkdir(parents=True, exist_ok=True)
    golden.write_bytes(actual)
    CHANGED.append(f"{state}: {relative(golden)}")
    print(f"golden {state}: {relative(golden)}")
    return True


def check(case: Case, rec: Recording, golden: Path | None = None) -> str:
    """Contract-check and compare (or, in update mode, write) one case; the problem report."""
    golden = case.file if golden is None else golden
    problems: list[str] = []
    violations = contract_violations(case, rec)
    if violations:
        listed = "\n".join(f"  {v}" for v in violations)
        problems.append(f"{case.name}: the response breaks the wire contract:\n{listed}")
    actual = render(case, rec)
    if update_mode():
        if not violations:  # never bless a body that breaks the contract
            write_golden(golden, actual)
    else:
        found = compare(golden, actual)
        if found:
            problems.append(found)
    return "\n\n".join(problems)


def orphans() -> list[Path]:
    """Golden files no case produces any more."""
    return sorted(p for p in GOLDENS_DIR.glob(f"*{SUFFIX}") if p.stem not in CASES_BY_NAME)

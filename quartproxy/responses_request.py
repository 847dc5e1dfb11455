"""``POST /v1/responses`` bodies to a :class:`~quartproxy.validation.CompletionRequest`. Sans-io.

The Responses API is a third spelling of the same turn: ``input`` items become the
:class:`~quartproxy.conversation.Conversation` that chat ``messages`` become, ``instructions``
goes where system messages go, ``function_call``/``function_call_output`` items become assistant
``tool_calls`` and ``tool`` messages, and ``max_output_tokens`` is chat's ``max_tokens``. From
there on nothing knows which API the request came from, except the renderer.

Three kinds of fields (the table is :data:`FIELDS`):

* honoured — they change what codex is asked or what the client gets back;
* accepted — type- and range-checked, echoed in the response object, no effect on the turn
  (``temperature``, ``store``, ``include``, ...): clients send them by default;
* refused — a 400 that names the field and says why, for what cannot be honoured here
  (``previous_response_id``: nothing is stored; images; ``background``; ...). Silently
  ignoring those would give the client a different conversation than the one it asked about.

Unknown top-level fields are ignored, as the chat route does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from . import errors
from .conversation import Conversation, Item, Role, ToolCallRef
from .models import EFFORTS, ModelCatalog
from .tool_request import check_history, parse_tools
from .usage import estimate_tokens
from .validation import CompletionRequest

MESSAGE_ROLES: dict[str, Role] = {
    "user": "user", "assistant": "assistant", "system": "system", "developer": "developer",
}
TEXT_PARTS = frozenset({"input_text", "output_text", "text"})
NON_TEXT_PARTS = {"input_image": "images", "input_file": "files", "input_audio": "audio"}
SUMMARIES = ("auto", "concise", "detailed")
VERBOSITIES = ("low", "medium", "high")
TRUNCATIONS = ("auto", "disabled")
SERVICE_TIERS = ("auto", "default", "flex", "scale", "priority")
CACHE_RETENTIONS = ("in_memory", "24h")
METADATA_MAX_PAIRS = 16
METADATA_KEY_MAX = 64
METADATA_VALUE_MAX = 512

# What each documented request field does here (also what the route's docs are made from).
FIELDS: dict[str, str] = {
    "model": "honoured: resolved like chat (aliases, -low/-high effort suffixes)",
    "input": "honoured: string, or message/function_call/function_call_output items",
    "instructions": "honoured: placed where system messages go, ahead of them",
    "stream": "honoured: strict boolean",
    "max_output_tokens": "honoured: chat's max_tokens (the answer is cut, status incomplete)",
    "reasoning.effort": "honoured: same whitelist as chat",
    "tools": "honoured: function tools (native on app-server; 400 on proto)",
    "tool_choice": "honoured as on chat (best effort for required/named)",
    "parallel_tool_calls": "honoured: false keeps only the first call",
    "text.format": "honoured: text; json_schema on app-server (output schema), 400 elsewhere",
    "user": "honoured: recorded like chat's user",
    "metadata": "accepted, echoed: an object of up to 16 string values",
    "store": "accepted (boolean); nothing is stored, the response says store: false",
    "temperature": "accepted (0-2), echoed, no effect",
    "top_p": "accepted (0-1), echoed, no effect",
    "reasoning.summary": "accepted, echoed; codex decides what reasoning it reports",
    "text.verbosity": "accepted, echoed, no effect",
    "include": "accepted (array of strings), no effect",
    "truncation": "accepted, echoed, no effect",
    "service_tier": "accepted; the response says default",
    "top_logprobs": "accepted (0-20), echoed; no logprobs are produced",
    "prompt_cache_key": "accepted, echoed",
    "prompt_cache_retention": "accepted, echoed",
    "safety_identifier": "accepted, echoed",
    "stream_options": "accepted (include_obfuscation), no effect",
    "background": "400 when true: background responses need storage",
    "previous_response_id": "400: nothing is stored; send the whole conversation in input",
    "conversation": "400: nothing is stored; send the whole conversation in input",
    "prompt": "400: prompt templates are not available",
    "max_tool_calls": "400: use parallel_tool_calls: false for at most one call",
    "input images/files/audio": "400: only text input",
}


@dataclass(frozen=True, slots=True)
class ResponsesRequest:
    """The turn to run, and what the response object echoes back about the request."""

    request: CompletionRequest
    echo: dict[str, Any]


# ----------------------------------------------------------------------------- small checks


def _unsupported(message: str, param: str) -> errors.ApiError:
    return errors.invalid(message, param, code="unsupported_parameter")


def _bool(body: dict[str, Any], name: str, param: str | None = None) -> bool | None:
    value = body.get(name)
    if value is not None and not isinstance(value, bool):
        raise errors.invalid(f"'{param or name}' must be a boolean.", param or name)
    return value


def _str(body: dict[str, Any], name: str, param: str | None = None) -> str | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise errors.invalid(f"'{param or name}' must be a string.", param or name)
    return value


def _choice(body: dict[str, Any], name: str, allowed: tuple[str, ...],
            param: str | None = None) -> str | None:
    value = body.get(name)
    if value is not None and value not in allowed:
        raise errors.invalid(
            f"Invalid '{param or name}' {value!r}; expected one of: {', '.join(allowed)}.",
            param or name,
        )
    return value


def _int(body: dict[str, Any], name: str, low: int, high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if (not isinstance(value, int) or isinstance(value, bool) or value < low
            or (high is not None and value > high)):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise errors.invalid(f"'{name}' must be an integer {bound}.", name)
    return value


def _number(body: dict[str, Any], name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if (not isinstance(value, int | float) or isinstance(value, bool)
            or not math.isfinite(value) or not low <= value <= high):
        raise errors.invalid(f"'{name}' must be a number between {low:g} and {high:g}.", name)
    return value


def _object(body: dict[str, Any], name: str, param: str | None = None) -> dict[str, Any] | None:
    value = body.get(name)
    if value is not None and not isinstance(value, dict):
        raise errors.invalid(f"'{param or name}' must be an object.", param or name)
    return value


# ----------------------------------------------------------------------------- refusals


def _refuse_stateful(body: dict[str, Any]) -> None:
    for name in ("previous_response_id", "conversation"):
        if body.get(name) is not None:
            raise _unsupported(
                f"'{name}' is not supported: nothing is stored on this server; send the whole "
                "conversation in 'input'.", name,
            )
    background = _bool(body, "background")
    if background:
        raise _unsupported("'background' responses are not supported: nothing is stored on "
                           "this server to poll.", "background")
    if body.get("prompt") is not None:
        raise _unsupported("'prompt' (stored prompt templates) is not supported; send the "
                           "text in 'instructions' and 'input'.", "prompt")
    if body.get("max_tool_calls") is not None:
        raise _unsupported("'max_tool_calls' is not supported; 'parallel_tool_calls': false "
                           "limits the answer to one call.", "max_tool_calls")


# ----------------------------------------------------------------------------- input


def _part_text(part: Any, param: str) -> str:
    if isinstance(part, str):
        return part
    if not isinstance(part, dict) or not isinstance(part.get("type"), str):
        raise errors.invalid("Each content part must be an object with a 'type'.", param)
    kind = part["type"]
    if kind in TEXT_PARTS:
        text = part.get("text")
        if not isinstance(text, str):
            raise errors.invalid("A text part needs a string 'text'.", f"{param}.text")
        return text
    if kind == "refusal":
        refusal = part.get("refusal")
        return refusal if isinstance(refusal, str) else ""
    if kind in NON_TEXT_PARTS:
        raise _unsupported(
            f"Content parts of type '{kind}' are not supported: codex takes text only "
            f"(no {NON_TEXT_PARTS[kind]}).", f"{param}.type",
        )
    raise errors.invalid(f"Unknown content part type {kind!r}.", f"{param}.type")


def _content(content: Any, param: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise errors.invalid("'content' must be a string or an array of content parts.", param)
    return "\n".join(_part_text(part, f"{param}[{index}]") for index, part in
                     enumerate(content))


def _call_fields(item: dict[str, Any], where: str, names: tuple[str, ...]) -> list[str]:
    values: list[str] = []
    for name in names:
        value = item.get(name)
        if not isinstance(value, str) or (name != "arguments" and not value):
            raise errors.invalid(f"A {item['type']} item needs a string '{name}'.",
                                 f"{where}.{name}")
        values.append(value)
    return values


class _InputBuilder:
    """Input items to conversation items, checking the call/output pairing as it goes.

    Consecutive ``function_call`` items (and an assistant message right before them) become one
    assistant message with several ``tool_calls``, as a chat client would send them; every call
    must get its ``function_call_output`` before the next message, as chat requires.
    """

    def __init__(self) -> None:
        self.items: list[Item] = []
        self.open_calls: dict[str, int] = {}  # call_id -> input index of the function_call
        self.seen_calls: set[str] = set()
        self.calls_follow = False  # the last item can take more calls
        self.index = 0  # of the input item being read

    def message(self, item: dict[str, Any], where: str) -> None:
        role = item.get("role")
        if not isinstance(role, str) or role not in MESSAGE_ROLES:
            raise errors.invalid(
                f"Invalid role {role!r}; expected one of: {', '.join(MESSAGE_ROLES)}.",
                f"{where}.role",
            )
        if "content" not in item or item["content"] is None:
            raise errors.invalid(f"A {role} message needs 'content'.", f"{where}.content")
        text = _content(item["content"], f"{where}.content")
        self._close_calls(where)
        self.items.append(Item(MESSAGE_ROLES[role], text))
        self.calls_follow = role == "assistant"

    def function_call(self, item: dict[str, Any], where: str) -> None:
        call_id, name, arguments = _call_fields(item, where, ("call_id", "name", "arguments"))
        if call_id in self.seen_calls:
            raise errors.invalid(f"Duplicate function_call call_id {call_id!r}.",
                                 f"{where}.call_id")
        self.seen_calls.add(call_id)
        call = ToolCallRef(call_id, name, arguments)
        if self.calls_follow and self.items:
            last = self.items[-1]
            self.items[-1] = Item(last.role, last.text, (*last.tool_calls, call))
        else:
            self._close_calls(where)  # a new assistant turn: earlier calls must be answered
            self.items.append(Item("assistant", "", (call,)))
            self.calls_follow = True
        self.open_calls[call_id] = self.index

    def output(self, item: dict[str, Any], where: str) -> None:
        (call_id,) = _call_fields(item, where, ("call_id",))
        if call_id not in self.open_calls:
            raise errors.invalid(
                f"function_call_output for call_id {call_id!r}, which no earlier function_call "
                "item made (or which was already answered).", f"{where}.call_id",
            )
        del self.open_calls[call_id]
        raw = item.get("output")
        if raw is None:
            raise errors.invalid("A function_call_output item needs 'output'.", f"{where}.output")
        text = _content(raw, f"{where}.output")
        self.items.append(Item("tool", text, (), call_id))
        self.calls_follow = False

    def _close_calls(self, where: str) -> None:
        if self.open_calls:
            call_id, index = next(iter(self.open_calls.items()))
            raise errors.invalid(
                f"The function_call input[{index}] (call_id {call_id!r}) has no "
                f"function_call_output before {where}.", f"input[{index}]",
            )

    def build(self, raw: list[Any]) -> list[Item]:
        for index, item in enumerate(raw):
            where = f"input[{index}]"
            self.index = index
            if isinstance(item, str):
                self.message({"role": "user", "content": item}, where)
                continue
            if not isinstance(item, dict):
                raise errors.invalid("Each input item must be an object.", where)
            kind = item.get("type", "message" if "role" in item else None)
            if kind == "message":
                self.message(item, where)
            elif kind == "function_call":
                self.function_call(item, where)
            elif kind == "function_call_output":
                self.output(item, where)
            elif kind == "reasoning":
                # Earlier output replayed as input (the stateless multi-turn pattern): codex
                # reasons afresh, so its old summary is not part of the conversation.
                continue
            elif kind == "item_reference":
                raise _unsupported("'item_reference' items need stored items; nothing is stored "
                                   "on this server: send the items themselves.", f"{where}.type")
            else:
                raise _unsupported(f"Input items of type {kind!r} are not supported; send "
                                   "message, function_call and function_call_output items.",
                                   f"{where}.type")
        self._close_calls("the end of 'input'")
        return self.items


def parse_input(value: Any, instructions: str | None) -> Conversation:
    """``input`` (and ``instructions``) as a :class:`Conversation`, or a 400 naming the item."""
    if isinstance(value, str):
        if not value:
            raise errors.invalid("'input' must not be empty.", "input")
        return Conversation((Item("user", value),), instructions)
    if not isinstance(value, list) or not value:
        raise errors.invalid("'input' must be a non-empty string or array of input items.",
                             "input")
    items = _InputBuilder().build(value)
    if not items:
        raise errors.invalid("'input' holds no message.", "input")
    conversation = Conversation(tuple(items), instructions)
    if conversation.has_tool_history:
        check_history(conversation, param="input")
    return conversation


# ----------------------------------------------------------------------------- other fields


def _effort(reasoning: dict[str, Any] | None, alias_effort: str | None) -> str | None:
    effort = reasoning.get("effort") if reasoning is not None else None
    if effort is None:
        return alias_effort
    if not isinstance(effort, str) or effort.lower() not in EFFORTS:
        raise errors.invalid(
            f"Invalid reasoning effort {effort!r}; expected one of: {', '.join(EFFORTS)}.",
            "reasoning.effort",
        )
    return effort.lower()


def _metadata(body: dict[str, Any]) -> dict[str, str]:
    value = _object(body, "metadata")
    if value is None:
        return {}
    if len(value) > METADATA_MAX_PAIRS:
        raise errors.invalid(f"'metadata' holds at most {METADATA_MAX_PAIRS} pairs.", "metadata")
    for key, item in value.items():
        if len(key) > METADATA_KEY_MAX:
            raise errors.invalid(f"metadata keys are at most {METADATA_KEY_MAX} characters.",
                                 "metadata")
        if not isinstance(item, str) or len(item) > METADATA_VALUE_MAX:
            raise errors.invalid(
                f"metadata values must be strings of at most {METADATA_VALUE_MAX} characters.",
                f"metadata.{key}",
            )
    return dict(value)


def _text_format(
    body: dict[str, Any], structured_output: bool
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(the ``text`` echo, the output schema for codex or None)."""
    text = _object(body, "text")
    if text is None:
        return {"format": {"type": "text"}}, None
    verbosity = _choice(text, "verbosity", VERBOSITIES, "text.verbosity")
    fmt = _object(text, "format", "text.format")
    schema: dict[str, Any] | None = None
    if fmt is None or fmt.get("type") == "text":
        echo_format: dict[str, Any] = {"type": "text"}
    elif fmt.get("type") == "json_schema":
        name = fmt.get("name")
        if not isinstance(name, str) or not name:
            raise errors.invalid("A json_schema format needs a 'name'.", "text.format.name")
        schema = _object(fmt, "schema", "text.format.schema")
        if schema is None:
            raise errors.invalid("A json_schema format needs a 'schema' object.",
                                 "text.format.schema")
        strict = _bool(fmt, "strict", "text.format.strict")
        description = _str(fmt, "description", "text.format.description")
        if not structured_output:
            raise _unsupported(
                "Structured output ('text.format' json_schema) needs the codex app-server "
                "backend; this server runs codex proto.", "text.format",
            )
        echo_format = {"type": "json_schema", "name": name, "schema": schema, "strict": strict}
        if description is not None:
            echo_format["description"] = description
    elif fmt.get("type") == "json_object":
        raise _unsupported("'text.format' json_object is not supported; use json_schema with "
                           "a schema.", "text.format")
    else:
        raise errors.invalid(f"Unknown 'text.format' type {fmt.get('type')!r}.",
                             "text.format.type")
    echo: dict[str, Any] = {"format": echo_format}
    if verbosity is not None:
        echo["verbosity"] = verbosity
    return echo, schema


def _tool_echo(tools: Any) -> list[dict[str, Any]]:
    """The client's function tools (already validated) as the response lists them."""
    if not isinstance(tools, list):
        return []
    return [
        {"type": "function", "name": tool["name"], "description": tool.get("description"),
         "parameters": tool.get("parameters"), "strict": tool.get("strict")}
        for tool in tools
    ]


def _accepted(body: dict[str, Any]) -> None:
    """Documented fields with no effect here: checked, so a client's bug still shows."""
    include = body.get("include")
    if include is not None and (
        not isinstance(include, list) or not all(isinstance(v, str) for v in include)
    ):
        raise errors.invalid("'include' must be an array of strings.", "include")
    for name in ("prompt_cache_key", "safety_identifier"):
        _str(body, name)
    _choice(body, "prompt_cache_retention", CACHE_RETENTIONS)
    _choice(body, "truncation", TRUNCATIONS)
    _choice(body, "service_tier", SERVICE_TIERS)
    _bool(body, "store")
    options = _object(body, "stream_options")
    if options is not None:
        _bool(options, "include_obfuscation", "stream_options.include_obfuscation")


def parse_responses(
    body: Any, catalog: ModelCatalog, *, max_prompt_tokens: int, structured_output: bool = False
) -> ResponsesRequest:
    """Validate a ``/v1/responses`` body. ``structured_output``: the backend takes an output
    schema (app-server); without it ``text.format`` json_schema is a 400."""
    if not isinstance(body, dict):
        raise errors.invalid("The request body must be a JSON object.")
    _refuse_stateful(body)
    model_value = body.get("model")
    if model_value is not None and not isinstance(model_value, str):
        raise errors.invalid("'model' must be a string.", "model")
    resolved = catalog.resolve(model_value)
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise errors.invalid("'instructions' must be a string.", "instructions")
    if "input" not in body or body["input"] is None:
        raise errors.invalid("'input' is required.", "input")
    conversation = parse_input(body["input"], instructions or None)
    stream = bool(_bool(body, "stream"))
    max_output = _int(body, "max_output_tokens", 1)
    reasoning = _object(body, "reasoning")
    effort = _effort(reasoning, resolved.alias_effort)
    summary = _choice(reasoning, "summary", SUMMARIES, "reasoning.summary") \
        if reasoning is not None else None
    user = _str(body, "user")
    temperature = _number(body, "temperature", 0, 2)
    top_p = _number(body, "top_p", 0, 1)
    top_logprobs = _int(body, "top_logprobs", 0, 20)
    metadata = _metadata(body)
    _accepted(body)
    text_echo, schema = _text_format(body, structured_output)
    tools = parse_tools(body.get("tools"), body.get("tool_choice"),
                        body.get("parallel_tool_calls"), flavor="responses")
    prompt_chars = len(conversation.flatten())
    if max_prompt_tokens > 0 and estimate_tokens(prompt_chars) > max_prompt_tokens:
        raise errors.invalid(
            f"The prompt is about {estimate_tokens(prompt_chars)} tokens, over this server's "
            f"limit of {max_prompt_tokens}.", "input", code="context_length_exceeded",
        )
    request = CompletionRequest(
        kind="responses",
        model=resolved.requested,
        effective_model=resolved.effective,
        effort=effort,
        conversation=conversation,
        stream=stream,
        include_usage=False,
        max_tokens=max_output,
        user=user,
        tools=tools,
        output_schema=schema,
    )
    parallel = body.get("parallel_tool_calls")
    echo: dict[str, Any] = {
        "background": False,
        "instructions": instructions,
        "max_output_tokens": max_output,
        "max_tool_calls": None,
        "parallel_tool_calls": parallel if isinstance(parallel, bool) else True,
        "previous_response_id": None,
        "prompt_cache_key": body.get("prompt_cache_key"),
        "reasoning": {"effort": effort, "summary": summary},
        "safety_identifier": body.get("safety_identifier"),
        "service_tier": "default",
        "store": False,
        "temperature": 1.0 if temperature is None else temperature,
        "text": text_echo,
        "tool_choice": body.get("tool_choice") or "auto",
        "tools": _tool_echo(body.get("tools")),
        "top_logprobs": top_logprobs or 0,
        "top_p": 1.0 if top_p is None else top_p,
        "truncation": body.get("truncation") or "disabled",
        "user": user,
        "metadata": metadata,
    }
    return ResponsesRequest(request, echo)

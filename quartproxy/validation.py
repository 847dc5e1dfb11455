"""Request bodies to :class:`CompletionRequest`, or a 400 that names the offending field.

Validation is strict about the fields we honour (a wrong type is the client's bug and silently
coercing it — ``"stream": "false"`` streaming, say — hides it) and about the *types* of every
documented parameter, including the many that have no effect here (``temperature``, ``seed``,
``logit_bias``...): a request OpenAI would answer with a 400 gets a 400 here too, naming the
field, instead of a 200 that hides the client's bug until it meets the real API. The tables
:data:`CHAT_PARAMS` and :data:`LEGACY_PARAMS` hold those types and OpenAI's documented ranges.
Fields nobody documents are accepted and ignored (clients send many; the list keeps growing).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from . import errors
from .conversation import Conversation, Item, Role, ToolCallRef, ToolRequest
from .models import EFFORTS, ModelCatalog
from .tool_request import check_history, parse_tools
from .usage import estimate_tokens

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
NULL_CONTENT_ROLES = frozenset({"assistant", "tool"})
PART_MARKERS = {
    "image_url": "[image]",
    "image": "[image]",
    "input_image": "[image]",
    "input_audio": "[audio]",
    "audio": "[audio]",
    "file": "[file]",
    "input_file": "[file]",
}


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    kind: Literal["chat", "legacy", "responses"]
    model: str
    effective_model: str
    effort: str | None
    conversation: Conversation
    stream: bool
    include_usage: bool
    max_tokens: int | None
    user: str | None
    tools: ToolRequest | None = None
    output_schema: dict[str, Any] | None = None

    @property
    def legacy(self) -> bool:
        return self.kind == "legacy"

    @property
    def prompt(self) -> str:
        return self.conversation.flatten()

    @property
    def parallel_calls(self) -> bool:
        return self.tools.parallel if self.tools is not None else True

    @property
    def prompt_param(self) -> str:
        """The request field that carries the prompt, named by errors about its size."""
        return PROMPT_PARAMS[self.kind]


PROMPT_PARAMS = {"chat": "messages", "legacy": "prompt", "responses": "input"}


def _optional_bool(body: dict[str, Any], name: str, param: str | None = None) -> bool:
    value = body.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise errors.invalid(f"'{param or name}' must be a boolean.", param or name)
    return value


def _optional_int(body: dict[str, Any], name: str, minimum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise errors.invalid(f"'{name}' must be an integer >= {minimum}.", name)
    return value


def _optional_str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise errors.invalid(f"'{name}' must be a string.", name)
    return value


def _content_text(content: Any, index: int) -> str:
    param = f"messages[{index}].content"
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise errors.invalid("Message content must be a string, an array of parts, or null.", param)
    texts: list[str] = []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
            continue
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise errors.invalid("Each content part must be an object with a 'type'.", param)
        kind = part["type"]
        if kind in ("text", "input_text", "output_text"):
            text = part.get("text")
            if not isinstance(text, str):
                raise errors.invalid("A text part needs a string 'text'.", param)
            texts.append(text)
        elif kind == "refusal":
            refusal = part.get("refusal")
            texts.append(refusal if isinstance(refusal, str) else "")
        else:
            texts.append(PART_MARKERS.get(kind, f"[{kind}]"))
    return "\n".join(texts)


def _tool_calls(value: Any, index: int) -> tuple[ToolCallRef, ...]:
    param = f"messages[{index}].tool_calls"
    if value is None:
        return ()
    if not isinstance(value, list):
        raise errors.invalid("'tool_calls' must be an array.", param)
    calls: list[ToolCallRef] = []
    for position, call in enumerate(value):
        where = f"{param}[{position}]"
        if not isinstance(call, dict):
            raise errors.invalid("Each tool call must be an object.", where)
        call_id = call.get("id")
        function = call.get("function")
        if not isinstance(call_id, str) or not call_id:
            raise errors.invalid("A tool call needs a string 'id'.", f"{where}.id")
        if call.get("type", "function") != "function":
            raise errors.invalid("Only tool calls of type 'function' are supported.",
                                 f"{where}.type")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise errors.invalid("A tool call needs 'function.name'.", f"{where}.function")
        arguments = function.get("arguments", "")
        if not isinstance(arguments, str):
            raise errors.invalid("'function.arguments' must be a string.",
                                 f"{where}.function.arguments")
        calls.append(ToolCallRef(call_id, function["name"], arguments))
    return tuple(calls)


def parse_messages(messages: Any) -> Conversation:
    """The chat ``messages`` array as a :class:`Conversation`, or a 400 naming the field."""
    if not isinstance(messages, list) or not messages:
        raise errors.invalid("'messages' must be a non-empty array.", "messages")
    items: list[Item] = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise errors.invalid("Each message must be an object.", f"messages[{index}]")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise errors.invalid(
                f"Invalid role {role!r}; expected one of: {', '.join(sorted(ROLES))}.",
                f"messages[{index}].role",
            )
        content = message.get("content")
        if content is None:
            if role not in NULL_CONTENT_ROLES:
                raise errors.invalid(
                    f"A {role} message needs content.", f"messages[{index}].content"
                )
            text = ""
        else:
            text = _content_text(content, index)
        calls = _tool_calls(message.get("tool_calls"), index) if role == "assistant" else ()
        call_id: str | None = None
        if role == "tool":
            raw_id = message.get("tool_call_id")
            if raw_id is not None and not isinstance(raw_id, str):
                raise errors.invalid("'tool_call_id' must be a string.",
                                     f"messages[{index}].tool_call_id")
            call_id = raw_id
        items.append(Item(_role(role), text, calls, call_id))
    return Conversation(tuple(items))


def _role(value: str) -> Role:
    if value == "system":
        return "system"
    if value == "developer":
        return "developer"
    if value == "user":
        return "user"
    if value == "assistant":
        return "assistant"
    return "tool"


def flatten_messages(messages: Any) -> str:
    """The conversation as one text prompt (what the proto backend sends)."""
    return parse_messages(messages).flatten()


def _effort(body: dict[str, Any], alias_effort: str | None) -> str | None:
    effort: Any = None
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort") is not None:
        effort = reasoning["effort"]
    elif body.get("reasoning_effort") is not None:
        effort = body["reasoning_effort"]
    else:
        return alias_effort
    if not isinstance(effort, str) or effort.lower() not in EFFORTS:
        raise errors.invalid(
            f"Invalid reasoning effort {effort!r}; expected one of: {', '.join(EFFORTS)}.",
            "reasoning_effort",
        )
    return str(effort.lower())


def _common(
    body: dict[str, Any], catalog: ModelCatalog, conversation: Conversation, *,
    kind: Literal["chat", "legacy", "responses"], max_prompt: int, prompt_param: str,
) -> CompletionRequest:
    prompt = conversation.flatten()
    model_value = body.get("model")
    if model_value is not None and not isinstance(model_value, str):
        raise errors.invalid("'model' must be a string.", "model")
    resolved = catalog.resolve(model_value)
    stream = _optional_bool(body, "stream")
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise errors.invalid("'stream_options' must be an object.", "stream_options")
        include_usage = _optional_bool(
            options, "include_usage", "stream_options.include_usage"
        )
    n = _optional_int(body, "n", 1)
    if n is not None and n > 1:
        raise errors.invalid("Only n=1 is supported.", "n")
    max_tokens = _optional_int(body, "max_completion_tokens", 1)
    legacy_max = _optional_int(body, "max_tokens", 1)
    if max_tokens is None:
        max_tokens = legacy_max
    reasoning = body.get("reasoning")
    if reasoning is not None and not isinstance(reasoning, dict):
        raise errors.invalid("'reasoning' must be an object.", "reasoning")
    effort = _effort(body, resolved.alias_effort)
    user = _optional_str(body, "user")
    if max_prompt > 0 and estimate_tokens(len(prompt)) > max_prompt:
        raise errors.invalid(
            f"The prompt is about {estimate_tokens(len(prompt))} tokens, over this server's "
            f"limit of {max_prompt}.",
            prompt_param,
            code="context_length_exceeded",
        )
    return CompletionRequest(
        kind=kind,
        model=resolved.requested,
        effective_model=resolved.effective,
        effort=effort,
        conversation=conversation,
        stream=stream,
        include_usage=stream and include_usage,
        max_tokens=max_tokens,
        user=user,
    )


def parse_chat(body: Any, catalog: ModelCatalog, *, max_prompt_tokens: int) -> CompletionRequest:
    if not isinstance(body, dict):
        raise errors.invalid("The request body must be a JSON object.")
    check_params(body, CHAT_PARAMS)
    conversation = parse_messages(body.get("messages"))
    for legacy_field in ("functions", "function_call"):
        if body.get(legacy_field) is not None:
            raise errors.invalid(
                f"'{legacy_field}' is not supported; use 'tools' and 'tool_choice'.",
                legacy_field, code="unsupported_parameter",
            )
    tools = parse_tools(body.get("tools"), body.get("tool_choice"),
                        body.get("parallel_tool_calls"), flavor="chat")
    if conversation.has_tool_history:
        check_history(conversation)
    request = _common(
        body, catalog, conversation, kind="chat", max_prompt=max_prompt_tokens,
        prompt_param=PROMPT_PARAMS["chat"],
    )
    return replace(request, tools=tools) if tools is not None else request


def parse_legacy(body: Any, catalog: ModelCatalog, *, max_prompt_tokens: int) -> CompletionRequest:
    if not isinstance(body, dict):
        raise errors.invalid("The request body must be a JSON object.")
    check_params(body, LEGACY_PARAMS)
    raw = body.get("prompt")
    if isinstance(raw, str):
        text = raw
    elif isinstance(raw, list) and raw and all(isinstance(item, str) for item in raw):
        text = "\n".join(raw)
    else:
        raise errors.invalid("'prompt' must be a non-empty string or array of strings.", "prompt")
    if not text.strip():
        raise errors.invalid("'prompt' must not be empty.", "prompt")
    return _common(
        body, catalog, Conversation((Item("user", text),)), kind="legacy",
        max_prompt=max_prompt_tokens, prompt_param=PROMPT_PARAMS["legacy"],
    )


# ------------------------------------------------------------------------------ parameter types
#
# One check per documented parameter: ``check(value, param)`` raises a 400 that names ``param``
# (or an element of it). ``null`` is always accepted — OpenAI reads it as "the default". The
# checks look at types and shapes only; what a field means (tools, response_format) is the
# business of the code that uses it.

ParamCheck = Callable[[Any, str], None]
_TOKEN_ID_RE = re.compile(r"[0-9]{1,10}")


def _bad(param: str, expected: str) -> errors.ApiError:
    return errors.invalid(f"'{param}' must be {expected}.", param)


def is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _range_text(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f" between {low:g} and {high:g}"
    if low is not None:
        return f" >= {low:g}"
    if high is not None:
        return f" <= {high:g}"
    return ""


def number(low: float | None = None, high: float | None = None) -> ParamCheck:
    def check(value: Any, param: str) -> None:
        if not is_number(value) or (low is not None and value < low) or (
            high is not None and value > high
        ):
            raise _bad(param, "a number" + _range_text(low, high))

    return check


def integer(low: int | None = None, high: int | None = None) -> ParamCheck:
    def check(value: Any, param: str) -> None:
        if not is_integer(value) or (low is not None and value < low) or (
            high is not None and value > high
        ):
            raise _bad(param, "an integer" + _range_text(low, high))

    return check


def boolean(value: Any, param: str) -> None:
    if not isinstance(value, bool):
        raise _bad(param, "a boolean")


def string(value: Any, param: str) -> None:
    if not isinstance(value, str):
        raise _bad(param, "a string")


def one_of(*choices: str) -> ParamCheck:
    def check(value: Any, param: str) -> None:
        if value not in choices:
            raise _bad(param, "one of " + ", ".join(repr(choice) for choice in choices))

    return check


def obj(value: Any, param: str) -> None:
    if not isinstance(value, dict):
        raise _bad(param, "an object")


def string_or_object(value: Any, param: str) -> None:
    if not isinstance(value, str | dict):
        raise _bad(param, "a string or an object")


def array_of(item: ParamCheck, what: str, *, max_items: int | None = None) -> ParamCheck:
    """An array whose elements pass ``item``; an element's error names ``param[index]``."""
    limit = f" of at most {max_items}" if max_items is not None else ""

    def check(value: Any, param: str) -> None:
        if not isinstance(value, list) or (max_items is not None and len(value) > max_items):
            raise _bad(param, f"an array{limit} {what}")
        for index, element in enumerate(value):
            item(element, f"{param}[{index}]")

    return check


def fields(**checks: ParamCheck) -> ParamCheck:
    """An object whose listed members (when present and not null) pass their checks; a member's
    error names ``param.member``. Other members are accepted."""

    def check(value: Any, param: str) -> None:
        obj(value, param)
        for name, member in checks.items():
            if value.get(name) is not None:
                member(value[name], f"{param}.{name}")

    return check


def stop_sequences(value: Any, param: str) -> None:
    if isinstance(value, str):
        return
    array_of(string, "strings", max_items=4)(value, param)


def logit_bias(value: Any, param: str) -> None:
    """Token ids (as JSON object keys) to a bias from -100 to 100."""
    obj(value, param)
    for key, bias in value.items():
        if not _TOKEN_ID_RE.fullmatch(key):
            raise errors.invalid(f"'{param}' keys must be token ids; got {key!r}.", param)
        if not is_number(bias) or not -100 <= bias <= 100:
            raise _bad(f"{param}.{key}", "a number between -100 and 100")


def metadata(value: Any, param: str) -> None:
    """Up to 16 string pairs; keys up to 64 characters, values up to 512."""
    if not isinstance(value, dict) or len(value) > 16:
        raise _bad(param, "an object of at most 16 string pairs")
    for key, item in value.items():
        if len(key) > 64:
            raise errors.invalid(f"'{param}' keys must be at most 64 characters.", param)
        if not isinstance(item, str) or len(item) > 512:
            raise _bad(f"{param}.{key}", "a string of at most 512 characters")


def response_format(value: Any, param: str) -> None:
    obj(value, param)
    kind = value.get("type")
    one_of("text", "json_object", "json_schema")(kind, f"{param}.type")
    if kind == "json_schema":
        fields(name=string, description=string, schema=obj, strict=boolean)(
            value.get("json_schema"), f"{param}.json_schema")


# Shared by chat and legacy completions.
_SAMPLING: dict[str, ParamCheck] = {
    "model": string,
    "stream": boolean,
    "stream_options": fields(include_usage=boolean, include_obfuscation=boolean),
    "temperature": number(0, 2),
    "top_p": number(0, 1),
    "n": integer(1, 128),
    "presence_penalty": number(-2, 2),
    "frequency_penalty": number(-2, 2),
    "seed": integer(),
    "stop": stop_sequences,
    "logit_bias": logit_bias,
    "max_tokens": integer(1),
    "user": string,
}

CHAT_PARAMS: Mapping[str, ParamCheck] = {
    **_SAMPLING,
    "messages": array_of(obj, "objects"),
    "max_completion_tokens": integer(1),
    "logprobs": boolean,
    "top_logprobs": integer(0, 20),
    "response_format": response_format,
    "tools": array_of(obj, "objects"),
    "tool_choice": string_or_object,
    "parallel_tool_calls": boolean,
    "functions": array_of(obj, "objects"),
    "function_call": string_or_object,
    "metadata": metadata,
    "store": boolean,
    "service_tier": string,
    "modalities": array_of(one_of("text", "audio"), "of 'text' and 'audio'"),
    "audio": obj,
    "prediction": fields(type=string),
    "web_search_options": obj,
    "reasoning_effort": string,
    "reasoning": obj,
    "prompt_cache_key": string,
    "prompt_cache_retention": string,
    "prompt_cache_options": obj,
    "safety_identifier": string,
    "verbosity": string,
    "moderation": obj,
}

LEGACY_PARAMS: Mapping[str, ParamCheck] = {
    **_SAMPLING,
    "echo": boolean,
    "suffix": string,
    "best_of": integer(0, 20),
    "logprobs": integer(0, 5),
}


def check_params(body: Mapping[str, Any], table: Mapping[str, ParamCheck]) -> None:
    """400 for the first documented parameter whose value has the wrong type or range."""
    for name, check in table.items():
        value = body.get(name)
        if value is not None:
            check(value, name)
